"""The workflows the benchmark's worker serves (``--app bench.apps:app``).

Steps are module-level functions so that the worker subprocess imports them by name. Sizes follow
``BENCHMARKS.md``: a ~100-byte JSON input, no-op steps returning a ~50-byte dict.
"""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta
from typing import Any

from actors import Context, Registry, Workflow, current_step

JOURNAL_ENV = "BENCH_JOURNAL"
"""W5: the file every ``journaled`` step appends its idempotency key to."""
STEP_SLEEP_ENV = "BENCH_STEP_SLEEP_S"
"""W5: how long each ``journaled`` step takes, in seconds."""


def chain_input(i: int) -> dict[str, Any]:
    """A ~100-byte JSON input for W1 run ``i``."""
    return {"order_id": f"ord-{i:08d}", "customer": "cust-0042", "amount_cents": 1999, "note": "x" * 24}


async def noop(data: Any) -> dict[str, Any]:
    """A no-op step returning a ~50-byte dict."""
    return {"ok": True, "step": "noop", "pad": "y" * 22}


async def journal(label: str) -> str:
    """Append this step's idempotency key to ``$BENCH_JOURNAL``, then wait ``$BENCH_STEP_SLEEP_S``."""
    info = current_step()
    with open(os.environ[JOURNAL_ENV], "a") as f:  # noqa: ASYNC230 - a tiny append; the kernel has it at once
        f.write(f"{info.idempotency_key} {info.attempt}\n")
    await asyncio.sleep(float(os.environ.get(STEP_SLEEP_ENV, "0.02")))
    return label


chain = Workflow("bench_chain")
"""W1: three sequential no-op steps."""


@chain.main
async def run_chain(ctx: Context, inp: dict[str, Any]) -> dict[str, Any]:
    """Run ``s1``, ``s2`` and ``s3`` one after the other; return the last output."""
    a = await ctx.step("s1", noop, inp)
    b = await ctx.step("s2", noop, a)
    return await ctx.step("s3", noop, b)


fanout = Workflow("bench_fanout")
"""W2: ``width`` parallel no-op steps, gathered."""


@fanout.main
async def run_fanout(ctx: Context, width: int) -> int:
    """Run ``width`` no-op steps at once and count their results."""
    results = await asyncio.gather(*(ctx.step(f"p{i}", noop, i) for i in range(width)))
    return len(results)


sleeper = Workflow("bench_sleeper")
"""W3: one step, then a durable sleep of an hour."""


@sleeper.main
async def run_sleeper(ctx: Context, i: int) -> int:
    """Do one step, then park for an hour."""
    await ctx.step("before", noop, i)
    await ctx.sleep("park", timedelta(hours=1))
    return i


timer = Workflow("bench_timer")
"""W4: a durable sleep of ``ms`` milliseconds."""


@timer.main
async def run_timer(ctx: Context, ms: int) -> int:
    """Sleep ``ms`` milliseconds durably."""
    await ctx.sleep("nap", timedelta(milliseconds=ms))
    return ms


journaled = Workflow("bench_journaled")
"""W5: five sequential steps that each record their execution in a file."""

W5_STEPS = 5


@journaled.main
async def run_journaled(ctx: Context, i: int) -> list[str]:
    """Run five journaling steps in a row."""
    return [await ctx.step(f"j{n}", journal, f"{i}-{n}") for n in range(1, W5_STEPS + 1)]


app = Registry([chain, fanout, sleeper, timer, journaled])
"""What the benchmark's worker serves."""
