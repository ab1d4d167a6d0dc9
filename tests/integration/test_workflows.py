"""Workflows end to end on a real broker: results, history, concurrency, idempotent starts, failures."""

from __future__ import annotations

import asyncio

import pytest

from actors.commands import CompleteStep
from actors.errors import RunFailed
from actors.events import (
    Event,
    StepAttemptFailed,
    StepCompleted,
    StepResultDropped,
    StepScheduled,
    ValueRecorded,
    WorkflowCompleted,
    WorkflowStarted,
)
from actors.model import RunStatus
from streams import txn_v2
from streams.client import Client
from streams.records import COMMAND
from streams.settings import Settings
from streams.topics import read_topic
from streams.worker import Worker
from tests.support import completions, eventually, histories, running_worker
from tests.workflows import Greeting, app, chain, failures

pytestmark = pytest.mark.integration


async def test_three_step_workflow_returns_result_and_full_history(
    worker: Worker, client: Client, settings: Settings
) -> None:
    handle = await client.start(chain, Greeting(name="ada", times=2), id="greet-1")

    result = await handle.result(timeout=60)

    assert {"text": "HELLO ADA HELLO ADA", "chars": 19} == result
    [done] = [c for c in await completions(settings.bootstrap, settings.prefix) if c.workflow_id == "greet-1"]
    assert "completed" == done.status
    events = (await histories(settings.bootstrap, settings.prefix))["default/greet-1"]
    kinds = [type(e.body).__name__ for e in events]
    assert [
        "WorkflowStarted",
        "StepScheduled",
        "StepCompleted",
        "StepScheduled",
        "StepCompleted",
        "StepScheduled",
        "StepCompleted",
        "WorkflowCompleted",
    ] == kinds
    assert list(range(len(events))) == [e.seq for e in events]
    assert ["shout", "repeat", "count"] == [e.body.name for e in events if isinstance(e.body, StepCompleted)]
    assert isinstance(events[0].body, WorkflowStarted)
    assert "1" == events[0].body.version


async def test_two_hundred_concurrent_runs_all_complete(worker: Worker, client: Client) -> None:
    handles = await asyncio.gather(*(client.start(chain, Greeting(name=f"n{i}"), id=f"many-{i}") for i in range(200)))

    results = await asyncio.gather(*(h.result(timeout=120) for h in handles))

    assert [f"HELLO N{i}" for i in range(200)] == [r["text"] for r in results]


