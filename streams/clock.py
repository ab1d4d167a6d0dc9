"""Clocks: the wall clock in production, a controllable one in tests."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """What the worker, the step executor and the timer service ask of time."""

    def now_ms(self) -> int:
        """Milliseconds since the epoch."""
        ...


class WallClock:
    """The system clock."""

    def now_ms(self) -> int:
        """Milliseconds since the epoch."""
        return time.time_ns() // 1_000_000


class ManualClock:
    """A clock that moves only when told to (``advance``/``set``)."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("ManualClock needs an aware datetime")
        self._ms = int(start.timestamp() * 1000)

    def now_ms(self) -> int:
        """The clock's current time."""
        return self._ms

    def advance(self, delta: timedelta) -> None:
        """Move the clock forward by ``delta``."""
        if delta < timedelta(0):
            raise ValueError("a clock only moves forward")
        self._ms += int(delta / timedelta(milliseconds=1))

    def set_ms(self, ms: int) -> None:
        """Move the clock forward to ``ms``."""
        self._ms = max(self._ms, ms)
