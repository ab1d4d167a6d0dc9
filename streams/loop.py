"""The event loop a worker process runs on: uvloop where it is installed, else asyncio's own.

A worker spends much of its time between network round trips (a step's report, a transaction's requests,
fetches); uvloop's loop and sockets take less of it per hop. ``STEADY_EVENT_LOOP=asyncio`` keeps asyncio's
loop (to compare, or where uvloop is not wanted).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from types import ModuleType
from typing import Any, TypeVar

uvloop: ModuleType | None
try:
    import uvloop
except ImportError:  # not built for every platform (Windows): asyncio's loop then
    uvloop = None

T = TypeVar("T")

ENV = "STEADY_EVENT_LOOP"
"""``uvloop`` (the default where installed) or ``asyncio``."""


def name() -> str:
    """The loop :func:`run` uses: ``uvloop`` or ``asyncio``."""
    wanted = os.environ.get(ENV, "").strip().lower() or "uvloop"
    if wanted not in ("uvloop", "asyncio"):
        raise ValueError(f"{ENV} must be 'uvloop' or 'asyncio', not {wanted!r}")
    return "uvloop" if wanted == "uvloop" and uvloop is not None else "asyncio"


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to completion on a new loop of the kind :func:`name` picks."""
    if name() == "uvloop" and uvloop is not None:
        result: T = uvloop.run(main)
        return result
    return asyncio.run(main)
