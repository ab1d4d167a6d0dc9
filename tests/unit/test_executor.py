"""The step executor runs an attempt again when the only record of its outcome was dropped."""

from __future__ import annotations

import asyncio
import contextlib

from aiokafka import AIOKafkaProducer

from actors import payload
from actors.commands import Command
from streams.clock import WallClock
from streams.executor import StepExecutor
from streams.pending import EarlyInput, Pending
from streams.records import StepTask
from tests.support import eventually

CALLS: list[str] = []


async def note(label: str) -> str:
    """The step: notes that it ran."""
    CALLS.append(label)
    return label


def _task() -> StepTask:
    return StepTask(
        tenant="default",
        workflow_id="run-1",
        workflow_type="wf",
        version="1",
        seq=2,
        name="last",
        attempt=1,
        function=f"{__name__}:note",
        args=payload.encode(["last"]),
        idempotency_key="default/run-1/last/0",
        timeout_ms=0,
        at_ms=0,
    )


async def test_an_attempt_whose_outcome_is_dropped_as_soon_as_it_finished_runs_again() -> None:
    # The worker takes the outcome of a run's last step into its open transaction (no report is written), and drops
    # that work before the step's job has quite ended: the attempt is released to run again, and must.
    CALLS.clear()
    taken: list[EarlyInput] = []
    loop = asyncio.get_running_loop()

    def take(task: StepTask, command: Command) -> EarlyInput:
        early = EarlyInput(task, command, Pending())
        taken.append(early)
        if len(taken) == 1:
            # What Worker._drop_early does, in the next turn of the loop: the job has returned by then, and the
            # callbacks of its end have not run yet.
            loop.call_soon(lambda: executor.submit(task, early.release or (lambda: None)))
        return early

    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:9")  # never started: these outcomes are not reported
    executor = StepExecutor(
        producer, "inbox", concurrency=4, threads=1, is_current=lambda _: True, take=take, clock=WallClock()
    )
    try:
        executor.submit(_task(), lambda: None)
        with contextlib.suppress(AssertionError):  # the assertions below say what went wrong
            await eventually(lambda: len(CALLS) == 2 and not executor.in_flight, timeout=2, interval=0.01)
        assert ["last", "last"] == CALLS
        assert 2 == len(taken)
    finally:
        await executor.stop()
        await producer.stop()
