"""Readable views of a run for operators: its status and the timeline of its history."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from actors import payload
from actors.events import (
    CancelRequested,
    Event,
    EventAwaited,
    EventDelivered,
    EventReceived,
    SleepStarted,
    StepAttemptFailed,
    StepCompleted,
    StepResultDropped,
    StepScheduled,
    TimerCancelled,
    TimerFired,
    TimerScheduled,
    ValueRecorded,
    WaitTimedOut,
    WorkflowCancelled,
    WorkflowCompleted,
    WorkflowFailed,
    WorkflowStarted,
    WorkflowStuck,
)
from actors.model import EntryKind, RunState
from actors.payload import Payload


def format_time(ms: int) -> str:
    """Epoch milliseconds as a UTC time for people."""
    return _time(ms)


def payload_text(data: Payload, limit: int = 200) -> str:
    """A payload shortened for a line of output."""
    return _short(data, limit)


def _time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _short(data: Payload | None, limit: int = 60) -> str:
    if data is None:
        return ""
    try:
        text = payload.to_text(data)
    except ValueError:
        text = f"<{len(data.data)} bytes {data.content_type}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def timeline(events: list[Event]) -> list[tuple[str, str, str, str, str, str]]:
    """Rows of (time, event, step, attempt, duration, detail) for ``events``."""
    rows = []
    for event in events:
        body = event.body
        step = attempt = duration = detail = ""
        match body:
            case WorkflowStarted():
                detail = f"{body.workflow_type} v{body.version} input={_short(body.input)}"
            case StepScheduled():
                step, attempt, detail = body.name, str(body.attempt), f"{body.function}{_short(body.args)}"
            case StepCompleted():
                step, attempt = body.name, str(body.attempt)
                duration = f"{event.at_ms - body.started_at_ms} ms"
                detail = _short(body.result)
            case StepAttemptFailed():
                step, attempt = body.name, str(body.attempt)
                duration = f"{event.at_ms - body.started_at_ms} ms"
                detail = f"{body.error} ({'final' if body.final else 'will retry'})"
            case StepResultDropped():
                step, attempt, detail = f"#{body.seq}", str(body.attempt), body.reason
            case ValueRecorded():
                detail = f"{body.name} = {_short(body.value)}"
            case WorkflowCompleted():
                detail = _short(body.result)
            case WorkflowFailed():
                detail = str(body.error)
            case WorkflowStuck():
                detail = body.reason
            case SleepStarted():
                step, detail = body.name, f"until {_time(body.until_ms)}"
            case TimerScheduled():
                detail = f"{body.timer.purpose.value} due {_time(body.timer.due_ms)} ({body.timer.id})"
            case TimerFired():
                detail = f"{body.timer.purpose.value} {body.timer.id}, {body.late_ms} ms late"
            case TimerCancelled():
                detail = body.timer_id
            case EventAwaited():
                step = body.name
                detail = f"timeout {body.timeout_ms} ms" if body.timeout_ms else "no timeout"
            case EventReceived():
                step, detail = body.name, f"kept: {_short(body.payload)}"
            case EventDelivered():
                step, detail = body.name, _short(body.payload)
            case WaitTimedOut():
                step = body.name
            case CancelRequested() | WorkflowCancelled():
                detail = body.reason
        rows.append((_time(event.at_ms), type(body).__name__, step, attempt, duration, detail))
    return rows


def format_table(rows: Sequence[tuple[str, ...]], header: tuple[str, ...]) -> str:
    """A plain-text table."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)


def format_timeline(events: list[Event]) -> str:
    """The history of a run as a table."""
    return format_table(timeline(events), ("time", "event", "step", "attempt", "duration", "detail"))


def format_status(state: RunState) -> str:
    """A run's status in a few lines."""
    lines = [
        f"run       {state.key}",
        f"workflow  {state.workflow_type} v{state.version}",
        f"status    {state.status.value}",
        f"started   {_time(state.started_at_ms)}",
        f"updated   {_time(state.updated_at_ms)}",
        f"history   {state.history_len} events, {len(state.journal)} journal entries",
    ]
    pending = state.pending_steps()
    if pending:
        lines.append("pending   " + ", ".join(f"{e.name} (attempt {e.attempt})" for e in pending))
    steps = [e for e in state.journal if e.kind is EntryKind.STEP]
    if steps:
        lines.append(f"steps     {sum(e.state.value == 'completed' for e in steps)}/{len(steps)} completed")
    for timer in sorted(state.timers, key=lambda t: t.due_ms):
        lines.append(f"timer     {timer.purpose.value} {timer.id} due {_time(timer.due_ms)}")
    wake = state.next_wake_up_ms()
    if wake is not None:
        lines.append(f"wakes     {_time(wake)}")
    if state.result is not None:
        lines.append(f"result    {_short(state.result, 200)}")
    if state.error is not None:
        lines.append(f"error     {state.error}")
    if state.reason:
        lines.append(f"reason    {state.reason}")
    return "\n".join(lines)
