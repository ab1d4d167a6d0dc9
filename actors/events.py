"""Events of a run: what happened, in order. Each is appended to the history topic and folded into the state.

Folding a run's history with :func:`actors.actor.evolve` gives its state; that is how the consistency of the
changelog is checked and how a timeline is shown.
"""

from __future__ import annotations

from dataclasses import dataclass

from actors.errors import ErrorInfo
from actors.model import Timer, run_key
from actors.payload import Payload
from actors.policy import StepOptions


@dataclass(frozen=True, slots=True)
class WorkflowStarted:
    """The run started with ``input``, pinned to ``version`` of ``workflow_type``."""

    workflow_type: str
    version: str
    input: Payload
    start_id: str


@dataclass(frozen=True, slots=True)
class StepScheduled:
    """Attempt ``attempt`` of the step at ``seq`` was handed to the step executors."""

    seq: int
    name: str
    occurrence: int
    attempt: int
    function: str
    args: Payload
    options: StepOptions


@dataclass(frozen=True, slots=True)
class StepCompleted:
    """The step at ``seq`` returned ``result`` on attempt ``attempt``, which started at ``started_at_ms``."""

    seq: int
    name: str
    attempt: int
    result: Payload
    started_at_ms: int


@dataclass(frozen=True, slots=True)
class StepAttemptFailed:
    """Attempt ``attempt`` of the step at ``seq`` failed; ``final`` when no attempt follows."""

    seq: int
    name: str
    attempt: int
    error: ErrorInfo
    started_at_ms: int
    final: bool


@dataclass(frozen=True, slots=True)
class StepResultDropped:
    """A result arrived for an attempt that is not current (a duplicate, or late); it changed nothing."""

    seq: int
    attempt: int
    reason: str


@dataclass(frozen=True, slots=True)
class ValueRecorded:
    """The workflow read ``value`` from the outside world at call ``seq`` (``ctx.now()``)."""

    seq: int
    name: str
    value: Payload


@dataclass(frozen=True, slots=True)
class WorkflowCompleted:
    """The workflow function returned ``result``."""

    result: Payload


@dataclass(frozen=True, slots=True)
class WorkflowFailed:
    """The workflow function raised ``error``."""

    error: ErrorInfo


@dataclass(frozen=True, slots=True)
class WorkflowStuck:
    """The run is parked: ``reason`` says why (divergent replay, unknown version). Nothing else is touched."""

    reason: str


@dataclass(frozen=True, slots=True)
class SleepStarted:
    """The workflow started the durable sleep ``name`` at call ``seq``, until ``until_ms``."""

    seq: int
    name: str
    until_ms: int


@dataclass(frozen=True, slots=True)
class TimerScheduled:
    """A timer was set (a sleep, a retry backoff, a step or workflow timeout)."""

    timer: Timer


@dataclass(frozen=True, slots=True)
class TimerFired:
    """Timer ``timer`` fired ``late_ms`` after it was due; what it meant follows in the next events."""

    timer: Timer
    late_ms: int


@dataclass(frozen=True, slots=True)
class TimerCancelled:
    """Timer ``timer_id`` is no longer needed (its step reported, its run ended)."""

    timer_id: str


@dataclass(frozen=True, slots=True)
class EventAwaited:
    """The workflow waits for event ``name`` at call ``seq`` (``timeout_ms`` 0: no timeout)."""

    seq: int
    name: str
    timeout_ms: int


@dataclass(frozen=True, slots=True)
class EventReceived:
    """Event ``name`` arrived before anything waited for it; it is kept in the run's state."""

    id: str
    name: str
    payload: Payload


@dataclass(frozen=True, slots=True)
class EventDelivered:
    """Event ``id`` (``name``) answered the wait at call ``seq``."""

    seq: int
    name: str
    id: str
    payload: Payload


@dataclass(frozen=True, slots=True)
class WaitTimedOut:
    """The wait for event ``name`` at call ``seq`` ended without an event."""

    seq: int
    name: str


@dataclass(frozen=True, slots=True)
class CancelRequested:
    """The run was asked to cancel; every open call now raises ``Cancelled`` in the workflow."""

    reason: str


@dataclass(frozen=True, slots=True)
class WorkflowCancelled:
    """The workflow ended because it was cancelled (after any compensation it ran)."""

    reason: str


EventBody = (
    WorkflowStarted
    | StepScheduled
    | StepCompleted
    | StepAttemptFailed
    | StepResultDropped
    | ValueRecorded
    | WorkflowCompleted
    | WorkflowFailed
    | WorkflowStuck
    | SleepStarted
    | TimerScheduled
    | TimerFired
    | TimerCancelled
    | EventAwaited
    | EventReceived
    | EventDelivered
    | WaitTimedOut
    | CancelRequested
    | WorkflowCancelled
)


@dataclass(frozen=True, slots=True)
class Event:
    """One history record: event number ``seq`` of the run ``tenant/workflow_id``, at ``at_ms``."""

    tenant: str
    workflow_id: str
    seq: int
    at_ms: int
    body: EventBody

    @property
    def key(self) -> str:
        """``tenant/workflow_id``."""
        return run_key(self.tenant, self.workflow_id)
