"""A worker taking a run over does not run a step again whose outcome is already in the inbox.

The previous owner may have reported a step's outcome to the inbox and stopped before applying it: the step's
task is then still ahead of the committed offsets of the tasks topic, and its outcome ahead of those of the inbox.
The next owner reads both topics at once; the outcome must be applied before the task is considered.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from actors import Context, Registry, Workflow, payload
from actors.commands import Command, CompleteStep
from streams.client import Client
from streams.records import COMMAND, TASK, StepTask
from streams.settings import Settings
from streams.topics import Topics, ensure_topics
from tests.support import eventually, running_worker

pytestmark = pytest.mark.integration

started: list[str] = []
"""Labels of the ``held`` steps that began, in this process."""


async def held(label: str) -> str:
    started.append(label)
    await asyncio.Event().wait()  # until the worker stops and cancels it
    return label


gated = Workflow("gated")


@gated.main
async def run_gated(ctx: Context, label: str) -> str:
    return await ctx.step("held", held, label)


parked = Workflow("parked")


@parked.main
async def run_parked(ctx: Context, _: str) -> object:
    return await ctx.wait_for_event("go")


registry = Registry([gated, parked])


async def _task_of(settings: Settings, workflow_id: str) -> StepTask:
    """The step task of run ``workflow_id`` from the tasks topic (one partition)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap, isolation_level="read_committed", enable_auto_commit=False
    )
    await consumer.start()
    try:
        tp = TopicPartition(Topics.named(settings.prefix).tasks, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        async with asyncio.timeout(30):
            while True:
                for records in (await consumer.getmany(tp, timeout_ms=500)).values():
                    for record in records:
                        task = TASK.decode(record.value)
                        assert isinstance(task, StepTask)
                        if task.workflow_id == workflow_id:
                            return task
    finally:
        await consumer.stop()


async def test_a_step_reported_by_the_previous_owner_is_not_run_again(settings: Settings) -> None:
    settings = settings.model_copy(update={"partitions": 1})  # the run and the backlog share one inbox partition
    started.clear()
    await ensure_topics(settings)
    async with Client(settings.bootstrap, prefix=settings.prefix) as client:
        async with running_worker(registry, settings):
            handle = await client.start(gated, "a", id="gated-a")
            await client.start(gated, "b", id="gated-b")
            await eventually(lambda: sorted(started) == ["a", "b"], timeout=30, interval=0.05)
        # Stopped: the steps were cancelled, their tasks are ahead of the committed offsets and read again.
        task = await _task_of(settings, "gated-a")

        # Inputs the next owner applies before it reaches the outcome: more than one fetch of the inbox partition
        # (aiokafka's max_partition_fetch_bytes, 1 MiB), so that without the wait the task, fetched with the first,
        # would be handed out before the outcome is.
        for i in range(12):
            await client.start(parked, "x" * 100_000, id=f"parked-{i}")
        # The outcome the previous owner reported just before it stopped, and never applied.
        report = Command(
            id=f"{task.idempotency_key}#{task.attempt}",
            tenant=task.tenant,
            workflow_id=task.workflow_id,
            at_ms=int(time.time() * 1000),
            body=CompleteStep(task.seq, task.attempt, payload.encode("reported"), int(time.time() * 1000)),
        )
        producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap, acks="all")
        await producer.start()
        try:
            inbox = Topics.named(settings.prefix).inbox
            await producer.send_and_wait(inbox, COMMAND.encode(report), key=task.key.encode(), headers=COMMAND.headers)
        finally:
            await producer.stop()

        next_owner = settings.model_copy(update={"worker_id": "w2"})
        async with running_worker(registry, next_owner) as worker:
            assert await handle.result(timeout=60) == "reported"
            # The other step, with no outcome anywhere, runs again: the tasks are read once the inbox is.
            await eventually(lambda: started.count("b") == 2, timeout=30, interval=0.05)
            assert started.count("a") == 1, "the step whose outcome was in the inbox ran again"
            # The first one's task was read and found done (the outcome applied first).
            assert worker._executor is not None
            assert worker._executor.skipped == 1
