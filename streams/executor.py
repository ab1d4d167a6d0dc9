"""The step executor: runs step tasks and reports each attempt's outcome to the run's inbox.

Async steps run on the worker's event loop, sync steps in a thread pool so they never block it; at most
``concurrency`` run at once. A task is only run while it is still the current attempt of a scheduled step
(``is_current``), so a step whose result was recorded is never executed again, even when its task is read
a second time after a crash.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import importlib
import inspect
import logging
import time
import typing
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiokafka import AIOKafkaProducer
from pydantic import TypeAdapter, ValidationError

from actors import payload
from actors.commands import Command, CompleteStep, FailStep
from actors.context import StepInfo, set_current_step
from actors.errors import ErrorInfo, RetryableError, error_info
from streams.records import COMMAND, StepTask

logger = logging.getLogger(__name__)

Clock = Callable[[], int]


def wall_clock_ms() -> int:
    """Milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


class StepFunctionError(LookupError):
    """The step function named by a task cannot be found or called with its arguments."""


@functools.lru_cache(maxsize=1024)
def resolve(ref: str) -> tuple[Callable[..., Any], list[TypeAdapter[Any] | None]]:
    """The function at ``module:qualname`` and adapters that validate its positional arguments."""
    module_name, _, qualname = ref.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise StepFunctionError(f"step function {ref} cannot be imported: {exc}") from exc
    if not callable(target):
        raise StepFunctionError(f"{ref} is not callable")
    try:
        hints = typing.get_type_hints(target)
    except (NameError, TypeError):
        hints = {}
    adapters: list[TypeAdapter[Any] | None] = []
    for param in inspect.signature(target).parameters.values():
        if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            hint = hints.get(param.name)
            adapters.append(TypeAdapter(hint) if hint is not None else None)
    return target, adapters


def _arguments(task: StepTask, adapters: list[TypeAdapter[Any] | None]) -> list[Any]:
    raw = payload.decode(task.args)
    if not isinstance(raw, list):
        raise StepFunctionError(f"arguments of step {task.name!r} are not a JSON array")
    return [
        adapters[i].validate_python(value) if i < len(adapters) and adapters[i] is not None else value  # type: ignore[union-attr]
        for i, value in enumerate(raw)
    ]


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
        clock: Clock = wall_clock_ms,
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
                started = self._clock()
                outcome = await self._execute(task)
                self.executed += 1
                body = (
                    CompleteStep(task.seq, task.attempt, outcome, started)
                    if isinstance(outcome, payload.Payload)
                    else FailStep(task.seq, task.attempt, outcome[0], started, outcome[1])
                )
                command = Command(
                    id=f"{task.idempotency_key}#{task.attempt}",
                    tenant=task.tenant,
                    workflow_id=task.workflow_id,
                    at_ms=self._clock(),
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

    async def _execute(self, task: StepTask) -> payload.Payload | tuple[ErrorInfo, int]:
        info = StepInfo(task.idempotency_key, task.attempt, task.tenant, task.workflow_id, task.name)
        try:
            fn, adapters = resolve(task.function)
            args = _arguments(task, adapters)
        except (StepFunctionError, ValidationError, ValueError) as exc:
            return ErrorInfo("StepFunctionError", str(exc), retryable=False), 0
        try:
            if inspect.iscoroutinefunction(fn):
                result = await self._call_async(fn, args, info)
            else:
                ctx = contextvars.copy_context()
                ctx.run(set_current_step, info)
                loop = asyncio.get_running_loop()
                result = await loop.run_in_executor(self._pool, functools.partial(ctx.run, fn, *args))
        except Exception as exc:  # noqa: BLE001 - a step's error of any kind is its outcome
            retry_after = 0
            if isinstance(exc, RetryableError) and exc.retry_after is not None:
                retry_after = int(exc.retry_after.total_seconds() * 1000)
            return error_info(exc), retry_after
        try:
            return payload.encode(result)
        except (TypeError, ValueError) as exc:
            return ErrorInfo("InvalidResult", f"step result cannot be encoded as JSON: {exc}", retryable=False), 0

    @staticmethod
    async def _call_async(fn: Callable[..., Awaitable[Any]], args: list[Any], info: StepInfo) -> Any:
        set_current_step(info)  # this task's own context: invisible to other steps
        return await fn(*args)

    async def stop(self) -> None:
        """Cancel running steps (their tasks are read again by the next owner) and release the threads."""
        for job in list(self._running):
            job.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
        self._pool.shutdown(wait=False, cancel_futures=True)