async def test_a_worker_commits_with_the_first_transaction_protocol_where_the_cluster_lacks_the_second(
    settings: Settings, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def lacks_it(producer: object) -> bool:
        return False

    monkeypatch.setattr(txn_v2, "supported", lacks_it)
    async with running_worker(app, settings) as worker:
        handles = await asyncio.gather(*(client.start(chain, Greeting(name=f"v{i}"), id=f"v1-{i}") for i in range(50)))
        results = await asyncio.gather(*(h.result(timeout=120) for h in handles))

    assert 1 == worker.transaction_protocol
    assert [f"HELLO V{i}" for i in range(50)] == [r["text"] for r in results]


async def test_the_test_broker_gives_workers_the_second_transaction_protocol(worker: Worker) -> None:
    assert 2 == worker.transaction_protocol


async def test_starting_the_same_id_twice_makes_one_run(worker: Worker, client: Client, settings: Settings) -> None:
    first = await client.start(chain, Greeting(name="once"), id="same")
    second = await client.start(chain, Greeting(name="twice"), id="same")

    assert await first.result(timeout=60) == await second.result(timeout=60)
    assert "HELLO ONCE" == (await second.result(timeout=5))["text"]
    runs = await histories(settings.bootstrap, settings.prefix)
    assert 1 == sum(isinstance(e.body, WorkflowStarted) for e in runs["default/same"])
    assert 1 == sum(c.workflow_id == "same" for c in await completions(settings.bootstrap, settings.prefix))


async def test_status_reports_a_completed_run(worker: Worker, client: Client) -> None:
    handle = await client.start(chain, Greeting(name="st"), id="status-1")
    await handle.result(timeout=60)

    state = await handle.status()

    assert state is not None
    assert RunStatus.COMPLETED == state.status
    assert 3 == len(state.journal)


async def test_failing_step_is_retried_until_it_succeeds(worker: Worker, client: Client) -> None:
    handle = await client.start(failures, "retry", id="retry-1")

    assert "ok after 3" == await handle.result(timeout=60)
    events = await handle.history()
    failed = [e.body for e in events if isinstance(e.body, StepAttemptFailed)]
    assert [(1, False), (2, False)] == [(f.attempt, f.final) for f in failed]
    assert [1, 2, 3] == [e.body.attempt for e in events if isinstance(e.body, StepScheduled)]


async def test_terminal_error_is_not_retried_and_the_workflow_compensates(worker: Worker, client: Client) -> None:
    handle = await client.start(failures, "compensate", id="comp-1")

    assert "refunded 100 because step 'charge' failed after 1 attempt(s): TerminalError: card declined for 100" == (
        await handle.result(timeout=60)
    )
    events = await handle.history()
    assert [1] == [e.body.attempt for e in events if isinstance(e.body, StepAttemptFailed)]


async def test_run_fails_when_attempts_run_out(worker: Worker, client: Client) -> None:
    handle = await client.start(failures, "exhaust", id="exhaust-1")

    with pytest.raises(RunFailed) as failed:
        await handle.result(timeout=60)

    assert "ConnectionError" == failed.value.error.type
    assert "after 4 attempt(s)" in failed.value.error.message


async def test_uncaught_workflow_exception_fails_the_run_with_its_error(worker: Worker, client: Client) -> None:
    handle = await client.start(failures, "uncaught", id="uncaught-1")

    with pytest.raises(RunFailed) as failed:
        await handle.result(timeout=60)

    assert "ValueError" == failed.value.error.type
    assert "the workflow itself failed" == failed.value.error.message
    state = await handle.status()
    assert state is not None
    assert RunStatus.FAILED == state.status
    assert not any(isinstance(e.body, ValueRecorded | WorkflowCompleted) for e in await handle.history())


async def test_outcomes_applied_as_written_are_not_applied_again_when_read(
    worker: Worker, client: Client, settings: Settings
) -> None:
    handles = await asyncio.gather(*(client.start(chain, Greeting(name=f"o{i}"), id=f"once-{i}") for i in range(100)))
    await asyncio.gather(*(h.result(timeout=120) for h in handles))

    runs = await histories(settings.bootstrap, settings.prefix)
    events = [e for key, run in runs.items() if key.startswith("default/once-") for e in run]
    kinds = [type(e.body).__name__ for e in events]
    assert 300 == kinds.count("StepCompleted")
    assert 0 == kinds.count("StepResultDropped")  # each outcome was applied once, when written or when read
    assert 300 == worker.steps_executed


async def test_a_last_steps_outcome_is_recorded_by_the_transaction_alone(
    worker: Worker, client: Client, settings: Settings
) -> None:
    handles = await asyncio.gather(*(client.start(chain, Greeting(name=f"l{i}"), id=f"last-{i}") for i in range(30)))
    await asyncio.gather(*(h.result(timeout=120) for h in handles))

    inbox = [COMMAND.decode(r.value) for r in await read_topic(settings.bootstrap, f"{settings.prefix}inbox")]
    reported = {(c.workflow_id, c.body.seq) for c in inbox if isinstance(c.body, CompleteStep)}
    ids = range(30)

    async def finished() -> dict[str, list[Event]] | None:
        # A transaction's markers reach its partitions one by one: the completion may be readable before the
        # history written with it.
        runs = await histories(settings.bootstrap, settings.prefix)
        ended = [any(isinstance(e.body, WorkflowCompleted) for e in runs.get(f"default/last-{i}", [])) for i in ids]
        return runs if all(ended) else None

    runs = await eventually(finished, timeout=30, interval=0.2)
    # The first two outcomes start the next step, which waits for them to be in the inbox (or, under load, for the
    # commit); the third starts nothing, so the transaction that records it is its only record.
    for i in range(30):
        completed = [e.body for e in runs[f"default/last-{i}"] if isinstance(e.body, StepCompleted)]
        assert 3 == len(completed)
        assert (f"last-{i}", completed[-1].seq) not in reported
        assert 0 == sum(isinstance(e.body, StepResultDropped) for e in runs[f"default/last-{i}"])


async def test_a_chain_of_quick_steps_commits_once(worker: Worker, client: Client) -> None:
    await (await client.start(chain, Greeting(name="warm"), id="warm")).result(timeout=60)
    before = worker.transactions

    for i in range(5):
        await (await client.start(chain, Greeting(name=f"c{i}"), id=f"quick-{i}")).result(timeout=60)

    # Start, three steps and completion of a run: one transaction, or a few when a commit was already under way.
    assert worker.transactions - before <= 10
