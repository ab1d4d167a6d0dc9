"""The records Steady writes and reads on its topics, beyond the actor's own commands, events and state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from actors.commands import Command
from actors.errors import ErrorInfo
from actors.events import Event, StepScheduled
from actors.model import RunState, Timer
from actors.payload import Payload
from schemas.codec import Codec, codec

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class StepTask:
    """One attempt of one step, for the step executors (see ``schemas/task.avsc``)."""

    tenant: str
    workflow_id: str
    workflow_type: str
    version: str
    seq: int
    name: str
    attempt: int
    function: str
    args: Payload
    idempotency_key: str
    timeout_ms: int
    at_ms: int

    @property
    def key(self) -> str:
        """``tenant/workflow_id``."""
        return f"{self.tenant}/{self.workflow_id}"

    @property
    def attempt_id(self) -> tuple[str, int, int]:
        """What identifies this attempt of this step of this run: run key, call number, attempt."""
        return (self.key, self.seq, self.attempt)

    @classmethod
    def scheduled(cls, state: RunState, step: StepScheduled, at_ms: int) -> StepTask:
        """The task of the attempt that ``step`` scheduled in the run of ``state``, at ``at_ms``."""
        return cls(
            tenant=state.tenant,
            workflow_id=state.workflow_id,
            workflow_type=state.workflow_type,
            version=state.version,
            seq=step.seq,
            name=step.name,
            attempt=step.attempt,
            function=step.function,
            args=step.args,
            idempotency_key=f"{state.tenant}/{state.workflow_id}/{step.name}/{step.occurrence}",
            timeout_ms=step.options.timeout_ms,
            at_ms=at_ms,
        )


@dataclass(frozen=True, slots=True)
class Completion:
    """The terminal record of a run (see ``schemas/completion.avsc``)."""

    tenant: str
    workflow_id: str
    workflow_type: str
    version: str
    status: str
    result: Payload | None
    error: ErrorInfo | None
    started_at_ms: int
    at_ms: int

    @property
    def key(self) -> str:
        """``tenant/workflow_id``."""
        return f"{self.tenant}/{self.workflow_id}"

    @classmethod
    def of(cls, state: RunState, at_ms: int) -> Completion:
        """The terminal record of the run of ``state``, which ended at ``at_ms``."""
        return cls(
            tenant=state.tenant,
            workflow_id=state.workflow_id,
            workflow_type=state.workflow_type,
            version=state.version,
            status=state.status.value,
            result=state.result,
            error=state.error,
            started_at_ms=state.started_at_ms,
            at_ms=at_ms,
        )


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that could not be decoded or applied, with its original bytes (``schemas/dead_letter.avsc``)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    reason: str
    at_ms: int


@dataclass(frozen=True, slots=True)
class TimerRecord:
    """A timer for the timer service (see ``schemas/timer.avsc``)."""

    tenant: str
    workflow_id: str
    timer: Timer
    at_ms: int

    @property
    def run_key(self) -> str:
        """``tenant/workflow_id``."""
        return f"{self.tenant}/{self.workflow_id}"

    @property
    def key(self) -> str:
        """The record's key on the timers topic: ``tenant/workflow_id#timer_id``."""
        return timer_key(self.run_key, self.timer.id)


def timer_key(run_key: str, timer_id: str) -> str:
    """The key of a run's timer on the timers topic."""
    return f"{run_key}#{timer_id}"


class RecordType:
    """Encodes and decodes one record type with its schema file."""

    def __init__(self, cls: type[Any], schema: str) -> None:
        self.cls = cls
        self.codec: Codec = codec(schema)
        self._write = self.codec.writer(cls)
        self._read = self.codec.reader(cls)

    @property
    def headers(self) -> list[tuple[str, bytes]]:
        """The Kafka headers every record of this type carries."""
        return [self.codec.header]

    def encode(self, value: object) -> bytes:
        """The record's bytes."""
        return self._write(value)

    def decode(self, data: bytes) -> Any:
        """The record in ``data``; raises ``schemas.codec.CodecError`` when it does not fit."""
        return self._read(data)


COMMAND = RecordType(Command, "inbox")
EVENT = RecordType(Event, "history")
STATE = RecordType(RunState, "state")
TASK = RecordType(StepTask, "task")
COMPLETION = RecordType(Completion, "completion")
DEAD_LETTER = RecordType(DeadLetter, "dead_letter")
TIMER = RecordType(TimerRecord, "timer")
