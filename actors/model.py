"""The state of one workflow run: what the actor knows, rebuilt from its changelog or its history."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from actors.errors import ErrorInfo
from actors.payload import Payload
from actors.policy import StepOptions

DEFAULT_TENANT = "default"


def run_key(tenant: str, workflow_id: str) -> str:
    """The key of a run on every topic: ``tenant/workflow_id``."""
    return f"{tenant}/{workflow_id}"


class RunStatus(StrEnum):
    """Where a run is in its life."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    STUCK = "stuck"
    """Parked: its code diverged from its journal or cannot run here; nothing else is touched."""

    @property
    def finished(self) -> bool:
        """Whether the run has its terminal record."""
        return self in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)


class EntryKind(StrEnum):
    """What a journal entry records."""

    STEP = "step"
    VALUE = "value"
    """A value the workflow read from the outside world (``ctx.now()``), recorded so replay sees it again."""
    SLEEP = "sleep"
    """A durable sleep (``ctx.sleep``/``ctx.sleep_until``); ``args`` holds the wake-up time in epoch ms."""
    EVENT = "event"
    """A wait for an outside event (``ctx.wait_for_event``); ``result`` holds the event's payload."""


class TimerPurpose(StrEnum):
    """Why a timer was set."""

    SLEEP = "sleep"
    """Wake a sleeping workflow."""
    RETRY = "retry"
    """Schedule the next attempt of a failed step after its backoff."""
    STEP_TIMEOUT = "step_timeout"
    """Fail a step attempt that did not report in time."""
    WORKFLOW_TIMEOUT = "workflow_timeout"
    """Fail a run that did not finish in time."""
    EVENT_TIMEOUT = "event_timeout"
    """End a wait for an event that did not come in time."""


@dataclass(frozen=True, slots=True)
class Timer:
    """A pending timer of a run. ``id`` is unique within the run; a firing whose id is gone changes nothing.

    Attributes:
        id: ``purpose/seq/attempt``.
        purpose: why it was set.
        seq: the journal entry it is about (-1 for the workflow timeout).
        attempt: the step attempt it is about (0 when none).
        due_ms: when it fires, epoch milliseconds.
    """

    id: str
    purpose: TimerPurpose
    seq: int
    attempt: int
    due_ms: int

    @classmethod
    def of(cls, purpose: TimerPurpose, seq: int, attempt: int, due_ms: int) -> Timer:
        """A timer with its canonical id."""
        return cls(f"{purpose.value}/{seq}/{attempt}", purpose, seq, attempt, due_ms)


class EntryState(StrEnum):
    """Where a journal entry's work stands."""

    SCHEDULED = "scheduled"
    COMPLETED = "completed"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class BufferedEvent:
    """An event that arrived before the workflow waited for it; delivered in arrival order when it does."""

    id: str
    name: str
    payload: Payload
    at_ms: int


RECENT_EVENT_IDS = 1024
"""How many event ids a run remembers to drop resent events (older duplicates are treated as new)."""


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One durable call of the workflow, at position ``seq`` in call order.

    Attributes:
        seq: position of the call in the run (0, 1, 2, ...).
        kind: what the call was.
        name: the name the workflow gave it (a step's name, or ``now``).
        state: whether it is still being worked on.
        occurrence: how many calls of this name came before it, plus one.
        attempt: the current (or last) attempt of a step.
        function: import path of a step's function (``module:qualname``).
        args: a step's arguments while it may run again (dropped once it completed or failed for good; the
            history keeps them), or a recorded value.
        result: a step's result.
        error: a failed step's last error.
        options: a step's retry policy and timeout, while it may run again.
        scheduled_at_ms: when the current attempt was scheduled.
        finished_at_ms: when the entry completed or failed.
        resolution: the order in which the run's results arrived (1, 2, ...); 0 while unanswered. Replay
            delivers results in this order, one per round, so that the workflow sees them as it first did.
    """

    seq: int
    kind: EntryKind
    name: str
    state: EntryState
    occurrence: int = 1
    attempt: int = 1
    function: str = ""
    args: Payload | None = None
    result: Payload | None = None
    error: ErrorInfo | None = None
    options: StepOptions | None = None
    scheduled_at_ms: int = 0
    finished_at_ms: int = 0
    resolution: int = 0


@dataclass(frozen=True, slots=True)
class RunState:
    """Everything the actor of one run knows.

    Attributes:
        tenant: the run's tenant.
        workflow_id: the run's id, unique within the tenant.
        workflow_type: the registered workflow's name.
        version: the workflow code version the run started with (runs are pinned to it).
        status: where the run is.
        input: the workflow's input.
        start_id: id of the command that started the run.
        started_at_ms: when it started.
        updated_at_ms: when its state last changed.
        journal: the durable calls made so far, indexed by ``seq``.
        result: the workflow's result once completed.
        error: the error it failed with.
        reason: why a run is stuck.
        history_len: how many history events the run has (the next event's number).
        resolutions: how many results have arrived; each one activated the workflow once.
        timers: the run's pending timers.
        events: events received and not yet waited for, in arrival order.
        event_ids: ids of the most recent events received (``RECENT_EVENT_IDS``), to drop resent ones.
        cancel_reason: why the run was asked to cancel; empty if it was not.
    """

    tenant: str
    workflow_id: str
    workflow_type: str
    version: str
    status: RunStatus
    input: Payload
    start_id: str
    started_at_ms: int
    updated_at_ms: int
    journal: tuple[JournalEntry, ...] = ()
    result: Payload | None = None
    error: ErrorInfo | None = None
    reason: str = ""
    history_len: int = 0
    resolutions: int = 0
    timers: tuple[Timer, ...] = ()
    events: tuple[BufferedEvent, ...] = ()
    event_ids: tuple[str, ...] = ()
    cancel_reason: str = ""

    @property
    def key(self) -> str:
        """``tenant/workflow_id``."""
        return run_key(self.tenant, self.workflow_id)

    def timer(self, timer_id: str) -> Timer | None:
        """The pending timer ``timer_id``, or ``None`` if it fired, was cancelled or never existed."""
        return next((t for t in self.timers if t.id == timer_id), None)

    def next_wake_up_ms(self) -> int | None:
        """When the earliest pending timer fires."""
        return min((t.due_ms for t in self.timers), default=None)

    def waiting_for(self, name: str) -> JournalEntry | None:
        """The earliest wait for event ``name`` that is still open."""
        return next(
            (
                e
                for e in self.journal
                if e.kind is EntryKind.EVENT and e.name == name and e.state is EntryState.SCHEDULED
            ),
            None,
        )

    def pending_steps(self) -> list[JournalEntry]:
        """Steps scheduled and not yet finished."""
        return [e for e in self.journal if e.kind is EntryKind.STEP and e.state is EntryState.SCHEDULED]
