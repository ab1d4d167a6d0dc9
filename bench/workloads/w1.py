"""W1 chain: a ~100-byte input, three sequential no-op steps.

(a) saturated throughput: start ``w1_runs`` runs as fast as the client can and wait for every result;
workflows/s and steps/s, repeated ``w1_repeats`` times on a fresh prefix and worker each time.
(a') the same with two worker processes sharing the partitions.
(b) closed-loop latency: one run in flight at a time, ``w1_warmup`` runs then ``w1_latency_runs`` measured,
from the client's start call to having the result.

The first saturated repeat also counts the records and bytes Steady wrote per topic, and the transactions it
committed: the ``limit`` workload replays that traffic on raw Kafka.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

from actors.events import Event, StepCompleted, StepScheduled, WorkflowCompleted, WorkflowStarted
from bench import apps
from bench.kafka_io import census, histories, transaction_markers
from bench.procs import UsageMeter
from bench.stats import latency_summary, median_spread, percentile
from bench.workloads.base import Env, results, start_all
from streams.client import Client

STEPS = 3
PROFILE_KEY = "w1_profile"
"""Where W1 leaves its first pass's census for the ``limit`` workload."""
RATE_KEY = "w1_rate"
"""Where W1 leaves its median workflows/s for the ``limit`` workload."""


async def saturated_pass(env: Env, runs: int, label: str, workers: int = 1) -> dict[str, Any]:
    """One saturated pass of ``runs`` runs on a fresh prefix and workers: rate, CPU and what was written."""
    prefix = env.prefix(label)
    async with contextlib.AsyncExitStack() as stack:
        serving = [
            await stack.enter_async_context(env.serving(prefix, worker_id=f"bench-{n + 1}")) for n in range(workers)
        ]
        client = await stack.enter_async_context(Client(env.bootstrap, prefix=prefix))
        await (await client.start(apps.chain, apps.chain_input(-1), id="warmup")).result(timeout=60)
        markers_before = await transaction_markers(env.bootstrap)
        processes = {"worker" if n == 0 else f"worker-{n + 1}": w.pid for n, w in enumerate(serving)}
        meter = UsageMeter({**processes, "broker": env.broker_pid, "client": os.getpid()})
        meter.start()
        began = time.perf_counter()
        inputs = ((f"r{i}", apps.chain_input(i)) for i in range(runs))
        handles = await start_all(client, apps.chain, inputs, window=env.sizes.start_window)
        started = time.perf_counter() - began
        await results(handles, timeout=600)
        elapsed = time.perf_counter() - began
        cpu = meter.stop()
    transactions = await transaction_markers(env.bootstrap) - markers_before
    written = await census(env.bootstrap, prefix)
    return {
        "runs": runs,
        "elapsed_s": round(elapsed, 3),
        "start_calls_s": round(started, 3),
        "workflows_per_s": runs / elapsed,
        "steps_per_s": runs * STEPS / elapsed,
        "cpu": cpu,
        "cpu_ms_per_workflow": {name: round(1000 * u["cpu_s"] / runs, 2) for name, u in cpu.items()},
        # Counted over the measured runs and the one warm-up run; transactions over the measured runs only.
        "written": {"runs": runs + 1, "transactions": transactions, **{k: v.as_dict() for k, v in written.items()}},
    }


async def closed_loop(env: Env) -> dict[str, Any]:
    """One run in flight at a time: latency from the start call to the result, and where it went."""
    sizes = env.sizes
    prefix = env.prefix("w1b")
    latencies: list[float] = []
    marks: dict[str, tuple[float, float]] = {}
    async with env.serving(prefix), Client(env.bootstrap, prefix=prefix) as client:
        markers_before = await transaction_markers(env.bootstrap)
        for i in range(sizes.w1_warmup + sizes.w1_latency_runs):
            began, wall = time.perf_counter(), time.time()
            handle = await client.start(apps.chain, apps.chain_input(i), id=f"lat{i}")
            await handle.result(timeout=60)
            if i >= sizes.w1_warmup:
                latencies.append(1000 * (time.perf_counter() - began))
                marks[handle.workflow_id] = (1000 * wall, 1000 * (wall + time.perf_counter() - began))
        transactions = await transaction_markers(env.bootstrap) - markers_before
    runs = sizes.w1_warmup + sizes.w1_latency_runs
    return {
        "warmup": sizes.w1_warmup,
        **latency_summary(latencies),
        "transactions_per_run": round(transactions / runs, 2),
        "breakdown_ms": breakdown(await histories(env.bootstrap, prefix), marks),
    }


def breakdown(events: list[tuple[int, Event]], marks: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Median time of each leg of a closed-loop run, from the history records' Kafka timestamps.

    ``marks`` holds each measured run's client start and result times (epoch ms).
    """
    by_run: dict[str, list[tuple[int, Event]]] = {}
    for stamp, event in events:
        if event.workflow_id in marks:
            by_run.setdefault(event.workflow_id, []).append((stamp, event))
    legs: dict[str, list[float]] = {}
    for run_id, run in by_run.items():
        start_ms, result_ms = marks[run_id]
        scheduled = {e.body.seq: t for t, e in run if isinstance(e.body, StepScheduled)}
        for stamp, event in run:
            body = event.body
            if isinstance(body, WorkflowStarted):
                legs.setdefault("start_call_to_started", []).append(stamp - start_ms)
            elif isinstance(body, StepCompleted) and body.seq in scheduled:
                legs.setdefault("step_scheduled_to_completed", []).append(stamp - scheduled[body.seq])
                legs.setdefault("step_run_to_completed", []).append(stamp - body.started_at_ms)
            elif isinstance(body, WorkflowCompleted):
                legs.setdefault("completed_to_client_result", []).append(result_ms - stamp)
    return {leg: round(percentile(values, 50), 1) for leg, values in legs.items()}


async def two_workers(env: Env) -> dict[str, Any]:
    """(a) again with two worker processes sharing the partitions: what a second core gives."""
    passes = [await saturated_pass(env, env.sizes.w1_runs, f"w1w{n}", workers=2) for n in range(env.sizes.w1_repeats)]
    median_pass = sorted(passes, key=lambda p: p["workflows_per_s"])[len(passes) // 2]
    return {
        "workflows_per_s": median_spread([p["workflows_per_s"] for p in passes]),
        "cpu_ms_per_workflow": median_pass["cpu_ms_per_workflow"],
    }


async def run(env: Env) -> dict[str, Any]:
    """W1 (a) and (b)."""
    passes = [await saturated_pass(env, env.sizes.w1_runs, f"w1a{n}") for n in range(env.sizes.w1_repeats)]
    rates = [p["workflows_per_s"] for p in passes]
    env.shared[PROFILE_KEY] = passes[0]["written"]
    env.shared[RATE_KEY] = median_spread(rates)["median"]
    median_pass = sorted(passes, key=lambda p: p["workflows_per_s"])[len(passes) // 2]
    return {
        "runs": env.sizes.w1_runs,
        "repeats": env.sizes.w1_repeats,
        "workflows_per_s": median_spread(rates),
        "steps_per_s": median_spread([r * STEPS for r in rates]),
        "passes": [{k: v for k, v in p.items() if k != "written"} for p in passes],
        "cpu_ms_per_workflow": median_pass["cpu_ms_per_workflow"],
        "two_workers": await two_workers(env),
        "latency": await closed_loop(env),
        "written": passes[0]["written"],
    }
