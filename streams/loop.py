"""How a worker process runs: on uvloop where installed (else asyncio's loop), start-up objects frozen; bounded waits.

A worker spends much of its time between network round trips (a step's report, a transaction's requests,
fetches); uvloop's loop and sockets take less of it per hop. ``STEADY_EVENT_LOOP=asyncio`` keeps asyncio's
loop (to compare, or where uvloop is not wanted).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import Awaitable, Coroutine
from types import ModuleType
from typing import Any, TypeVar

uvloop: ModuleType | None
try:
    import uvloop
except ImportError:  # not built for every platform (Windows): asyncio's loop then
    uvloop = None

T = TypeVar("T")

logger = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 5.0
"""Longest wait for Kafka clients to close or tasks to stop before they are left (the broker may be away)."""

ENV = "STEADY_EVENT_LOOP"
"""``uvloop`` (the default where installed) or ``asyncio``."""


def name() -> str:
    """The loop :func:`run` uses: ``uvloop`` or ``asyncio``."""
    wanted = os.environ.get(ENV, "").strip().lower() or "uvloop"
    if wanted not in ("uvloop", "asyncio"):
        raise ValueError(f"{ENV} must be 'uvloop' or 'asyncio', not {wanted!r}")
    return "uvloop" if wanted == "uvloop" and uvloop is not None else "asyncio"


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to completion on a new loop of the kind :func:`name` picks.

    What exists when it starts (modules, classes, the registry) is moved out of the collector's reach first
    (``gc.freeze``): a worker keeps thousands of run states and suspended coroutines, and Python's full
    collections, which walk every tracked object, paused it for up to 65 ms under W4, 20 ms once frozen.
    """
    gc.collect()  # start-up garbage in reference cycles would be frozen with the rest
    gc.freeze()
    if name() == "uvloop" and uvloop is not None:
        result: T = uvloop.run(main)
        return result
    return asyncio.run(main)


async def bounded(seconds: float, *waits: Awaitable[object]) -> None:
    """Await ``waits`` together for ``seconds`` at most; what fails or is left over is logged, never raised.

    For closing Kafka clients and stopping tasks: with the broker away they would wait on it for as long as it
    stays away. What is left over is cancelled (and not waited for).
    """
    tasks = [asyncio.ensure_future(w) for w in waits]
    if not tasks:
        return
    for task in tasks:
        task.add_done_callback(_log_failure)
    try:
        _, left = await asyncio.wait(tasks, timeout=seconds)
    finally:
        for task in tasks:
            task.cancel()  # no-op for the finished ones
    if left:
        logger.warning("%d of %d closings left after %.1fs", len(left), len(tasks), seconds)


def _log_failure(task: asyncio.Future[object]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.warning("closing failed: %r", task.exception())
