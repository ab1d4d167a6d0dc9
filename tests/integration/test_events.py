"""Events, ingress and cancellation on a real broker."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from actors import RunCancelled
from actors.events import EventDelivered, EventReceived, StepCompleted, StepScheduled, WorkflowStarted
from streams.client import Client, RunHandle
from streams.settings import Settings
from streams.worker import Worker
from tests.support import eventually, histories

pytestmark = pytest.mark.integration
HERE = Path(__file__).resolve().parent


async def test_an_event_sent_after_the_wait_answers_it(worker: Worker, client: Client) -> None:
    handle = await client.start("approval", 60, id="after")
    await asyncio.sleep(0.5)
    await handle.signal("approval", {"approver": "kim", "ok": True})

    assert "kim:True" == await handle.result(timeout=60)


async def test_an_event_sent_before_the_wait_is_kept_until_the_workflow_waits(worker: Worker, client: Client) -> None:
    handle = await client.start("late_waiter", 2.0, id="before")
    await handle.signal("go", "early bird")

    assert "early bird" == await handle.result(timeout=60)
    kinds = [type(e.body) for e in await handle.history()]
    assert kinds.index(EventReceived) < kinds.index(EventDelivered)


async def test_a_wait_without_its_event_times_out(worker: Worker, client: Client) -> None:
    handle = await client.start("approval", 1.0, id="lonely")

    assert "timed out" == await handle.result(timeout=60)


async def test_a_thousand_events_to_a_hundred_runs_keep_per_run_order(worker: Worker, client: Client) -> None:
    handles = await asyncio.gather(*(client.start("collector", 10, id=f"col-{r}") for r in range(100)))

    async def feed(r: int) -> None:
        for i in range(10):
            await client.signal(f"col-{r}", "item", r * 100 + i)

    await asyncio.gather(*(feed(r) for r in range(100)))
    results = await asyncio.gather(*(h.result(timeout=120) for h in handles))

    assert [[r * 100 + i for i in range(10)] for r in range(100)] == results


async def test_a_resent_event_id_is_delivered_once(worker: Worker, client: Client) -> None:
    handle = await client.start("collector", 2, id="dedup")
    await handle.signal("item", 1, event_id="evt-1")
    await handle.signal("item", 1, event_id="evt-1")
    await handle.signal("item", 2, event_id="evt-2")

    assert [1, 2] == await handle.result(timeout=60)


async def test_a_plain_kafka_producer_with_no_steady_code_starts_a_run(
    worker: Worker, client: Client, settings: Settings
) -> None:
    producer = [sys.executable, str(HERE / "plain_producer.py"), settings.bootstrap, settings.prefix]
    for _ in range(2):  # the same start twice: one run
        proc = await asyncio.create_subprocess_exec(*producer, "chain", "plain-1", '{"name": "polyglot"}')
        assert 0 == await asyncio.wait_for(proc.wait(), 60)

    assert "HELLO POLYGLOT" == (await client.handle("plain-1").result(timeout=60))["text"]
    runs = await histories(settings.bootstrap, settings.prefix)
    assert 1 == sum(isinstance(e.body, WorkflowStarted) for e in runs["default/plain-1"])


async def test_cancel_during_a_step_runs_the_compensation(worker: Worker, client: Client) -> None:
    handle = await client.start("cancellable", "step", id="cancel-step")
    await _wait_for_step(handle, "slow")

    await handle.cancel("customer changed their mind")

    with pytest.raises(RunCancelled, match="customer changed their mind"):
        await handle.result(timeout=60)
    names = [e.body.name for e in await handle.history() if isinstance(e.body, StepScheduled)]
    assert ["reserve", "slow", "release"] == names


async def test_cancel_during_a_sleep_runs_the_compensation(worker: Worker, client: Client) -> None:
    handle = await client.start("cancellable", "sleep", id="cancel-sleep")
    await _wait_for_step(handle, "reserve", completed=True)
    await asyncio.sleep(0.5)

    await handle.cancel("stop")

    with pytest.raises(RunCancelled):
        await handle.result(timeout=60)
    state = await handle.status()
    assert state is not None
    assert () == state.timers
    assert "release" == [e.body.name for e in await handle.history() if isinstance(e.body, StepScheduled)][-1]


async def _wait_for_step(handle: RunHandle, name: str, *, completed: bool = False) -> None:
    kind = StepCompleted if completed else StepScheduled

    async def seen() -> bool:
        events = await handle.history()
        return any(isinstance(e.body, kind) and e.body.name == name for e in events)

    await eventually(seen, timeout=60, interval=0.2)
