"""The step executor: runs step tasks and reports each attempt's outcome to the run's inbox.

At most ``concurrency`` steps run at once (see :func:`streams.steps.run_step` for how one runs). A task is
only run while it is still the current attempt of a scheduled step (``is_current``), so a step whose result
was recorded is never executed again, even when its task is read a second time after a crash, and an
attempt already running here is not started a second time. Once an outcome is in the inbox, ``on_reported``
hears of it (the worker applies it at once when it can).

The worker that owns the run may take an outcome before it is written (``take``): then its transaction
records it, and the outcome is reported to the inbox only if the run's next steps wait for that report
(``on_early_reported``) rather than for the commit.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.structs import RecordMetadata

from actors.commands import Command, CompleteStep, FailStep
from actors.context import StepInfo
from streams.clock import Clock
from streams.pending import EarlyInput
from streams.records import COMMAND, StepTask
from streams.steps import StepError, run_step

logger = logging.getLogger(__name__)

TIMEOUT_GRACE_S = 1.0
"""How long past its timeout the executor still waits for an attempt before freeing its slot."""


class StepExecutor:
    """Runs step tasks with bounded concurrency and reports their outcomes to the inbox."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        inbox: str,
        *,
        concurrency: int,
        threads: int,
        is_current: Callable[[StepTask], bool],
        on_reported: Callable[[Command, RecordMetadata], None] | None = None,
        take: Callable[[StepTask, Command], EarlyInput | None] | None = None,
        on_early_reported: Callable[[EarlyInput, RecordMetadata], None] | None = None,
        clock: Clock,
    ) -> None:
        self._producer = producer
        self._inbox = inbox
        self._slots = asyncio.Semaphore(concurrency)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="steady-step")
        self._is_current = is_current
        self._on_reported = on_reported
        self._take = take
        self._on_early_reported = on_early_reported
        self._clock = clock
        self._running: dict[tuple[str, int, int], asyncio.Task[None]] = {}
        self.executed = 0
        self.skipped = 0

    @property
    def in_flight(self) -> int:
        """Tasks accepted and not finished."""
        return len(self._running)

    def submit(self, task: StepTask, done: Callable[[], None]) -> None:
        """Run ``task`` in the background; ``done`` is called once its outcome is durable, or it was skipped.

        Durable: reported to the inbox, or committed by the transaction of the worker that took it (if that work
        is dropped instead, the attempt is released to run again).
        """
        attempt = task.attempt_id
        running = self._running.get(attempt)
        if running is not None and not running.done():
            running.add_done_callback(lambda _: done())  # the same attempt is running here already
            return
        # A job that has ended but whose end was not heard of yet is not running: an outcome it handed to a
        # transaction that was then dropped must be produced again.
        job = asyncio.create_task(self._run(task, done), name=f"step {task.idempotency_key}#{task.attempt}")
        self._running[attempt] = job
        job.add_done_callback(functools.partial(self._ended, attempt))

    def _ended(self, attempt: tuple[str, int, int], job: asyncio.Task[None]) -> None:
        if self._running.get(attempt) is job:  # not a later job of the same attempt
            del self._running[attempt]

    async def _run(self, task: StepTask, done: Callable[[], None]) -> None:
        release: Callable[[], None] | None = done
        try:
            async with self._slots:
                if not self._is_current(task):
                    self.skipped += 1
                    logger.info(
                        "skipping step %s attempt %d: already recorded or superseded",
                        task.idempotency_key,
                        task.attempt,
                    )
                    return
                command = await self._attempt(task)
            if command is None:
                return
            early = self._take(task, command) if self._take is not None else None
            if early is None:
                await self._report(task, command, self._on_reported)
            elif early.steps:
                assert self._on_early_reported is not None
                on_early_reported = self._on_early_reported
                await self._report(task, command, lambda c, meta: on_early_reported(early, meta))
            else:
                early.release, release = done, None  # done once the transaction that records it commits
        finally:
            if release is not None:
                release()

    async def _attempt(self, task: StepTask) -> Command | None:
        started = self._clock.now_ms()
        info = StepInfo(task.idempotency_key, task.attempt, task.tenant, task.workflow_id, task.name)
        attempt = run_step(task.function, task.args, info, self._pool)
        if task.timeout_ms:
            # Past its timeout the actor has failed this attempt: stop waiting and free the slot (an async step is
            # cancelled; a sync one cannot be, and finishes in its thread unheard).
            try:
                async with asyncio.timeout(task.timeout_ms / 1000 + TIMEOUT_GRACE_S):
                    outcome = await attempt
            except TimeoutError:
                logger.warning("step %s attempt %d outlived its timeout", task.idempotency_key, task.attempt)
                return None
        else:
            outcome = await attempt
        self.executed += 1
        body = (
            FailStep(task.seq, task.attempt, outcome.error, started, outcome.retry_after_ms)
            if isinstance(outcome, StepError)
            else CompleteStep(task.seq, task.attempt, outcome, started)
        )
        return Command(
            id=f"{task.idempotency_key}#{task.attempt}",
            tenant=task.tenant,
            workflow_id=task.workflow_id,
            at_ms=self._clock.now_ms(),
            body=body,
        )

    async def _report(
        self, task: StepTask, command: Command, then: Callable[[Command, RecordMetadata], None] | None
    ) -> None:
        """Send the outcome to the inbox, retrying while the broker is away: a lost report would hang the run."""
        backoff = 0.1
        while True:
            try:
                meta = await self._producer.send_and_wait(
                    self._inbox, COMMAND.encode(command), key=task.key.encode(), headers=COMMAND.headers
                )
            except (KafkaError, TimeoutError, OSError) as exc:
                logger.warning("reporting step %s failed (%s); retrying in %.1fs", task.idempotency_key, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(5.0, backoff * 2)
                continue
            if then is not None:
                then(command, meta)
            return

    async def stop(self) -> None:
        """Cancel running steps (their tasks are read again by the next owner) and release the threads."""
        jobs = list(self._running.values())
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        self._pool.shutdown(wait=False, cancel_futures=True)
