"""What a worker has applied and not committed yet, and the steps it runs itself.

A worker applies inputs as they arrive and commits their effects in one Kafka transaction at a time. While
one transaction commits, the next :class:`Pending` collects what arrives meanwhile (group commit). A
transaction that fails takes every later :class:`Pending` with it: the worker reloads its state from the
changelog and reads its inputs again from the inbox, where they all are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields

from aiokafka import TopicPartition

from actors.commands import Command
from actors.model import RunState
from streams.records import StepTask


@dataclass(slots=True)
class Out:
    """One record to write in the transaction."""

    topic: str
    partition: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    step: LocalStep | None = None
    """For a step task: the local run of that step."""


@dataclass(slots=True)
class LocalStep:
    """A step attempt that this worker runs itself because it scheduled it.

    Its task record still goes to the tasks topic, for whoever owns the run after a crash; this worker skips it
    when it reads it back. Until the attempt's outcome is durable (in the inbox, or committed by the transaction
    that applied it), the record's offset holds back the committed position of the tasks partition, so that a
    crash before then leaves the task to be read again.
    """

    task: StepTask
    partition: TopicPartition | None = None
    offset: int | None = None
    """Where the task record landed, once its transaction committed."""
    started: bool = False
    """Handed to the executor (a step waiting for a commit or a report is not, yet)."""
    finished: bool = False
    """The outcome is applied or in the inbox (or the attempt was skipped)."""


@dataclass(slots=True)
class TaskOffsets:
    """Offsets of one tasks partition: the next to read, and those whose steps are still running."""

    fetched: int = -1
    running: set[int] = field(default_factory=set)
    committed: int = -1

    def committable(self) -> int | None:
        """The offset to commit now, if it moved: never past a record not read yet nor a step still running."""
        nxt = min(self.fetched, *self.running) if self.running else self.fetched
        return nxt if nxt > self.committed else None


@dataclass(slots=True, eq=False)
class EarlyInput:
    """A local step's outcome or a timer's firing, applied before it was written anywhere.

    The transaction that commits what it was applied in records it. When its run scheduled steps from it, those
    steps (:attr:`steps`) must not run on an input a crash could lose: the input is written to the inbox (a
    step's report, a firing), and they start once it is there, in the inbox's order (else with the commit, like
    steps held for any other reason). A step outcome from which its run scheduled no step, or taken under load
    (see ``streams.worker.REPORT_UNDER_LOAD``), has no inbox record at all: its steps wait for the commit. A
    firing always has one.
    """

    task: StepTask | None
    """The step whose outcome it is (``None``: a firing)."""
    command: Command
    pending: Pending
    """What it was applied in."""
    release: Callable[[], None] | None = None
    """Frees the task's attempt (its place in the tasks topic) once the outcome is durable; the executor's."""
    steps: list[LocalStep] = field(default_factory=list)
    """Steps its run scheduled from it, waiting for it to be durable."""
    overtaken: bool = False
    """Another input of its run was applied after it and before its report was in the inbox."""
    settled: bool = False
    """Its steps were started or handed to a commit."""
    dropped: bool = False
    """What it was applied in was dropped: its report, if any, is an ordinary input again."""


@dataclass(slots=True)
class Pending:
    """Effects applied to runs and not committed yet: the contents of one transaction."""

    outputs: list[Out] = field(default_factory=list)
    states: dict[str, tuple[int, RunState]] = field(default_factory=dict)
    """The latest state of each run touched, with its partition."""
    offsets: dict[TopicPartition, int] = field(default_factory=dict)
    """Next offsets to commit for the consumed partitions."""
    first: dict[TopicPartition, int] = field(default_factory=dict)
    """The first inbox offset applied per partition (read, or offered when written): if this is dropped, the
    consumer reads again from there."""
    held: set[str] = field(default_factory=set)
    """Runs whose new steps wait for the commit: they took an input ahead of its place in the inbox, or read the
    clock, so a later owner applying the inbox again might schedule other steps."""
    offered: list[tuple[TopicPartition, int]] = field(default_factory=list)
    """Inbox records applied when written (the consumer skips them); if this is dropped, it must read them."""
    deferred: list[LocalStep] = field(default_factory=list)
    """Steps to start once this transaction commits."""
    started: list[LocalStep] = field(default_factory=list)
    """Steps started before this transaction commits, or to start as soon as the outcome they follow is in the
    inbox (their outcomes may still join it)."""
    early: list[EarlyInput] = field(default_factory=list)
    """Local step outcomes and timer firings applied before they were written (see :class:`EarlyInput`)."""
    inputs: int = 0
    """Inbox records applied (the worker reads no more while too many wait for a transaction)."""
    committed: bool = False
    """Its transaction committed."""

    def let_go(self) -> None:
        """Its transaction committed and the worker took note: keep only that it committed (and its input count).

        Inputs applied early whose records are still on their way to the inbox refer to it until they land, only to
        learn that it committed. Emptied, it does not keep its records in memory meanwhile, and leaves no reference
        cycle (it lists those inputs, and they name it) for Python's full collections to walk and free: under W4,
        most found 12,000-26,000 objects of such transactions and paused the worker for 21-42 ms.
        """
        for held in fields(self):
            if held.default_factory is not MISSING:  # the collections; the flags and the count stay
                setattr(self, held.name, held.default_factory())

    @property
    def awaits_outcomes(self) -> bool:
        """Whether steps this transaction schedules are running or about to, and none waits for it to commit."""
        return not self.deferred and any(not step.finished for step in self.started)

    @property
    def has_effects(self) -> bool:
        """Whether there are records or states to write (not only offsets)."""
        return bool(self.outputs or self.states)


class EarlyInputs:
    """Inputs applied before they were written, on their way to the inbox, and the runs whose new steps wait.

    A run waits while any of its early inputs with steps to start is neither in the inbox nor settled otherwise
    (dropped, lost, committed): a new step of that run must not start on an input a crash could lose.
    """

    def __init__(self) -> None:
        self._by_id: dict[str, EarlyInput] = {}
        self._waiting: dict[str, int] = {}
        """Per run: early inputs whose steps wait for them."""

    def __repr__(self) -> str:
        return f"EarlyInputs({len(self._by_id)} on their way, waiting runs {self._waiting})"

    def expect(self, early: EarlyInput) -> None:
        """``early``'s record is on its way to the inbox: its run's new steps wait until it is there."""
        self._by_id[early.command.id] = early
        key = early.command.key
        self._waiting[key] = self._waiting.get(key, 0) + 1

    def get(self, command_id: str) -> EarlyInput | None:
        """The early input of command ``command_id`` on its way to the inbox, if one is."""
        return self._by_id.get(command_id)

    def arrived(self, command_id: str) -> bool:
        """Stop expecting the record of ``command_id`` (it landed, was lost, or its work was dropped).

        Returns whether it was expected: a record heard of a second time, or after its work was dropped, is not.
        """
        return self._by_id.pop(command_id, None) is not None

    def settle(self, early: EarlyInput) -> None:
        """``early``'s steps no longer wait for it (they start, wait for a commit, or were dropped)."""
        early.settled = True
        key = early.command.key
        left = self._waiting.get(key, 0) - 1
        if left > 0:
            self._waiting[key] = left
        else:
            self._waiting.pop(key, None)

    def waits(self, key: str) -> bool:
        """Whether run ``key`` has an input applied early whose record is not durable yet."""
        return key in self._waiting

    def overtake(self, key: str) -> None:
        """Another input of run ``key`` was applied: its early inputs on their way may land after that one."""
        for early in self._by_id.values():
            if early.command.key == key:
                early.overtaken = True
