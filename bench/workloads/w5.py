"""W5 recovery: ``w5_runs`` runs of a five-step workflow in flight; the worker is killed with -9 mid-way.

Each step appends its idempotency key to a journal file. Once ``w5_kill_fraction`` of all steps are recorded
in the history, the worker gets SIGKILL, the history committed so far is read (the steps recorded before
the kill), and a new worker starts with the same ``--worker-id`` and state folder. Reports the time until every
run completed, how many steps recorded before the kill ran again (must be 0), how many in-flight steps ran
twice (allowed: at least once), and the terminal records per run (must be exactly 1).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from actors.events import Event, StepCompleted, StepScheduled
from bench import apps
from bench.kafka_io import Tail, completions, event_type, histories
from bench.workloads.base import Env, results, start_all
from streams.client import Client
from streams.topics import Topics


def recorded_keys(events: list[tuple[int, Event]]) -> set[str]:
    """Idempotency keys of the steps whose results the history recorded."""
    names: dict[tuple[str, int], tuple[str, int]] = {}
    out: set[str] = set()
    for _, event in events:
        body = event.body
        if isinstance(body, StepScheduled):
            names[(event.workflow_id, body.seq)] = (body.name, body.occurrence)
        elif isinstance(body, StepCompleted):
            name, occurrence = names[(event.workflow_id, body.seq)]
            out.add(f"{event.tenant}/{event.workflow_id}/{name}/{occurrence}")
    return out


async def run(env: Env) -> dict[str, Any]:
    """W5."""
    sizes = env.sizes
    n = sizes.w5_runs
    total_steps = n * apps.W5_STEPS
    prefix = env.prefix("w5")
    journal = env.work / f"{prefix.strip('.')}-journal.txt"
    journal.write_text("")
    worker_env = {apps.JOURNAL_ENV: str(journal), apps.STEP_SLEEP_ENV: str(sizes.w5_step_sleep_s)}
    first = env.worker(prefix, worker_id="bench-w5", env=worker_env)
    second = env.worker(prefix, worker_id="bench-w5", env=worker_env)
    try:
        first.start()
        await first.ready()
        async with (
            Client(env.bootstrap, prefix=prefix) as client,
            Tail(env.bootstrap, Topics.named(prefix).history, event_type) as tail,
        ):
            handles = await start_all(
                client, apps.journaled, ((f"j{i}", i) for i in range(n)), window=sizes.start_window
            )
            await tail.wait_for("StepCompleted", int(total_steps * sizes.w5_kill_fraction), timeout=600)
            first.kill()
            killed = time.monotonic()
            before = recorded_keys(await histories(env.bootstrap, prefix))
            second.start()
            restarted = time.monotonic()
            outputs = await results(handles, timeout=600)
            done = time.monotonic()
    finally:
        first.stop()
        second.stop()
    expected = [[f"{i}-{s}" for s in range(1, apps.W5_STEPS + 1)] for i in range(n)]
    executed = Counter(line.split()[0] for line in journal.read_text().splitlines() if line)
    terminal = Counter(c.workflow_id for c in await completions(env.bootstrap, prefix))
    return {
        "runs": n,
        "steps": total_steps,
        "recorded_before_kill": len(before),
        "recovery_s": round(done - restarted, 2),
        "kill_to_all_done_s": round(done - killed, 2),
        "finished_steps_reexecuted": sum(executed[k] - 1 for k in before if executed[k] > 1),
        "in_flight_steps_run_twice": sum(n - 1 for k, n in executed.items() if k not in before and n > 1),
        "executions": sum(executed.values()),
        "steps_never_executed": total_steps - len(executed),
        "runs_with_one_terminal_record": sum(1 for i in range(n) if terminal[f"j{i}"] == 1),
        "runs_with_several_terminal_records": sum(1 for count in terminal.values() if count > 1),
        "results_correct": outputs == expected,
        "session_timeout_ms": env.worker_settings()["session_timeout_ms"],
    }
