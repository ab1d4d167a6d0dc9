"""A commit that fails after the broker committed (the local store write fails) loses nothing and runs nothing twice.

The worker cannot tell such a failure from a transaction the broker refused: it rolls back what it holds and
resynchronises from the changelog, which has the transaction. Steps whose outcomes that transaction recorded must
not run again; steps still in flight may (under the same idempotency key, as at a crash).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import pytest

from actors.events import StepCompleted, StepScheduled
from streams.check import check
from streams.client import Client
from streams.records import EVENT
from streams.settings import Settings
from streams.topics import read_topic
from streams.worker import Worker
from tests.workflows import journaled

pytestmark = pytest.mark.integration

LATE_MS = 100
"""An execution beginning this long after its step's outcome was written to the history ran a finished step again.

A dropped attempt whose report is still in the inbox may be started again when its task is read before the report:
the decision is taken before the outcome is recorded, and its thread may begin a few milliseconds after. A step run
again because of a failed commit begins after the resynchronisation, at least a retry pause (250 ms) later."""


async def _recorded_ms(settings: Settings) -> dict[str, int]:
    """When each step's outcome was first written: idempotency key -> history record timestamp (ms)."""
    names: dict[tuple[str, int], str] = {}
    recorded: dict[str, int] = {}
    for record in await read_topic(settings.bootstrap, f"{settings.prefix}history"):
        event = EVENT.decode(record.value)
        body = event.body
        if isinstance(body, StepScheduled):
            names[(event.key, body.seq)] = f"{event.key}/{body.name}/{body.occurrence}"
        elif isinstance(body, StepCompleted):
            key = names[(event.key, body.seq)]
            recorded[key] = min(recorded.get(key, record.timestamp), record.timestamp)
    return recorded


async def test_a_commit_failing_after_the_broker_committed_runs_no_finished_step_again(
    worker: Worker, client: Client, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = tmp_path / "steps.log"
    journal.touch()
    monkeypatch.setenv("STEADY_TEST_JOURNAL", str(journal))
    monkeypatch.setenv("STEADY_TEST_STEP_SLEEP", "0.005")
    write = worker._store.write
    failures: list[tuple[int, int]] = []  # (transactions committed, wall clock ms) at each injected failure

    def failing_write(partition: int, states: Iterable[tuple[str, bytes | None]], next_offset: int) -> None:
        # The write after every other commit fails, three times in all (restores write too: they are left alone).
        committed = worker._committing is not None and worker._committing.committed
        if committed and len(failures) < 3 and worker.transactions >= (failures[-1][0] + 2 if failures else 2):
            failures.append((worker.transactions, int(time.time() * 1000)))
            raise OSError("the local store could not be written (injected)")
        write(partition, states, next_offset)

    monkeypatch.setattr(worker._store, "write", failing_write)
    handles = [await client.start(journaled, i, id=f"commit-fail-{i}") for i in range(30)]
    results = await asyncio.gather(*(h.result(timeout=90) for h in handles))

    assert len(failures) == 3  # three commits the broker took, each followed by a failure
    assert results == [[f"{i}-1", f"{i}-2", f"{i}-3", f"{i}-4"] for i in range(30)]
    executed = Counter(line.split()[0] for line in journal.read_text().splitlines())
    recorded = await _recorded_ms(settings)
    every_step = {f"default/commit-fail-{i}/{name}/1" for i in range(30) for name in ("one", "two", "three", "four")}
    assert set(recorded) == every_step == set(executed)
    # Attempts dropped with the work applied since the last commit, before their outcome was recorded, may run
    # twice; a step whose outcome was recorded must not run again.
    again = [
        line for line in journal.read_text().splitlines() if int(line.split()[2]) > recorded[line.split()[0]] + LATE_MS
    ]
    assert again == []
    assert any(ms <= failures[0][1] for ms in recorded.values()), "the first failure should land while steps run"
    report = await check(settings)
    assert report.ok, report.findings
