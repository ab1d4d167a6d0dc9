"""W2 fan-out: one workflow runs ``w2_width`` parallel no-op steps and gathers them; ``w2_runs`` runs, one at a time.

Reports the time per run (start call to result) and the steps per second it implies.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from bench import apps
from bench.stats import latency_summary
from bench.workloads.base import Env
from streams.client import Client

WARMUP = 2


async def run(env: Env) -> dict[str, Any]:
    """W2."""
    width = env.sizes.w2_width
    prefix = env.prefix("w2")
    times: list[float] = []
    async with env.serving(prefix), Client(env.bootstrap, prefix=prefix) as client:
        for i in range(WARMUP + env.sizes.w2_runs):
            began = time.perf_counter()
            handle = await client.start(apps.fanout, width, id=f"fan{i}")
            got = await handle.result(timeout=300)
            if got != width:
                raise AssertionError(f"run fan{i} gathered {got} of {width} steps")
            if i >= WARMUP:
                times.append(1000 * (time.perf_counter() - began))
    mean_s = statistics.fmean(times) / 1000
    return {
        "width": width,
        "runs": env.sizes.w2_runs,
        "warmup": WARMUP,
        "per_run": latency_summary(times),
        "steps_per_s": round(width / mean_s, 1),
    }
