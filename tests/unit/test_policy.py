"""Retry policies: backoff, the cap, attempt limits and non-retryable errors."""

from __future__ import annotations

from datetime import timedelta

import pytest

from actors import RetryPolicy
from actors.errors import ErrorInfo

ERROR = ErrorInfo("ConnectionError", "down")


def test_delays_grow_by_the_coefficient_up_to_the_cap() -> None:
    options = RetryPolicy(
        max_attempts=0, initial_interval=timedelta(seconds=1), backoff_coefficient=3, max_interval=timedelta(seconds=20)
    ).options()

    assert [1_000, 3_000, 9_000, 20_000, 20_000] == [options.retry_delay_ms(n, ERROR) for n in range(1, 6)]


def test_no_delay_once_attempts_run_out() -> None:
    options = RetryPolicy(max_attempts=2).options()

    assert options.retry_delay_ms(1, ERROR) is not None
    assert options.retry_delay_ms(2, ERROR) is None


def test_non_retryable_types_fail_at_once_by_class_or_name() -> None:
    options = RetryPolicy(non_retryable=(ConnectionError, "myapp.errors.Fatal")).options()

    assert options.retry_delay_ms(1, ERROR) is None
    assert options.retry_delay_ms(1, ErrorInfo("myapp.errors.Fatal", "x")) is None
    assert options.retry_delay_ms(1, ErrorInfo("KeyError", "x")) == 1_000


def test_terminal_errors_are_never_retried() -> None:
    assert RetryPolicy().options().retry_delay_ms(1, ErrorInfo("TerminalError", "no", retryable=False)) is None


def test_a_step_may_ask_for_a_longer_wait() -> None:
    assert 5_000 == RetryPolicy().options().retry_delay_ms(1, ERROR, retry_after_ms=5_000)


def test_invalid_policies_are_refused() -> None:
    with pytest.raises(ValueError, match="backoff_coefficient"):
        RetryPolicy(backoff_coefficient=0.5)
