"""Chaos: workers killed at random, the broker stopped and killed, workers added and removed, mid-load.

The short variant runs in the normal suite; ``make chaos`` runs it with ``STEADY_CHAOS_RUNS=1000``.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from datetime import datetime
from pathlib import Path

import pytest

from streams.broker import BrokerConfig, LocalBroker
from streams.client import Client
from streams.loop import CLOSE_TIMEOUT_S
from streams.settings import Settings
from tests.chaos.harness import Chaos, assert_guarantees
from tests.support import eventually

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

GRACE_MS = 3_000


async def test_workers_killed_at_random_keep_every_guarantee(settings: Settings, tmp_path: Path) -> None:
    chaos = Chaos(settings, tmp_path, ["w1", "w2"])
    chaos.start_workers()
    try:
        await eventually(lambda: all(b"assigned partitions" in w.log.read_bytes() for w in chaos.workers.values()))
        async with Client(settings.bootstrap, prefix=settings.prefix) as client:
            await chaos.start_runs(client)
            killer = asyncio.create_task(chaos.kill_randomly((2.0, 4.0)))
            try:
                await chaos.wait_until_done()
            finally:
                killer.cancel()
                await asyncio.gather(killer, return_exceptions=True)
        figures = await chaos.verify()
    finally:
        chaos.stop_workers()

    assert figures.kills >= 1
    assert_guarantees(figures)


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
async def test_a_broker_stopped_mid_load_and_restarted_on_its_data_loses_nothing(
    how: str, settings: Settings, tmp_path: Path
) -> None:
    broker = LocalBroker(BrokerConfig(home=tmp_path / "broker"))
    broker.start(embedded=True)
    own = settings.model_copy(update={"bootstrap": broker.bootstrap})
    chaos = Chaos(own, tmp_path, ["w1", "w2"])
    try:
        chaos.start_workers()
        await eventually(lambda: all(b"assigned partitions" in w.log.read_bytes() for w in chaos.workers.values()))
        async with Client(own.bootstrap, prefix=own.prefix) as client:
            await chaos.start_runs(client)
            await eventually(lambda: chaos.journal.read_text().count("\n") >= chaos.runs, timeout=120)
        if how == "sigterm":
            broker.stop()
        else:
            broker.kill()
        await asyncio.sleep(3.0)
        broker.start(embedded=True)  # same data, same port: the workers reconnect on their own
        chaos.figures.restarts = 1
        await chaos.wait_until_done()
        figures = await chaos.verify()
    finally:
        chaos.stop_workers()
        broker.stop()

    assert_guarantees(figures)


async def test_a_worker_stopped_while_its_broker_is_down_exits_within_its_grace_and_loses_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    broker = LocalBroker(BrokerConfig(home=tmp_path / "broker"))
    broker.start(embedded=True)
    own = settings.model_copy(update={"bootstrap": broker.bootstrap})
    chaos = Chaos(own, tmp_path, [])
    chaos.env["STEADY_SHUTDOWN_GRACE_MS"] = str(GRACE_MS)
    try:
        worker = chaos.add_worker("w1")
        await eventually(lambda: b"assigned partitions" in worker.log.read_bytes())
        async with Client(own.bootstrap, prefix=own.prefix) as client:
            await chaos.start_runs(client)
            await eventually(lambda: chaos.journal.read_text().count("\n") >= chaos.runs // 2, timeout=120)
        broker.kill()
        await asyncio.sleep(1.0)  # the worker notices: commits fail, reads and resyncs wait on the broker
        assert worker.proc is not None
        began = time.monotonic()
        worker.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(worker.proc.wait, 60)
        took = time.monotonic() - began
        # the grace, then CLOSE_TIMEOUT_S at most for its tasks, its steps and its clients each
        assert took < GRACE_MS / 1000 + 3 * CLOSE_TIMEOUT_S + 2, f"stopped after {took:.1f}s"
        assert code == 0, worker.log.read_text()[-3000:]

        broker.start(embedded=True)
        chaos.figures.restarts = 1
        worker.start()  # the same worker id again: its open transaction is fenced, its inputs read again
        await chaos.wait_until_done()
        figures = await chaos.verify()
    finally:
        chaos.stop_workers()
        broker.stop()

    figures.notes["stop_seconds"] = round(took, 1)
    assert_guarantees(figures)


_LINE = re.compile(r"^(\S+ \S+) INFO streams\.worker: (revoked|assigned partitions) (.*)$")


def _unowned_seconds(logs: list[Path]) -> float:
    """The longest time between a worker giving up inbox partitions and another taking them."""
    revokes: list[datetime] = []
    assigns: list[datetime] = []
    for log in logs:
        for line in log.read_text(errors="replace").splitlines():
            match = _LINE.match(line)
            if (match and "inbox" in match.group(3)) or (match and match.group(2) == "assigned partitions"):
                stamp = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
                (revokes if match.group(2) == "revoked" else assigns).append(stamp)
    gaps = [min((a - r).total_seconds() for a in assigns if a >= r) for r in revokes if any(a >= r for a in assigns)]
    return max(gaps, default=0.0)


async def test_adding_and_removing_workers_mid_load_keeps_every_guarantee(settings: Settings, tmp_path: Path) -> None:
    chaos = Chaos(settings, tmp_path, ["w1", "w2"])
    chaos.start_workers()
    try:
        await eventually(lambda: all(b"assigned partitions" in w.log.read_bytes() for w in chaos.workers.values()))
        async with Client(settings.bootstrap, prefix=settings.prefix) as client:
            await chaos.start_runs(client)
            await asyncio.sleep(2.0)
            third = chaos.add_worker("w3")
            await eventually(lambda: b"assigned partitions" in third.log.read_bytes(), timeout=60)
            await asyncio.sleep(2.0)
            chaos.workers["w1"].stop()  # leaves the group cleanly
            await chaos.wait_until_done()
        figures = await chaos.verify()
    finally:
        chaos.stop_workers()

    figures.notes["longest_unowned_s"] = _unowned_seconds([w.log for w in chaos.workers.values()])
    assert_guarantees(figures)
