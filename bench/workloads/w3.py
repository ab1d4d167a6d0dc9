"""W3 sleepers: ``w3_runs`` runs that each do one step and then sleep for an hour.

Measures the time to start them all (client start calls acknowledged) and until the last one parked (its
``SleepStarted`` committed to the history); then, ``w3_settle_s`` seconds after the last one parked, the RSS
of the worker process and the broker JVM, and their CPU use over ``w3_cpu_window_s`` seconds (idle CPU).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from bench import apps
from bench.kafka_io import Tail, event_type
from bench.procs import UsageMeter
from bench.workloads.base import Env, start_all
from streams.client import Client
from streams.topics import Topics


def _disk_mb(path: Path) -> float:
    """Disk space used under ``path`` (allocated blocks: Kafka's preallocated index files are sparse)."""
    total = sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file()) if path.exists() else 0
    return round(total / 2**20, 1)


async def run(env: Env) -> dict[str, Any]:
    """W3."""
    sizes = env.sizes
    n = sizes.w3_runs
    prefix = env.prefix("w3")
    async with env.serving(prefix) as worker:
        pids = {"worker": worker.pid, "broker": env.broker_pid}
        busy = UsageMeter(pids)
        async with (
            Client(env.bootstrap, prefix=prefix) as client,
            Tail(env.bootstrap, Topics.named(prefix).history, event_type) as tail,
        ):
            busy.start()
            began = time.monotonic()
            await start_all(client, apps.sleeper, ((f"s{i}", i) for i in range(n)), window=sizes.start_window)
            started = time.monotonic() - began
            parked_at = await tail.wait_for("SleepStarted", n, timeout=max(600.0, n / 20))
            parked = parked_at - began
            during = busy.stop()
        await asyncio.sleep(max(0.0, parked_at + sizes.w3_settle_s - time.monotonic()))
        idle = UsageMeter(pids)
        idle.start()
        await asyncio.sleep(sizes.w3_cpu_window_s)
        quiet = idle.stop()
        state_mb = _disk_mb(worker.state_dir)
    return {
        "runs": n,
        "start_s": round(started, 2),
        "starts_per_s": round(n / started, 1),
        "parked_s": round(parked, 2),
        "parked_per_s": round(n / parked, 1),
        "rss_mb": {name: u["rss_mb"] for name, u in quiet.items()},
        "idle_cpu_pct": {name: u["cpu_pct"] for name, u in quiet.items()},
        "measured_after_s": sizes.w3_settle_s,
        "cpu_window_s": sizes.w3_cpu_window_s,
        "busy_cpu": during,
        "worker_state_mb": state_mb,
        "broker_data_mb": _disk_mb(env.broker.home / "data"),
    }
