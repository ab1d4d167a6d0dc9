"""One step attempt: an async step learns who it is, and no other task sees it."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest

from actors import current_step, payload
from actors.context import StepInfo
from streams.steps import StepError, run_step

ENTERED: list[str] = []
BOTH = asyncio.Event()


async def who(label: str) -> str:
    """The step: waits until both attempts run, then says which attempt it is."""
    before = current_step().idempotency_key
    ENTERED.append(label)
    if len(ENTERED) == 2:
        BOTH.set()
    await BOTH.wait()
    return f"{label}: {before} then {current_step().idempotency_key}"


def who_sync(label: str) -> str:
    return f"{label}: {current_step().idempotency_key}"


def _info(key: str) -> StepInfo:
    return StepInfo(key, 1, "default", "run-1", "who")


async def test_concurrent_async_attempts_each_see_their_own_identity_and_leave_the_caller_none() -> None:
    ENTERED.clear()
    BOTH.clear()
    with ThreadPoolExecutor(1) as pool:
        first = asyncio.create_task(run_step(f"{__name__}:who", payload.encode(["a"]), _info("k/a"), pool))
        second = asyncio.create_task(run_step(f"{__name__}:who", payload.encode(["b"]), _info("k/b"), pool))
        results = await asyncio.gather(first, second)
    assert [payload.decode(r) for r in results if not isinstance(r, StepError)] == [
        "a: k/a then k/a",
        "b: k/b then k/b",
    ]
    with pytest.raises(RuntimeError, match="only available inside a running step"):
        current_step()


async def test_a_sync_attempt_sees_its_identity_in_its_thread() -> None:
    with ThreadPoolExecutor(1) as pool:
        result = await asyncio.create_task(run_step(f"{__name__}:who_sync", payload.encode(["c"]), _info("k/c"), pool))
    assert not isinstance(result, StepError)
    assert payload.decode(result) == "c: k/c"
    with pytest.raises(RuntimeError):
        current_step()
