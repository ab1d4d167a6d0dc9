"""The actor of one workflow run: ``decide`` what a command means, ``evolve`` the state by each event.

Both are pure: no Kafka, no disk, no clock (time arrives on the command). :class:`Actor` joins them with the
replay executor, which runs the user's workflow code when a result arrives.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, assert_never

from actors import payload
from actors.commands import (
    CancelWorkflow,
    Command,
    CompleteStep,
    FailStep,
    FireTimer,
    SendEvent,
    StartWorkflow,
)
from actors.errors import ErrorInfo
from actors.events import (
    CancelRequested,
    Event,
    EventAwaited,
    EventBody,
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
from actors.frozen import replace
from actors.model import (
    RECENT_EVENT_IDS,
    BufferedEvent,
    EntryKind,
    EntryState,
    JournalEntry,
    RunState,
    RunStatus,
    Timer,
    TimerPurpose,
)
from actors.replay import Activation
from actors.workflow import Registry, Workflow


@dataclass(frozen=True, slots=True)
class Decision:
    """What a command means for a run.

    Attributes:
        events: what happened, to append to the history and fold into the state.
        activate: whether the workflow code should run next (a result it may be waiting for arrived).
        rejected: why the command cannot apply to any run (it then goes to the dead-letter topic).
    """

    events: list[EventBody] = field(default_factory=list)
    activate: bool = False
    rejected: str = ""


def _step_entry(state: RunState, seq: int) -> JournalEntry | None:
    if 0 <= seq < len(state.journal) and state.journal[seq].kind is EntryKind.STEP:
        return state.journal[seq]
    return None


def _check_result(state: RunState, seq: int, attempt: int) -> tuple[JournalEntry | None, str]:
    if state.status.finished:
        return None, f"the run is {state.status.value}"
    entry = _step_entry(state, seq)
    if entry is None:
        return None, f"no step at call {seq}"
    if entry.state is not EntryState.SCHEDULED:
        return None, f"step {entry.name!r} is already {entry.state.value}"
    if entry.attempt != attempt:
        return None, f"attempt {attempt} of step {entry.name!r} is not current (attempt {entry.attempt} is)"
    return entry, ""


def _failure(
    entry: JournalEntry, attempt: int, error: ErrorInfo, started: int, at_ms: int, *, retry_after: int = 0
) -> Decision:
    """What a failed attempt means: a retry now, a retry after a backoff timer, or the step's final failure."""
    assert entry.options is not None
    assert entry.args is not None
    failed = StepAttemptFailed(entry.seq, entry.name, attempt, error, started, final=False)
    delay = entry.options.retry_delay_ms(attempt, error, retry_after)
    if delay is None:
        return Decision([replace(failed, final=True)], activate=True)
    if delay == 0:
        retry = StepScheduled(
            entry.seq, entry.name, entry.occurrence, attempt + 1, entry.function, entry.args, entry.options
        )
        return Decision([failed, retry])
    return Decision([failed, TimerScheduled(Timer.of(TimerPurpose.RETRY, entry.seq, attempt + 1, at_ms + delay))])


def _fire(state: RunState, timer: Timer, at_ms: int) -> Decision:
    fired = TimerFired(timer, late_ms=max(0, at_ms - timer.due_ms))
    match timer.purpose:
        case TimerPurpose.SLEEP:
            return Decision([fired], activate=True)
        case TimerPurpose.RETRY:
            entry = state.journal[timer.seq]
            assert entry.options is not None
            assert entry.args is not None
            retry = StepScheduled(
                entry.seq, entry.name, entry.occurrence, timer.attempt, entry.function, entry.args, entry.options
            )
            return Decision([fired, retry])
        case TimerPurpose.STEP_TIMEOUT:
            late, _ = _check_result(state, timer.seq, timer.attempt)
            if late is None or late.options is None:
                return Decision([fired])
            error = ErrorInfo(
                "StepTimeout",
                f"attempt {timer.attempt} of step {late.name!r} did not report within {late.options.timeout_ms} ms",
            )
            then = _failure(late, timer.attempt, error, late.scheduled_at_ms, at_ms)
            return Decision([fired, *then.events], activate=then.activate)
        case TimerPurpose.EVENT_TIMEOUT:
            wait = state.journal[timer.seq]
            if wait.state is not EntryState.SCHEDULED:
                return Decision([fired])
            return Decision([fired, WaitTimedOut(wait.seq, wait.name)], activate=True)
        case TimerPurpose.WORKFLOW_TIMEOUT:
            limit = timer.due_ms - state.started_at_ms
            error = ErrorInfo("WorkflowTimeout", f"the run did not finish within {limit} ms", retryable=False)
            return Decision([fired, WorkflowFailed(error)])
        case _:
            assert_never(timer.purpose)


