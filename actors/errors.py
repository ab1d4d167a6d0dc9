"""Errors of the workflow model.

::

    Exception
     └── SteadyError                 root of every error Steady raises on purpose
          ├── TerminalError          a step failed for good: never retried, raised in the workflow
          │    └── StepFailed        a step's attempts ran out (carries the last error and the count)
          ├── RetryableError         a step asks to be retried, optionally after ``retry_after``
          ├── EventTimeout           a wait for an event ended without one
          ├── Cancelled              the run was cancelled; raised at the workflow's current await
          ├── NonDeterminismError    replay of the workflow code diverged from its journal
          ├── WorkflowDefinitionError  a workflow or step is declared in a way Steady cannot run
          └── RunFailed              the client's view of a run that ended in failure
               └── RunCancelled      ... or that was cancelled
    BaseException
     └── Suspend                     internal: the workflow awaits work that is not done yet

``Suspend`` derives from ``BaseException`` so that user code's ``except Exception`` cannot swallow it.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """A failure as it is recorded in the journal, the history and on the completions topic.

    Attributes:
        type: the exception's class name (``module.Qualname`` for user exceptions).
        message: ``str(exception)``.
        retryable: whether a retry policy may try again.
        details: a traceback or other text for operators; empty when there is none.
    """

    type: str
    message: str
    retryable: bool = True
    details: str = ""

    def __str__(self) -> str:
        return f"{self.type}: {self.message}"


class SteadyError(Exception):
    """Root of every error Steady raises on purpose."""


class TerminalError(SteadyError):
    """A failure that no retry can fix. Raised by a step, it fails the step at once.

    The workflow sees it at the ``await`` of the step and may catch it to compensate.
    """

    def __init__(self, message: str, *, error_type: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.error_type = error_type or type(self).__name__


class StepFailed(TerminalError):
    """A step failed for good: its attempts ran out, or it raised a non-retryable error.

    Attributes:
        step: the step's name.
        error: the last attempt's error.
        attempts: how many attempts ran.
    """

    def __init__(self, step: str, error: ErrorInfo, attempts: int) -> None:
        super().__init__(f"step {step!r} failed after {attempts} attempt(s): {error}", error_type=error.type)
        self.step = step
        self.error = error
        self.attempts = attempts


class RetryableError(SteadyError):
    """Raised by a step to ask for a retry, optionally no sooner than ``retry_after``."""

    def __init__(self, message: str, *, retry_after: timedelta | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EventTimeout(SteadyError):
    """A ``ctx.wait_for_event`` ended without the event."""

    def __init__(self, name: str, timeout_ms: int) -> None:
        super().__init__(f"no event {name!r} within {timeout_ms} ms")
        self.name = name
        self.timeout_ms = timeout_ms


class Cancelled(SteadyError):
    """The run was cancelled. Raised at the workflow's current ``await``; catch it to compensate.

    If it propagates out of the workflow, the run ends as cancelled.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"cancelled: {reason}" if reason else "cancelled")
        self.reason = reason


class NonDeterminismError(SteadyError):
    """Replaying the workflow function did not follow its journal (a step renamed, reordered or removed)."""


class WorkflowDefinitionError(SteadyError):
    """A workflow or step is declared in a way Steady cannot run (for example a lambda as a step)."""


class RunFailed(SteadyError):
    """The client's view of a run that ended in failure.

    Attributes:
        run_key: ``tenant/workflow_id``.
        error: the error the run failed with.
    """

    def __init__(self, run_key: str, error: ErrorInfo) -> None:
        super().__init__(f"run {run_key} failed: {error}")
        self.run_key = run_key
        self.error = error


class RunCancelled(RunFailed):
    """The client's view of a run that ended because it was cancelled."""


class Suspend(BaseException):
    """Internal: the workflow awaits something the journal does not answer yet."""


def error_info(exc: BaseException, *, with_traceback: bool = True) -> ErrorInfo:
    """Describe an exception as it is recorded: type, message, whether a retry may help, traceback."""
    cls = type(exc)
    name = (
        cls.__qualname__ if cls.__module__ in ("builtins", "actors.errors") else f"{cls.__module__}.{cls.__qualname__}"
    )
    if isinstance(exc, TerminalError):
        name = exc.error_type
    details = "".join(traceback.format_exception(exc)) if with_traceback else ""
    return ErrorInfo(type=name, message=str(exc), retryable=not isinstance(exc, TerminalError), details=details)
