"""The step executor: runs step tasks and reports each attempt's outcome to the run's inbox.

At most ``concurrency`` steps run at once (see :func:`streams.steps.run_step` for how one runs). A task is
only run while it is still the current attempt of a scheduled step (``is_current``), so a step whose result
was recorded is never executed again, even when its task is read a second time after a crash.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from aiokafka import AIOKafkaProducer

from actors.commands import Command, CompleteStep, FailStep
from actors.context import StepInfo
from streams.clock import Clock
from streams.records import COMMAND, StepTask
from streams.steps import StepError, run_step

logger = logging.getLogger(__name__)


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
        clock: Clock,
    ) -> None:
        self._producer = producer
        self._inbox = inbox
        self._slots = asyncio.Semaphore(concurrency)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="steady-step")
        self._is_current = is_current
        self._clock = clock
        self._running: set[asyncio.Task[None]] = set()
        self.executed = 0
        self.skipped = 0

    @property
    def in_flight(self) -> int:
        """Tasks accepted and not finished."""
        return len(self._running)

    def submit(self, task: StepTask, done: Callable[[], None]) -> None:
        """Run ``task`` in the background; ``done`` is called once it has been reported or skipped."""
        job = asyncio.create_task(self._run(task, done), name=f"step {task.idempotency_key}#{task.attempt}")
        self._running.add(job)
        job.add_done_callback(self._running.discard)

    async def _run(self, task: StepTask, done: Callable[[], None]) -> None:
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
                started = self._clock.now_ms()
                info = StepInfo(task.idempotency_key, task.attempt, task.tenant, task.workflow_id, task.name)
                outcome = await run_step(task.function, task.args, info, self._pool)
                self.executed += 1
                body = (
                    FailStep(task.seq, task.attempt, outcome.error, started, outcome.retry_after_ms)
                    if isinstance(outcome, StepError)
                    else CompleteStep(task.seq, task.attempt, outcome, started)
                )
                command = Command(
                    id=f"{task.idempotency_key}#{task.attempt}",
                    tenant=task.tenant,
                    workflow_id=task.workflow_id,
                    at_ms=self._clock.now_ms(),
                    body=body,
                )
                await self._producer.send_and_wait(
                    self._inbox, key=task.key.encode(), value=COMMAND.encode(command), headers=COMMAND.headers
                )
        except asyncio.CancelledError:
            raise
        except Exception:
            # Reporting failed (the broker is gone): the task is read again by whoever owns it next.
            logger.exception("step %s attempt %d could not be reported", task.idempotency_key, task.attempt)
            return
        finally:
            done()

    async def stop(self) -> None:
        """Cancel running steps (their tasks are read again by the next owner) and release the threads."""
        for job in list(self._running):
            job.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
        self._pool.shutdown(wait=False, cancel_futures=True)
