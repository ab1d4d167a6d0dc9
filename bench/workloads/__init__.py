"""The workloads of ``BENCHMARKS.md``, by name, in the order a session runs them.

Each is ``async def run(env: Env) -> dict`` returning its metrics; ``limit`` runs right after W1 so that it
replays the traffic W1 measured under the same setting.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from bench.workloads import limit, w1, w2, w3, w4, w5
from bench.workloads.base import Env

Workload = Callable[[Env], Coroutine[Any, Any, dict[str, Any]]]

WORKLOADS: dict[str, Workload] = {
    "W1": w1.run,
    "limit": limit.run,
    "W2": w2.run,
    "W3": w3.run,
    "W4": w4.run,
    "W5": w5.run,
}
"""Every workload, in running order."""

SUMMARY = {
    "W1": "chain of 3 no-op steps: saturated throughput and closed-loop latency",
    "limit": "raw aiokafka produce->consume of W1's records, same producer settings",
    "W2": "fan-out of 100 parallel no-op steps per run",
    "W3": "runs that do one step then sleep an hour: start time, idle RSS and CPU",
    "W4": "runs sleeping 1-10 s: wake-up lateness",
    "W5": "kill -9 of the worker mid-way: recovery time, re-executed steps, terminal records",
}


def select(names: str | None) -> list[str]:
    """The workloads named in ``--only`` (comma-separated, any case), in running order; all when ``None``."""
    if not names:
        return list(WORKLOADS)
    wanted = {n.strip().lower() for n in names.split(",") if n.strip()}
    unknown = wanted - {w.lower() for w in WORKLOADS}
    if unknown:
        raise ValueError(f"unknown workload(s) {', '.join(sorted(unknown))}; choose from {', '.join(WORKLOADS)}")
    return [w for w in WORKLOADS if w.lower() in wanted]