def decide(state: RunState | None, command: Command) -> Decision:
    """What ``command`` means for the run in ``state`` (``None``: no such run yet)."""
    body = command.body
    if state is None:
        if isinstance(body, StartWorkflow):
            event = WorkflowStarted(body.workflow_type, body.version, body.input, command.id)
            return Decision([event], activate=True)
        return Decision(rejected=f"no run {command.key} exists for {type(body).__name__}")
    match body:
        case StartWorkflow():
            return Decision()  # the run exists: starting it again changes nothing
        case CompleteStep(seq=seq, attempt=attempt, result=result, started_at_ms=started):
            entry, reason = _check_result(state, seq, attempt)
            if entry is None:
                return Decision([StepResultDropped(seq, attempt, reason)])
            return Decision([StepCompleted(seq, entry.name, attempt, result, started)], activate=True)
        case FailStep(seq=seq, attempt=attempt, error=error, started_at_ms=started, retry_after_ms=retry_after):
            entry, reason = _check_result(state, seq, attempt)
            if entry is None:
                return Decision([StepResultDropped(seq, attempt, reason)])
            return _failure(entry, attempt, error, started, command.at_ms, retry_after=retry_after)
        case FireTimer(timer_id=timer_id):
            timer = state.timer(timer_id)
            if timer is None or state.status.finished:
                return Decision()  # its purpose is gone (the step reported, the run ended): nothing changes
            return _fire(state, timer, command.at_ms)
        case SendEvent(name=name, payload=data):
            if state.status.finished:
                return Decision(rejected=f"run {state.key} is {state.status.value}; event {name!r} has no reader")
            if command.id in state.event_ids:
                return Decision()  # a resent event
            wait = state.waiting_for(name)
            if wait is None:
                return Decision([EventReceived(command.id, name, data)])
            return Decision([EventDelivered(wait.seq, name, command.id, data)], activate=True)
        case CancelWorkflow(reason=reason):
            if state.status.finished or state.cancel_reason:
                return Decision()  # already ended, or already cancelling
            return Decision([CancelRequested(reason or "cancelled")], activate=True)
        case _:
            assert_never(body)


def follow_ups(state: RunState, body: EventBody, at_ms: int) -> list[EventBody]:
    """Events that follow from ``body`` by rule: a step attempt's timeout timer, cancelling stale timers."""
    match body:
        case StepScheduled(options=options) if options.timeout_ms > 0:
            timer = Timer.of(TimerPurpose.STEP_TIMEOUT, body.seq, body.attempt, at_ms + options.timeout_ms)
            return [TimerScheduled(timer)]
        case StepCompleted() | StepAttemptFailed():
            stale = Timer.of(TimerPurpose.STEP_TIMEOUT, body.seq, body.attempt, 0).id
            return [TimerCancelled(stale)] if state.timer(stale) is not None else []
        case WorkflowCompleted() | WorkflowFailed() | WorkflowCancelled():
            return [TimerCancelled(t.id) for t in state.timers]
        case EventDelivered():
            stale = Timer.of(TimerPurpose.EVENT_TIMEOUT, body.seq, 1, 0).id
            return [TimerCancelled(stale)] if state.timer(stale) is not None else []
        case CancelRequested():
            open_calls = {e.seq for e in state.journal if e.state is EntryState.SCHEDULED}
            return [
                TimerCancelled(t.id)
                for t in state.timers
                if t.seq in open_calls and t.purpose is not TimerPurpose.WORKFLOW_TIMEOUT
            ]
        case _:
            return []


def _set_entry(state: RunState, entry: JournalEntry) -> tuple[JournalEntry, ...]:
    journal = state.journal
    if entry.seq == len(journal):
        return (*journal, entry)
    return (*journal[: entry.seq], entry, *journal[entry.seq + 1 :])


