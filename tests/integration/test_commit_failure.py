"""A commit that fails after the broker took it runs no finished step again and loses nothing.

The worker rolls back what it holds and resynchronises from the changelog, which has the transaction; it does not
abort a transaction that committed, and keeps its producer. Steps whose outcomes that transaction recorded must not
run again; attempts dropped with the work applied since (their outcomes recorded nowhere yet) may, under the same
idempotency key, as at a crash. The failure injected here is an ``OSError`` from the local store's write, which the
worker retries (an error of RocksDB itself stops the worker, and the partitions' next owner restores them).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from streams import batches
from streams.batches import Placed, Record
from streams.check import check
from streams.client import Client
from streams.pending import Pending
from streams.records import StepTask
from streams.settings import Settings
from streams.worker import Worker
from tests.support import running_worker, steps_recorded_ms
from tests.workflows import Greeting, app, chain, journaled

pytestmark = pytest.mark.integration

RUNS = 30


async def test_a_commit_failing_after_the_broker_took_it_runs_no_finished_step_again(
    worker: Worker, client: Client, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = tmp_path / "steps.log"
    journal.touch()
    monkeypatch.setenv("STEADY_TEST_JOURNAL", str(journal))
    monkeypatch.setenv("STEADY_TEST_STEP_SLEEP", "0.005")
    producer = worker._producer
    assert producer is not None

    # When each commit the broker took ended, and when the executor decided to run each attempt (wall clock, ms).
    committed_ms: list[float] = []
    decided: list[tuple[str, float]] = []
    commit = worker._commit

    async def noted_commit(pending: Pending) -> None:
        try:
            await commit(pending)
        finally:
            if pending.committed:
                committed_ms.append(time.time() * 1000)

    assert worker._executor is not None
    is_current = worker._executor._is_current

    def noted_decision(task: StepTask) -> bool:
        current = is_current(task)
        if current:
            decided.append((task.idempotency_key, time.time() * 1000))
        return current

    monkeypatch.setattr(worker, "_commit", noted_commit)
    monkeypatch.setattr(worker._executor, "_is_current", noted_decision)

    write = worker._store.write
    failures: list[tuple[int, bool]] = []  # transactions committed, whether the failing one held early outcomes

    def failing_write(partition: int, states: Iterable[tuple[str, bytes | None]], next_offset: int) -> None:
        # The write after every other commit fails, three times in all (restores write too: they are left alone).
        pending = worker._committing
        due = len(failures) < 3 and worker.transactions >= (failures[-1][0] + 2 if failures else 2)
        if due and pending is not None and pending.committed:
            failures.append((worker.transactions, bool(pending.early)))
            raise OSError("the local store could not be written (injected)")
        write(partition, states, next_offset)

    monkeypatch.setattr(worker._store, "write", failing_write)
    handles = [await client.start(journaled, i, id=f"commit-fail-{i}") for i in range(RUNS)]
    results = await asyncio.gather(*(h.result(timeout=90) for h in handles))

    assert len(failures) == 3
    assert any(early for _, early in failures), "a failing commit should hold step outcomes taken early"
    assert worker._producer is producer  # nothing was open to abort
    assert results == [[f"{i}-1", f"{i}-2", f"{i}-3", f"{i}-4"] for i in range(RUNS)]
    recorded = await steps_recorded_ms(settings)
    every_step = {f"default/commit-fail-{i}/{name}/1" for i in range(RUNS) for name in ("one", "two", "three", "four")}
    executed = Counter(line.split()[0] for line in journal.read_text().splitlines())
    assert set(recorded) == every_step == set(executed)
    # A decision to run an attempt, taken once a commit holding the step's outcome had ended, ran it again. (The
    # outcome's history record is written before its commit ends, and commits end one after the other.)
    again = [(key, at) for key, at in decided if any(recorded[key] <= end <= at for end in committed_ms)]
    assert again == []
    assert sum(executed.values()) == len(decided)  # every execution was decided here, so none went unchecked
    report = await check(settings)
    assert report.ok, report.findings


async def test_a_commit_that_never_ends_is_rolled_back_after_the_transaction_timeout(
    settings: Settings, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A commit whose records are retried without end (the broker never takes them) would hold every later input.
    hung = 0
    write = batches.write

    async def never_the_first_time(producer: AIOKafkaProducer, records: list[Record]) -> list[Placed]:
        nonlocal hung
        if hung == 0:
            hung += 1
            await asyncio.Event().wait()
        return await write(producer, records)

    monkeypatch.setattr(batches, "write", never_the_first_time)
    quick = settings.model_copy(update={"transaction_timeout_ms": 2_000})
    async with running_worker(app, quick) as worker:
        handle = await client.start(chain, Greeting(name="late"), id="after-a-hung-commit")
        assert "completed" == (await handle.completion(timeout=60)).status
        assert 1 == hung
        assert worker.transactions >= 1
