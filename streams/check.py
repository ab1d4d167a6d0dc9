"""The consistency checker (``steady check``): rebuild every run from its history and compare.

For each run it checks that the history is well formed (event numbers 0, 1, 2, ... without gaps; it begins with
``WorkflowStarted``; at most one terminal event, followed only by timer cancellations and dropped results),
that folding the history gives exactly the state in the changelog, and that a finished run has exactly one
terminal record on the completions topic (a running one none). Workers may be running: a difference is checked
once more after a pause and reported only if it stays.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from dataclasses import dataclass, field

from actors.actor import fold
from actors.events import (
    Event,
    StepResultDropped,
    TimerCancelled,
    WorkflowCancelled,
    WorkflowCompleted,
    WorkflowFailed,
    WorkflowStarted,
)
from actors.model import RunState
from schemas.codec import CodecError
from streams.records import COMPLETION, EVENT, STATE
from streams.settings import Settings
from streams.topics import Topics, read_topic

_TERMINAL = (WorkflowCompleted, WorkflowFailed, WorkflowCancelled)
_AFTER_TERMINAL = (TimerCancelled, StepResultDropped)


@dataclass(frozen=True, slots=True)
class Finding:
    """One difference: which run, and what is wrong."""

    run_key: str
    problem: str


@dataclass(slots=True)
class CheckReport:
    """What ``check`` looked at and what it found."""

    runs: int = 0
    events: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether no difference was found."""
        return not self.findings


def _history_problems(events: list[Event]) -> list[str]:
    problems = []
    seqs = [e.seq for e in events]
    if seqs != list(range(len(events))):
        problems.append(f"event numbers are {seqs[:10]}{'...' if len(seqs) > 10 else ''}, not 0, 1, 2, ...")
    if not events or not isinstance(events[0].body, WorkflowStarted):
        problems.append("history does not begin with WorkflowStarted")
    terminal = [i for i, e in enumerate(events) if isinstance(e.body, _TERMINAL)]
    if len(terminal) > 1:
        problems.append(f"{len(terminal)} terminal events in the history")
    if terminal and not all(isinstance(e.body, _AFTER_TERMINAL) for e in events[terminal[0] + 1 :]):
        problems.append("events after the terminal event")
    return problems


def _state_differences(folded: RunState, stored: RunState) -> list[str]:
    return [f.name for f in dataclasses.fields(RunState) if getattr(folded, f.name) != getattr(stored, f.name)]


def compare(
    histories: dict[str, list[Event]], states: dict[str, RunState | None], completions: Counter[str]
) -> list[Finding]:
    """The differences between histories, changelog states and completions (pure)."""
    findings = []
    for key in sorted(set(histories) | {k for k, v in states.items() if v is not None}):
        events = histories.get(key, [])
        for problem in _history_problems(events):
            findings.append(Finding(key, problem))
        stored = states.get(key)
        try:
            folded = fold(None, events) if events else None
        except (ValueError, IndexError, AssertionError) as exc:
            findings.append(Finding(key, f"history cannot be folded: {exc}"))
            continue
        if folded is None and stored is not None:
            findings.append(Finding(key, "state in the changelog but no history"))
        elif folded is not None and stored is None:
            findings.append(Finding(key, "history but no state in the changelog"))
        elif folded is not None and stored is not None and folded != stored:
            fields = ", ".join(_state_differences(folded, stored))
            findings.append(Finding(key, f"changelog state differs from the history in: {fields}"))
        expected = 1 if folded is not None and folded.status.finished else 0
        if completions[key] != expected:
            findings.append(Finding(key, f"{completions[key]} terminal records on completions, expected {expected}"))
    return findings


async def _read(settings: Settings) -> tuple[dict[str, list[Event]], dict[str, RunState | None], Counter[str], int]:
    topics = Topics.named(settings.prefix)
    history, state, completions = await asyncio.gather(
        read_topic(settings.bootstrap, topics.history),
        read_topic(settings.bootstrap, topics.state),
        read_topic(settings.bootstrap, topics.completions),
    )
    runs: dict[str, list[Event]] = {}
    for record in history:
        try:
            event = EVENT.decode(record.value)
        except CodecError:
            continue
        runs.setdefault(event.key, []).append(event)
    states: dict[str, RunState | None] = {}
    for record in state:
        if record.key is not None:
            states[record.key.decode()] = None if record.value is None else STATE.decode(record.value)
    done: Counter[str] = Counter()
    for record in completions:
        done[COMPLETION.decode(record.value).key] += 1
    return runs, states, done, len(history)


async def check(settings: Settings, *, settle: float = 3.0) -> CheckReport:
    """Compare every run's history, changelog state and completions; differences must survive a second look."""
    runs, states, done, count = await _read(settings)
    findings = compare(runs, states, done)
    if findings:
        await asyncio.sleep(settle)  # a live worker may have been between two topics: look again
        runs, states, done, count = await _read(settings)
        suspects = {f.run_key for f in findings}
        findings = [
            f
            for f in compare({k: v for k, v in runs.items() if k in suspects},
                             {k: v for k, v in states.items() if k in suspects}, done)
            if f.run_key in suspects
        ]  # fmt: skip
    return CheckReport(runs=len(set(runs) | set(states)), events=count, findings=findings)