def evolve(state: RunState | None, event: Event) -> RunState:
    """The run's state after ``event``. Folding a run's whole history gives its state."""
    body = event.body
    if state is None:
        if not isinstance(body, WorkflowStarted):
            raise ValueError(f"a run's history must begin with WorkflowStarted, not {type(body).__name__}")
        return RunState(
            tenant=event.tenant,
            workflow_id=event.workflow_id,
            workflow_type=body.workflow_type,
            version=body.version,
            status=RunStatus.RUNNING,
            input=body.input,
            start_id=body.start_id,
            started_at_ms=event.at_ms,
            updated_at_ms=event.at_ms,
            history_len=1,
        )
    changes = _changes(state, body, event.at_ms)
    return replace(state, history_len=state.history_len + 1, updated_at_ms=event.at_ms, **changes)


def _changes(state: RunState, body: EventBody, at_ms: int) -> dict[str, Any]:
    """The fields of ``state`` that ``body`` changes (one copy of the state per event, made by the caller)."""
    match body:
        case WorkflowStarted():
            raise ValueError(f"run {state.key} started twice in its history")
        case StepScheduled():
            entry = _step_entry(state, body.seq)
            if entry is None:
                entry = JournalEntry(
                    seq=body.seq,
                    kind=EntryKind.STEP,
                    name=body.name,
                    state=EntryState.SCHEDULED,
                    occurrence=body.occurrence,
                    function=body.function,
                    args=body.args,
                    options=body.options,
                )
            entry = replace(entry, state=EntryState.SCHEDULED, attempt=body.attempt, scheduled_at_ms=at_ms)
            return {"journal": _set_entry(state, entry)}
        case StepCompleted():
            entry = state.journal[body.seq]
            resolution = state.resolutions + 1
            # Arguments and policy only serve further attempts; the history keeps them. The snapshot stays small.
            done = replace(
                entry,
                state=EntryState.COMPLETED,
                result=body.result,
                args=None,
                options=None,
                finished_at_ms=at_ms,
                resolution=resolution,
            )
            return {"journal": _set_entry(state, done), "resolutions": resolution}
        case StepAttemptFailed():
            entry = replace(state.journal[body.seq], error=body.error)
            if not body.final:
                # The next attempt is now the current one, even while it waits for its backoff timer.
                entry = replace(entry, attempt=body.attempt + 1)
                return {"journal": _set_entry(state, entry)}
            resolution = state.resolutions + 1
            entry = replace(
                entry,
                state=EntryState.FAILED,
                args=None,
                options=None,
                finished_at_ms=at_ms,
                resolution=resolution,
            )
            return {"journal": _set_entry(state, entry), "resolutions": resolution}
        case StepResultDropped():
            return {}
        case ValueRecorded():
            entry = JournalEntry(
                seq=body.seq, kind=EntryKind.VALUE, name=body.name, state=EntryState.COMPLETED, args=body.value
            )
            return {"journal": _set_entry(state, entry)}
        case WorkflowCompleted():
            return {"status": RunStatus.COMPLETED, "result": body.result}
        case WorkflowFailed():
            return {"status": RunStatus.FAILED, "error": body.error}
        case WorkflowStuck():
            return {"status": RunStatus.STUCK, "reason": body.reason}
        case SleepStarted():
            entry = JournalEntry(
                seq=body.seq,
                kind=EntryKind.SLEEP,
                name=body.name,
                state=EntryState.SCHEDULED,
                args=payload.encode(body.until_ms),
                scheduled_at_ms=at_ms,
            )
            return {"journal": _set_entry(state, entry)}
        case TimerScheduled():
            return {"timers": (*state.timers, body.timer)}
        case TimerCancelled():
            return {"timers": tuple(t for t in state.timers if t.id != body.timer_id)}
        case EventAwaited() | EventReceived() | EventDelivered() | WaitTimedOut() | CancelRequested():
            return _outside_changes(state, body, at_ms)
        case WorkflowCancelled():
            error = ErrorInfo("Cancelled", body.reason, retryable=False)
            return {"status": RunStatus.CANCELLED, "error": error}
        case TimerFired():
            timers = tuple(t for t in state.timers if t.id != body.timer.id)
            if body.timer.purpose is not TimerPurpose.SLEEP:
                return {"timers": timers}
            resolution = state.resolutions + 1
            woke = replace(
                state.journal[body.timer.seq],
                state=EntryState.COMPLETED,
                finished_at_ms=at_ms,
                resolution=resolution,
            )
            return {"timers": timers, "journal": _set_entry(state, woke), "resolutions": resolution}
        case _:
            assert_never(body)


