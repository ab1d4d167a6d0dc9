"""W4 timers: ``w4_runs`` runs each sleeping a random 1-10 s; how late each wake-up is.

Lateness is the Kafka timestamp of the history record of ``TimerFired`` (when the worker applied the firing)
minus the timer's due time. The ``late_ms`` the actor recorded (firing command's time minus due) is shown too.
"""

from __future__ import annotations

import random
from typing import Any

from actors.events import TimerFired
from actors.model import TimerPurpose
from bench import apps
from bench.kafka_io import histories
from bench.stats import latency_summary
from bench.workloads.base import Env, results, start_all
from streams.client import Client

SEED = 4


async def run(env: Env) -> dict[str, Any]:
    """W4."""
    sizes = env.sizes
    rng = random.Random(SEED)
    sleeps = [rng.randint(sizes.w4_min_ms, sizes.w4_max_ms) for _ in range(sizes.w4_runs)]
    prefix = env.prefix("w4")
    async with env.serving(prefix), Client(env.bootstrap, prefix=prefix) as client:
        handles = await start_all(
            client, apps.timer, ((f"t{i}", ms) for i, ms in enumerate(sleeps)), window=sizes.start_window
        )
        await results(handles, timeout=600)
    lateness: list[float] = []
    recorded: list[float] = []
    for stamp, event in await histories(env.bootstrap, prefix):
        body = event.body
        if isinstance(body, TimerFired) and body.timer.purpose is TimerPurpose.SLEEP:
            lateness.append(stamp - body.timer.due_ms)
            recorded.append(body.late_ms)
    if len(lateness) != sizes.w4_runs:
        raise AssertionError(f"{len(lateness)} sleep timers fired for {sizes.w4_runs} runs")
    return {
        "runs": sizes.w4_runs,
        "sleep_ms": [sizes.w4_min_ms, sizes.w4_max_ms],
        "lateness": latency_summary(lateness),
        "late_ms_recorded": latency_summary(recorded),
    }
