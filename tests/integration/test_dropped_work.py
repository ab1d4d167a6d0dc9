"""Work applied and then dropped before its commit (a revoke, a failed transaction) is read again, not lost."""

from __future__ import annotations

import asyncio

import pytest

from actors.commands import Command
from streams.check import check
from streams.client import Client
from streams.pending import EarlyInput
from streams.settings import Settings
from streams.worker import Worker
from tests.workflows import Greeting, chain, napper

pytestmark = pytest.mark.integration


async def test_work_dropped_before_its_commit_is_read_again(worker: Worker, client: Client, settings: Settings) -> None:
    handles = [await client.start(chain, Greeting(name=f"d{i}"), id=f"drop-{i}") for i in range(40)]
    for _ in range(30):
        # What a revoke or a failed commit does: everything applied since the last commit is dropped, including
        # step outcomes applied as they were written.
        await asyncio.sleep(0.02)
        async with worker._lock:
            worker._drop_open()

    try:
        results = await asyncio.gather(*(h.result(timeout=60) for h in handles))
    except TimeoutError:
        raise AssertionError(await _stalled(worker, client, 40)) from None

    assert [r["text"] for r in results] == [f"HELLO D{i}" for i in range(40)]
    report = await check(settings)
    assert report.ok, report.findings


async def test_timer_firings_dropped_before_their_commit_are_read_again(
    worker: Worker, client: Client, settings: Settings
) -> None:
    # The worker applies a firing as it is sent, before it is in the inbox: dropped, it is read there like any input.
    take = worker.timers._take
    assert take is not None
    taken: list[EarlyInput] = []

    def recorded(command: Command) -> EarlyInput | None:
        early = take(command)
        if early is not None:
            taken.append(early)
        return early

    worker.timers._take = recorded
    handles = [await client.start(napper, 0.1 + 0.05 * (i % 10), id=f"drop-nap-{i}") for i in range(40)]
    for _ in range(40):
        await asyncio.sleep(0.02)
        async with worker._lock:
            worker._drop_open()

    results = await asyncio.gather(*(h.result(timeout=60) for h in handles))

    assert results == ["AWAKE"] * 40
    assert any(early.dropped for early in taken)  # firings taken before they were written, and dropped
    report = await check(settings)
    assert report.ok, report.findings


async def _stalled(worker: Worker, client: Client, runs: int) -> str:
    """Where the worker stands and what the unfinished runs hold: a stalled run says why."""
    assert worker._consumer is not None
    assert worker._executor is not None
    lines = [
        f"restored {sorted(worker._restored)}, out of sync {worker._out_of_sync}, transactions {worker.transactions}",
        f"open: {worker._open.inputs} inputs, {len(worker._open.states)} states, {len(worker._open.early)} early, "
        f"{len(worker._open.deferred)} deferred; committing: {worker._committing is not None}",
        f"consumed {worker._consumed}, rewind {worker._rewind}, offered {worker._offered}",
        f"early inputs {worker._early!r}, paused {worker._consumer.paused()}",
        f"steps in flight {worker._executor.in_flight}",
    ]
    for n in range(runs):
        state = await client.status(f"drop-{n}")
        if state is None or state.status.value != "completed":
            lines.append(f"drop-{n}: {'no state' if state is None else (state.status.value, len(state.journal))}")
    return "\n".join(lines)