def _outside_changes(
    state: RunState,
    body: EventAwaited | EventReceived | EventDelivered | WaitTimedOut | CancelRequested,
    at_ms: int,
) -> dict[str, Any]:
    """What comes from outside the workflow changes: awaited events and cancellation."""
    match body:
        case EventAwaited():
            entry = JournalEntry(
                seq=body.seq,
                kind=EntryKind.EVENT,
                name=body.name,
                state=EntryState.SCHEDULED,
                args=payload.encode(body.timeout_ms),
                scheduled_at_ms=at_ms,
            )
            return {"journal": _set_entry(state, entry)}
        case EventReceived():
            buffered = BufferedEvent(body.id, body.name, body.payload, at_ms)
            return {"events": (*state.events, buffered), "event_ids": _remember(state, body.id)}
        case EventDelivered():
            resolution = state.resolutions + 1
            answered = replace(
                state.journal[body.seq],
                state=EntryState.COMPLETED,
                result=body.payload,
                finished_at_ms=at_ms,
                resolution=resolution,
            )
            return {
                "journal": _set_entry(state, answered),
                "resolutions": resolution,
                "events": tuple(e for e in state.events if e.id != body.id),
                "event_ids": _remember(state, body.id),
            }
        case WaitTimedOut():
            resolution = state.resolutions + 1
            error = ErrorInfo("EventTimeout", f"no event {body.name!r} in time", retryable=False)
            timed_out = replace(
                state.journal[body.seq],
                state=EntryState.FAILED,
                error=error,
                finished_at_ms=at_ms,
                resolution=resolution,
            )
            return {"journal": _set_entry(state, timed_out), "resolutions": resolution}
        case CancelRequested():
            # Every open call fails with Cancelled in one round: the workflow sees it at its current await.
            resolution = state.resolutions + 1
            error = ErrorInfo("Cancelled", body.reason, retryable=False)
            journal = tuple(
                replace(e, state=EntryState.FAILED, error=error, finished_at_ms=at_ms, resolution=resolution)
                if e.state is EntryState.SCHEDULED
                else e
                for e in state.journal
            )
            return {"journal": journal, "resolutions": resolution, "cancel_reason": body.reason}
        case _:
            assert_never(body)


def _buffered_delivery(state: RunState) -> list[EventBody]:
    """The kept event that answers the earliest open wait, if any.

    One at a time: every result is one activation of the workflow (one replay round), also when several kept
    events could answer waits the workflow opened together.
    """
    for entry in state.journal:
        if entry.kind is EntryKind.EVENT and entry.state is EntryState.SCHEDULED:
            kept = next((e for e in state.events if e.name == entry.name), None)
            if kept is not None:
                return [EventDelivered(entry.seq, entry.name, kept.id, kept.payload)]
    return []


def _remember(state: RunState, event_id: str) -> tuple[str, ...]:
    if event_id in state.event_ids:
        return state.event_ids
    return (*state.event_ids, event_id)[-RECENT_EVENT_IDS:]


