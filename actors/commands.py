"""Commands to a run's actor: the records of the inbox topic.

Any producer may write them (the client, step executors, the timer service, or another language through the
Avro schemas in ``schemas/``). Each carries an id; the actor applies a command id at most once.
"""

from __future__ import annotations

from dataclasses import dataclass

from actors.errors import ErrorInfo
from actors.model import run_key
from actors.payload import Payload


@dataclass(frozen=True, slots=True)
class StartWorkflow:
    """Start a run of ``workflow_type``; a start for a run id that exists keeps the existing run.

    ``version`` empty means the newest version the worker has registered.
    """

    workflow_type: str
    input: Payload
    version: str = ""


@dataclass(frozen=True, slots=True)
class CompleteStep:
    """A step attempt returned ``result``."""

    seq: int
    attempt: int
    result: Payload
    started_at_ms: int


@dataclass(frozen=True, slots=True)
class FailStep:
    """A step attempt raised ``error``; ``retry_after_ms`` is the least wait the step asked for."""

    seq: int
    attempt: int
    error: ErrorInfo
    started_at_ms: int
    retry_after_ms: int = 0


@dataclass(frozen=True, slots=True)
class FireTimer:
    """The timer service says timer ``timer_id`` of the run is due (sent once or more; the first counts)."""

    timer_id: str
    due_ms: int


@dataclass(frozen=True, slots=True)
class SendEvent:
    """Deliver event ``name`` with ``payload`` to the run (kept until the workflow waits for it)."""

    name: str
    payload: Payload


@dataclass(frozen=True, slots=True)
class CancelWorkflow:
    """Ask the run to cancel: ``Cancelled`` is raised in the workflow at its current ``await``."""

    reason: str


CommandBody = StartWorkflow | CompleteStep | FailStep | FireTimer | SendEvent | CancelWorkflow


@dataclass(frozen=True, slots=True)
class Command:
    """One inbox record: a command to the run ``tenant/workflow_id``.

    Attributes:
        id: unique id of this command; a redelivered or resent command has the same id.
        tenant: the run's tenant.
        workflow_id: the run's id.
        at_ms: when the sender sent it (epoch milliseconds): the actor's notion of "now".
        body: what to do.
    """

    id: str
    tenant: str
    workflow_id: str
    at_ms: int
    body: CommandBody

    @property
    def key(self) -> str:
        """``tenant/workflow_id``."""
        return run_key(self.tenant, self.workflow_id)
