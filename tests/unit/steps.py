"""Step functions for unit tests (module-level so they have an import path)."""

from __future__ import annotations

import asyncio

from actors import current_step


def inc(x: int) -> int:
    return x + 1


def double(x: int) -> int:
    return x * 2


def name_of(x: int) -> str:
    return f"n{x}"


class Flaky(Exception):
    """A failure a retry may fix."""


def always_fails(label: str) -> str:
    raise Flaky(f"{label} failed again")


def missing_key(label: str) -> str:
    raise KeyError(label)


RELEASE: dict[str, asyncio.Event] = {}


async def hangs_first(label: str) -> str:
    """Attempt 1 waits until the test releases it (or forever); later attempts return at once."""
    info = current_step()
    if info.attempt == 1:
        await RELEASE.setdefault(label, asyncio.Event()).wait()
        return f"{label} late"
    return f"{label} on attempt {info.attempt}"