def fold(state: RunState | None, events: list[Event]) -> RunState | None:
    """Fold ``events`` into ``state``, in order."""
    for event in events:
        state = evolve(state, event)
    return state


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of handling one command.

    Attributes:
        state: the run's state afterwards (``None`` if there is still no run).
        events: the new history events, numbered and stamped.
        rejected: why the command applies to no run (for the dead-letter topic); empty otherwise.
    """

    state: RunState | None
    events: list[Event]
    rejected: str = ""


SUSPENDED_RUNS = 2_000
"""Suspended workflow coroutines an actor keeps by default (see :class:`Actor`)."""


@dataclass(slots=True)
class _Suspended:
    activation: Activation
    at: RunState
    """The state the activation has seen all of: it is valid for that very object, not for an equal one."""


class Actor:
    """Handles commands for runs of the workflows in ``registry``.

    It keeps the suspended coroutines of up to ``suspended_runs`` runs that wait on steps only, most recently
    active first: when such a run's next result arrives, the workflow resumes where it awaits instead of being
    replayed from its start. A kept coroutine is used only for the very state object it last produced, so any
    state that comes from elsewhere (a restore, a rolled-back transaction, another worker) is replayed in full.
    Runs that sleep or wait for an outside event keep nothing in memory.
    """

    def __init__(self, registry: Registry, *, suspended_runs: int = SUSPENDED_RUNS) -> None:
        self.registry = registry
        self._suspended_runs = suspended_runs
        self._suspended: OrderedDict[str, _Suspended] = OrderedDict()

    def forget(self) -> None:
        """Drop every kept coroutine (their runs replay on their next activation)."""
        while self._suspended:
            _, kept = self._suspended.popitem()
            kept.activation.close()

    @staticmethod
    def answers(state: RunState | None, command: Command) -> bool:
        """Whether ``command`` is a step result or timer firing that the run in ``state`` takes now.

        True for the outcome of a step's current attempt and for the firing of one of the run's live timers;
        False for anything else, including an outcome or firing that would be dropped as stale or duplicate.
        """
        if state is None or not isinstance(command.body, CompleteStep | FailStep | FireTimer):
            return False
        decision = decide(state, command)
        return bool(decision.events) and not isinstance(decision.events[0], StepResultDropped)

    def handle(self, state: RunState | None, command: Command) -> Outcome:
        """Apply ``command`` to the run in ``state``; run the workflow code when a result it awaits arrived."""
        body = command.body
        start_timers: list[EventBody] = []
        if state is None and isinstance(body, StartWorkflow):
            started = self.registry.get(body.workflow_type, body.version)
            if started is None:
                wanted = f"{body.workflow_type!r}" + (f" version {body.version!r}" if body.version else "")
                return Outcome(None, [], rejected=f"unknown workflow type {wanted}")
            command = replace(command, body=replace(body, version=started.version))
            if started.timeout is not None:
                due = command.at_ms + int(started.timeout.total_seconds() * 1000)
                start_timers.append(TimerScheduled(Timer.of(TimerPurpose.WORKFLOW_TIMEOUT, -1, 0, due)))
        kept = self._suspended.pop(command.key, None)
        if kept is not None and kept.at is not state:
            kept.activation.close()
            kept = None
        decision = decide(state, command)
        if decision.rejected:
            self._keep(command.key, kept, state)
            return Outcome(state, [], rejected=decision.rejected)
        events: list[Event] = []
        state = self._append(state, command, [*decision.events, *start_timers], events)
        again = decision.activate
        while again and state is not None and state.status is RunStatus.RUNNING:
            workflow = self.registry.get(state.workflow_type, state.version)
            if workflow is None:
                reason = f"workflow {state.workflow_type!r} version {state.version!r} is not registered on this worker"
                bodies: list[EventBody] = [WorkflowStuck(reason)]
            else:
                kept, bodies = self._activate(kept, state, workflow, command.at_ms)
            state = self._append(state, command, bodies, events)
            # An event kept in the state may answer a wait the workflow just opened: run it again.
            deliveries = _buffered_delivery(state) if state is not None else []
            state = self._append(state, command, deliveries, events)
            again = bool(deliveries)
        self._keep(command.key, kept, state)
        return Outcome(state, events)

    @staticmethod
    def _activate(
        kept: _Suspended | None, state: RunState, workflow: Workflow, now_ms: int
    ) -> tuple[_Suspended, list[EventBody]]:
        """Resume the kept coroutine if it can take ``state``; otherwise replay from the start."""
        if kept is not None and kept.activation.workflow is workflow:
            bodies = kept.activation.resume(state, now_ms)
            if bodies is not None:
                return kept, bodies
        if kept is not None:
            kept.activation.close()
        activation = Activation(state, workflow, now_ms)
        return _Suspended(activation, state), activation.run(state)

    def _keep(self, key: str, kept: _Suspended | None, state: RunState | None) -> None:
        """Keep the run's coroutine for ``state`` if the run waits on steps only; close it otherwise."""
        if kept is None:
            return
        if (
            self._suspended_runs > 0
            and state is not None
            and state.status is RunStatus.RUNNING
            and kept.activation.suspended
            and all(e.kind is EntryKind.STEP for e in state.journal if e.state is EntryState.SCHEDULED)
        ):
            kept.at = state
            self._suspended[key] = kept
            if len(self._suspended) > self._suspended_runs:
                _, oldest = self._suspended.popitem(last=False)
                oldest.activation.close()
        else:
            kept.activation.close()

    @staticmethod
    def _append(state: RunState | None, command: Command, bodies: list[EventBody], out: list[Event]) -> RunState | None:
        queue = list(bodies)
        while queue:
            body = queue.pop(0)
            seq = state.history_len if state is not None else 0
            event = Event(command.tenant, command.workflow_id, seq, command.at_ms, body)
            before = state
            state = evolve(state, event)
            out.append(event)
            if before is not None:
                queue[0:0] = follow_ups(before, body, command.at_ms)
        return state
