"""Retry policies: how often and how soon a failed step is tried again."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from actors.errors import ErrorInfo


def _ms(value: timedelta | None) -> int:
    return 0 if value is None else int(value / timedelta(milliseconds=1))


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When a failed step attempt is tried again.

    Attempt ``n`` (counting from 1) that fails is retried after
    ``min(initial_interval * backoff_coefficient ** (n - 1), max_interval)``, until ``max_attempts`` attempts
    have run. Errors whose type name is in ``non_retryable`` and every ``TerminalError`` fail the step at once.

    Attributes:
        max_attempts: attempts in all, the first included; 0 means no limit.
        initial_interval: wait before the second attempt.
        backoff_coefficient: growth of the wait from one attempt to the next.
        max_interval: the longest wait between two attempts.
        non_retryable: exception types (or their names) that fail the step at once.
    """

    max_attempts: int = 3
    initial_interval: timedelta = timedelta(seconds=1)
    backoff_coefficient: float = 2.0
    max_interval: timedelta = timedelta(seconds=60)
    non_retryable: tuple[str | type[BaseException], ...] = field(default=())

    def __post_init__(self) -> None:
        if self.max_attempts < 0:
            raise ValueError("max_attempts must be >= 0 (0 means no limit)")
        if self.backoff_coefficient < 1.0:
            raise ValueError("backoff_coefficient must be >= 1")
        if self.initial_interval < timedelta(0) or self.max_interval < self.initial_interval:
            raise ValueError("need 0 <= initial_interval <= max_interval")

    def options(self, timeout: timedelta | None = None) -> StepOptions:
        """The policy as it is recorded in the journal (plain numbers and names)."""
        names = tuple(t if isinstance(t, str) else t.__name__ for t in self.non_retryable)
        return StepOptions(
            max_attempts=self.max_attempts,
            initial_interval_ms=_ms(self.initial_interval),
            backoff_coefficient=self.backoff_coefficient,
            max_interval_ms=_ms(self.max_interval),
            non_retryable=names,
            timeout_ms=_ms(timeout),
        )


@dataclass(frozen=True, slots=True)
class StepOptions:
    """A step's retry policy and per-attempt timeout, as recorded with the step (milliseconds)."""

    max_attempts: int
    initial_interval_ms: int
    backoff_coefficient: float
    max_interval_ms: int
    non_retryable: tuple[str, ...]
    timeout_ms: int

    def retry_delay_ms(self, failed_attempt: int, error: ErrorInfo, retry_after_ms: int = 0) -> int | None:
        """Milliseconds to wait before the next attempt, or ``None`` when the step has failed for good."""
        if not error.retryable or error.type in self.non_retryable:
            return None
        if error.type.rsplit(".", 1)[-1] in self.non_retryable:
            return None
        if self.max_attempts and failed_attempt >= self.max_attempts:
            return None
        delay = self.initial_interval_ms * self.backoff_coefficient ** (failed_attempt - 1)
        return max(int(min(delay, self.max_interval_ms)), retry_after_ms)


DEFAULT_RETRY = RetryPolicy()
