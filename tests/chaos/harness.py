"""A chaos harness: workers in subprocesses running the mixed workflow, faults injected, then the end checks.

The end checks are the runtime's guarantees: every run has exactly one terminal record, no step was executed
again after its result was recorded, every history is well formed and folds to the changelog state
(``steady check``). Sizes come from the environment so that ``make chaos`` can run the long variant:
``STEADY_CHAOS_RUNS`` (default 60) and ``STEADY_CHAOS_SECONDS`` (the longest time to wait for all runs).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from streams.check import check
from streams.client import Client
from streams.settings import Settings
from streams.timeline import format_status, format_timeline
from tests.support import WorkerProcess, completions, steps_recorded_ms

RUNS = int(os.environ.get("STEADY_CHAOS_RUNS", "60"))
PATIENCE = float(os.environ.get("STEADY_CHAOS_SECONDS", "300"))
RECORDED_MARGIN_MS = 1_000
"""A step execution that starts more than this after its result's history record was written is a re-execution.
(The record's timestamp is taken when the transaction writes it, a few milliseconds before it commits.)"""


@dataclass
class Figures:
    """What a chaos run did and what it found."""

    runs: int = 0
    kills: int = 0
    restarts: int = 0
    seconds: float = 0.0
    lost_runs: int = 0
    re_executed_steps: int = 0
    runs_with_several_terminal_records: int = 0
    executions: int = 0
    check_findings: list[str] = field(default_factory=list)
    notes: dict[str, object] = field(default_factory=dict)


class Chaos:
    """Workers, runs, and the end checks of one chaos scenario."""

    def __init__(self, settings: Settings, tmp_path: Path, worker_ids: list[str], *, runs: int = RUNS) -> None:
        self.settings = settings
        self.tmp = tmp_path
        self.runs = runs
        self.journal = tmp_path / "steps.log"
        self.journal.touch()
        self.env = {
            "STEADY_TEST_JOURNAL": str(self.journal),
            "STEADY_SESSION_TIMEOUT_MS": "6000",
            "STEADY_STEP_CONCURRENCY": "16",
        }
        self.workers = {wid: self._process(wid) for wid in worker_ids}
        self.figures = Figures(runs=runs)
        self.began = time.monotonic()

    def _process(self, worker_id: str) -> WorkerProcess:
        settings = self.settings.model_copy(update={"worker_id": worker_id})
        return WorkerProcess(settings, "tests.workflows:app", self.tmp / f"{worker_id}.log", self.env)

    def add_worker(self, worker_id: str) -> WorkerProcess:
        self.workers[worker_id] = self._process(worker_id)
        self.workers[worker_id].start()
        return self.workers[worker_id]

    def start_workers(self) -> None:
        for worker in self.workers.values():
            worker.start()

    def stop_workers(self) -> None:
        for worker in self.workers.values():
            worker.stop()

    async def start_runs(self, client: Client) -> None:
        """Start the runs and send each its event (kept by the run until it waits for it)."""
        self.began = time.monotonic()
        await asyncio.gather(*(client.start("mixed", n, id=f"mixed-{n}") for n in range(self.runs)))
        await asyncio.gather(*(client.signal(f"mixed-{n}", "go", n, event_id=f"go-{n}") for n in range(self.runs)))

    async def done(self) -> int:
        """How many runs have a terminal record."""
        return len({c.workflow_id for c in await completions(self.settings.bootstrap, self.settings.prefix)})

    async def kill_randomly(self, every: tuple[float, float], max_kills: int | None = None) -> None:
        """Kill a random worker with -9 every few seconds and start it again, until cancelled."""
        while max_kills is None or self.figures.kills < max_kills:
            await asyncio.sleep(random.uniform(*every))
            worker = random.choice(list(self.workers.values()))
            if worker.proc is None or worker.proc.poll() is not None:
                continue
            worker.kill()
            self.figures.kills += 1
            await asyncio.sleep(0.5)
            worker.start()
            self.figures.restarts += 1

    async def wait_until_done(self) -> None:
        deadline = time.monotonic() + PATIENCE
        while await self.done() < self.runs:
            if time.monotonic() > deadline:
                try:
                    diagnosis = await self.unfinished()
                except Exception as exc:  # noqa: BLE001  # the count above is the finding; this only explains it
                    diagnosis = f"(no diagnosis: {exc!r})"
                raise AssertionError(
                    f"only {await self.done()} of {self.runs} runs finished in {PATIENCE:.0f}s\n{diagnosis}"
                )
            await asyncio.sleep(1.0)
        self.figures.seconds = round(time.monotonic() - self.began, 1)

    async def unfinished(self, most: int = 5) -> str:
        """What the runs without a terminal record were waiting for, and what their workers complained of."""
        s = self.settings
        ended = {c.workflow_id for c in await completions(s.bootstrap, s.prefix)}
        left = [f"mixed-{n}" for n in range(self.runs) if f"mixed-{n}" not in ended]
        parts = [f"unfinished: {', '.join(left)}"]
        async with Client(s.bootstrap, prefix=s.prefix) as client:
            for run in left[:most]:
                state = await client.status(run)
                parts.append(f"--- {client.handle(run).key}")
                parts.append(format_status(state) if state is not None else "no state snapshot")
                parts.append(format_timeline(await client.history(run)))
        for worker_id, worker in self.workers.items():
            lines = worker.log.read_text(errors="replace").splitlines()
            complaints = [line for line in lines if " WARNING " in line or " ERROR " in line]
            parts.append(f"--- {worker_id}: last warnings and errors of {len(complaints)}")
            parts.extend(complaints[-30:])
        return "\n".join(parts)

    async def verify(self) -> Figures:
        """The end checks; returns the figures (the caller asserts on them)."""
        s = self.settings
        figures = self.figures
        terminal = Counter(c.workflow_id for c in await completions(s.bootstrap, s.prefix))
        figures.lost_runs = sum(1 for n in range(self.runs) if terminal[f"mixed-{n}"] == 0)
        figures.runs_with_several_terminal_records = sum(1 for v in terminal.values() if v > 1)

        recorded_ms = await steps_recorded_ms(s)
        lines = [line.split() for line in self.journal.read_text().splitlines()]
        figures.executions = len(lines)
        late = [
            (key, attempt, start)
            for key, attempt, start in lines
            if key in recorded_ms and int(start) > recorded_ms[key] + RECORDED_MARGIN_MS
        ]
        figures.re_executed_steps = len(late)
        figures.notes["re_executed"] = late[:10]

        report = await check(s)
        figures.check_findings = [f"{f.run_key}: {f.problem}" for f in report.findings]
        return figures


def assert_guarantees(figures: Figures) -> None:
    """The guarantees every chaos scenario must keep."""
    print(f"chaos figures: {figures}")
    assert 0 == figures.lost_runs
    assert 0 == figures.runs_with_several_terminal_records
    assert 0 == figures.re_executed_steps, figures.notes["re_executed"]
    assert [] == figures.check_findings
