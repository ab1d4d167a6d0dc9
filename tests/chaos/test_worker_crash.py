"""A worker killed with -9 in the middle of 50 runs: a new worker finishes them, and no recorded step runs again."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from actors.events import Event, StepCompleted, StepScheduled
from streams.client import Client
from streams.loop import CLOSE_TIMEOUT_S
from streams.settings import Settings
from tests.support import WorkerProcess, completions, eventually, histories

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

RUNS = 50


def _recorded_keys(events: list[Event]) -> set[str]:
    """Idempotency keys of the steps whose results this history recorded."""
    names = {e.body.seq: (e.body.name, e.body.occurrence) for e in events if isinstance(e.body, StepScheduled)}
    out = set()
    for event in events:
        if isinstance(event.body, StepCompleted):
            name, occurrence = names[event.body.seq]
            out.add(f"{event.tenant}/{event.workflow_id}/{name}/{occurrence}")
    return out


async def test_killed_worker_loses_no_run_and_repeats_no_recorded_step(settings: Settings, tmp_path: Path) -> None:
    journal = tmp_path / "steps.log"
    journal.touch()
    env = {
        "STEADY_TEST_JOURNAL": str(journal),
        "STEADY_TEST_STEP_SLEEP": "0.1",
        "STEADY_SESSION_TIMEOUT_MS": "6000",
        "STEADY_STEP_CONCURRENCY": "4",
    }
    first = WorkerProcess(settings, "tests.workflows:app", tmp_path / "worker1.log", env)
    second = WorkerProcess(settings, "tests.workflows:app", tmp_path / "worker2.log", env)
    try:
        first.start()
        await eventually(lambda: b"assigned partitions" in first.log.read_bytes(), timeout=90)
        async with Client(settings.bootstrap, prefix=settings.prefix) as client:
            handles = await asyncio.gather(*(client.start("journaled", i, id=f"crash-{i}") for i in range(RUNS)))

            async def mid_way() -> bool:
                runs = await histories(settings.bootstrap, settings.prefix)
                return sum(isinstance(e.body, StepCompleted) for events in runs.values() for e in events) >= 60

            await eventually(mid_way, timeout=120, interval=0.2)
            first.kill()
            recorded_before_kill = set().union(
                *(_recorded_keys(events) for events in (await histories(settings.bootstrap, settings.prefix)).values())
            )
            assert 60 <= len(recorded_before_kill) < RUNS * 4, "the kill should land mid-way"

            second.start()
            results = await asyncio.gather(*(h.result(timeout=180) for h in handles))

        assert [[f"{i}-1", f"{i}-2", f"{i}-3", f"{i}-4"] for i in range(RUNS)] == results
        executed = Counter(line.split()[0] for line in journal.read_text().splitlines())
        print(
            f"recorded before kill: {len(recorded_before_kill)}; executions: {sum(executed.values())} "
            f"of {RUNS * 4} steps; executed twice: {sum(n > 1 for n in executed.values())}"
        )
        every_step = {f"default/crash-{i}/{name}/1" for i in range(RUNS) for name in ("one", "two", "three", "four")}
        assert every_step == set(executed)
        assert dict.fromkeys(recorded_before_kill, 1) == {k: executed[k] for k in recorded_before_kill}
        done = Counter(c.workflow_id for c in await completions(settings.bootstrap, settings.prefix))
        assert {f"crash-{i}": 1 for i in range(RUNS)} == dict(done)
        for key, events in (await histories(settings.bootstrap, settings.prefix)).items():
            completed = Counter(e.body.seq for e in events if isinstance(e.body, StepCompleted))
            assert {0: 1, 1: 1, 2: 1, 3: 1} == dict(completed), key
    finally:
        first.stop()
        second.stop()


async def test_a_run_asleep_when_its_worker_dies_wakes_under_a_new_worker(settings: Settings, tmp_path: Path) -> None:
    env = {"STEADY_SESSION_TIMEOUT_MS": "6000"}
    first = WorkerProcess(settings, "tests.workflows:app", tmp_path / "worker1.log", env)
    second = WorkerProcess(settings, "tests.workflows:app", tmp_path / "worker2.log", env)
    try:
        first.start()
        await eventually(lambda: b"assigned partitions" in first.log.read_bytes(), timeout=90)
        async with Client(settings.bootstrap, prefix=settings.prefix) as client:
            handles = await asyncio.gather(*(client.start("sleeper", 6.0, id=f"nap-{i}") for i in range(5)))

            async def all_asleep() -> bool:
                states = await asyncio.gather(*(h.status() for h in handles))
                return all(s is not None and s.timers for s in states)

            await eventually(all_asleep, timeout=60)
            first.kill()
            second.start()
            results = await asyncio.gather(*(h.result(timeout=120) for h in handles))

        assert all(r["slept_ms"] >= 6_000 for r in results), results
        done = Counter(c.workflow_id for c in await completions(settings.bootstrap, settings.prefix))
        assert {f"nap-{i}": 1 for i in range(5)} == dict(done)
    finally:
        first.stop()
        second.stop()


async def test_a_worker_stopped_while_a_step_blocks_its_thread_still_exits(settings: Settings, tmp_path: Path) -> None:
    """A sync step that does not return holds a thread, which nothing can stop: the process ends all the same."""
    journal = tmp_path / "steps.log"
    journal.touch()
    grace_ms = 1_000
    env = {"STEADY_TEST_JOURNAL": str(journal), "STEADY_SHUTDOWN_GRACE_MS": str(grace_ms)}
    stuck = WorkerProcess(
        settings, "tests.workflows:app", tmp_path / "worker1.log", {**env, "STEADY_TEST_STEP_SLEEP": "3600"}
    )
    second = WorkerProcess(settings, "tests.workflows:app", tmp_path / "worker2.log", env)
    try:
        stuck.start()
        await eventually(lambda: b"assigned partitions" in stuck.log.read_bytes(), timeout=90)
        async with Client(settings.bootstrap, prefix=settings.prefix) as client:
            handle = await client.start("journaled", 7, id="stuck-7")
            await eventually(lambda: journal.read_text().count("\n") >= 1, timeout=60)  # the step sleeps in its thread
            assert stuck.proc is not None
            began = time.monotonic()
            stuck.proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(stuck.proc.wait, 60)
            took = time.monotonic() - began
            assert took < grace_ms / 1000 + 3 * CLOSE_TIMEOUT_S + 5, f"exited {took:.1f}s after SIGTERM"
            assert code == 1, stuck.log.read_text()[-2000:]
            assert b"exiting now" in stuck.log.read_bytes()

            second.start()  # the unfinished step was not recorded: it runs again, and the run completes
            assert await handle.result(timeout=120) == ["7-1", "7-2", "7-3", "7-4"]
    finally:
        stuck.stop()
        second.stop()
