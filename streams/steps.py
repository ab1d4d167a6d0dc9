"""Running one step attempt: find the function, validate its arguments, call it, capture its outcome.

Shared by the Kafka step executor and the in-memory test kit. Async steps run on the caller's event loop,
sync steps in a thread pool so that they never block it. The step can read who it is with
:func:`actors.current_step` (its idempotency key and attempt).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import importlib
import inspect
import typing
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError

from actors import payload
from actors.context import StepInfo, set_current_step
from actors.errors import ErrorInfo, RetryableError, error_info


@dataclass(frozen=True, slots=True)
class StepError:
    """A failed attempt: the error, and the least wait before a retry that the step asked for."""

    error: ErrorInfo
    retry_after_ms: int = 0


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


def _arguments(name: str, args: payload.Payload, adapters: list[TypeAdapter[Any] | None]) -> list[Any]:
    raw = payload.decode(args)
    if not isinstance(raw, list):
        raise StepFunctionError(f"arguments of step {name!r} are not a JSON array")
    return [
        adapters[i].validate_python(value) if i < len(adapters) and adapters[i] is not None else value  # type: ignore[union-attr]
        for i, value in enumerate(raw)
    ]


async def run_step(function: str, args: payload.Payload, info: StepInfo, pool: Executor) -> payload.Payload | StepError:
    """Run one attempt of the step ``function`` with ``args``; never raises for the step's own errors.

    Await it in a task of its own (both executors start one per attempt): an async step runs in that task and
    tells it who it is (:func:`actors.current_step`), which no other task sees.
    """
    try:
        fn, adapters = resolve(function)
        values = _arguments(info.step, args, adapters)
    except (StepFunctionError, ValidationError, ValueError) as exc:
        return StepError(ErrorInfo("StepFunctionError", str(exc), retryable=False))
    try:
        if inspect.iscoroutinefunction(fn):
            set_current_step(info)  # in the attempt's own task (see above): invisible to other steps
            result = await fn(*values)
        else:
            ctx = contextvars.copy_context()
            ctx.run(set_current_step, info)
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(pool, functools.partial(ctx.run, fn, *values))
    except Exception as exc:  # noqa: BLE001 - a step's error of any kind is its outcome
        retry_after = 0
        if isinstance(exc, RetryableError) and exc.retry_after is not None:
            retry_after = int(exc.retry_after.total_seconds() * 1000)
        return StepError(error_info(exc), retry_after)
    try:
        return payload.encode(result)
    except (TypeError, ValueError) as exc:
        return StepError(ErrorInfo("InvalidResult", f"step result cannot be encoded as JSON: {exc}", retryable=False))
