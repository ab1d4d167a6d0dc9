"""The ``Context`` a workflow function receives: its durable calls and its deterministic view of the world.

Every durable call gets the next position (``seq``) in the run's journal. During replay a call the journal
already answers returns at once; a new call becomes work for the runtime and its future stays pending, which
suspends the workflow at that ``await``. A call that does not match the journal at its position raises
:class:`NonDeterminismError` and the run is parked.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import random
import typing
import uuid
from collections import Counter
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from actors import payload
from actors.errors import Cancelled, EventTimeout, NonDeterminismError, StepFailed, Suspend, WorkflowDefinitionError
from actors.events import EventAwaited, EventBody, SleepStarted, StepScheduled, TimerScheduled, ValueRecorded
from actors.model import EntryKind, EntryState, JournalEntry, RunState, Timer, TimerPurpose
from actors.policy import RetryPolicy

T = TypeVar("T")
logger = logging.getLogger("steady.workflow")


@dataclass(frozen=True, slots=True)
class StepInfo:
    """What a running step may know about itself (see :func:`current_step`).

    Attributes:
        idempotency_key: ``tenant/workflow_id/step/occurrence``; the same on every attempt, so an outside
            system can de-duplicate the step's effect.
        attempt: 1 for the first attempt, 2 for the first retry, ...
        tenant: the run's tenant.
        workflow_id: the run's id.
        step: the step's name.
    """

    idempotency_key: str
    attempt: int
    tenant: str
    workflow_id: str
    step: str


_current_step: ContextVar[StepInfo | None] = ContextVar("steady_current_step", default=None)


def current_step() -> StepInfo:
    """The step that is running in this thread or task. Call it from inside a step function."""
    info = _current_step.get()
    if info is None:
        raise RuntimeError("current_step() is only available inside a running step")
    return info


def set_current_step(info: StepInfo | None) -> None:
    """Used by step executors to tell a step who it is."""
    _current_step.set(info)


def idempotency_key(tenant: str, workflow_id: str, step: str, occurrence: int) -> str:
    """The idempotency key of a step call: ``tenant/workflow_id/step/occurrence``."""
    return f"{tenant}/{workflow_id}/{step}/{occurrence}"


@functools.lru_cache(maxsize=4096)
def function_ref(fn: Callable[..., Any]) -> str:
    """The import path (``module:qualname``) by which a step executor finds ``fn``."""
    qualname = getattr(fn, "__qualname__", "")
    module = getattr(fn, "__module__", None)
    if not module or not qualname or "<" in qualname:
        raise WorkflowDefinitionError(
            f"step function {fn!r} must be a module-level function (no lambda, closure or local function)"
        )
    return f"{module}:{qualname}"


@functools.lru_cache(maxsize=4096)
def _return_type(fn: Callable[..., Any]) -> Any:
    try:
        return typing.get_type_hints(fn).get("return", Any)
    except (NameError, TypeError):
        return Any


class _WorkflowLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Logs with the run's tenant and id, and stays silent while the workflow replays."""

    def __init__(self, ctx: Context) -> None:
        super().__init__(logger, {"tenant": ctx.tenant, "workflow_id": ctx.workflow_id})
        self._ctx = ctx

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if not self._ctx.is_replaying:
            super().log(level, msg, *args, **kwargs)


class Context:
    """The workflow's handle on durable execution. Created by the runtime for each activation."""

    def __init__(
        self,
        state: RunState,
        loop: asyncio.AbstractEventLoop,
        now_ms: int,
        retry: RetryPolicy,
        step_timeout: timedelta | None,
    ) -> None:
        self._state = state
        self._journal = state.journal
        self._loop = loop
        self._now_ms = now_ms
        self._retry = retry
        self._step_timeout = step_timeout
        self._next_seq = 0
        self._occurrences: Counter[str] = Counter()
        self._round = 0
        self._live = state.resolutions == 0
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._return_types: dict[int, Any] = {}
        self._uuids = 0
        self._random: random.Random | None = None
        self._closed = False
        self.new_events: list[EventBody] = []
        self.divergence: NonDeterminismError | None = None
        self.log: logging.LoggerAdapter[logging.Logger] = _WorkflowLogger(self)

    # -- what the workflow sees ---------------------------------------------------------------------------

    @property
    def tenant(self) -> str:
        """The run's tenant."""
        return self._state.tenant

    @property
    def workflow_id(self) -> str:
        """The run's id."""
        return self._state.workflow_id

    @property
    def version(self) -> str:
        """The code version the run is pinned to."""
        return self._state.version

    @property
    def is_replaying(self) -> bool:
        """Whether the workflow is re-running calls its journal already answers (logs are silent then)."""
        return not self._live

    @typing.overload
    def step(
        self,
        name: str,
        fn: Callable[..., typing.Awaitable[T]],
        *args: Any,
        retry: RetryPolicy | None = None,
        timeout: timedelta | None = None,
    ) -> asyncio.Future[T]: ...

    @typing.overload
    def step(
        self,
        name: str,
        fn: Callable[..., T],
        *args: Any,
        retry: RetryPolicy | None = None,
        timeout: timedelta | None = None,
    ) -> asyncio.Future[T]: ...

    def step(
        self,
        name: str,
        fn: Callable[..., Any],
        *args: Any,
        retry: RetryPolicy | None = None,
        timeout: timedelta | None = None,
    ) -> asyncio.Future[Any]:
        """Run ``fn(*args)`` as a durable step: at least once, recorded once, never again once recorded.

        ``fn`` is a module-level sync or async function; its arguments and result are pydantic models or JSON
        values. The returned future resolves to the result (decoded with ``fn``'s return annotation), or
        raises :class:`StepFailed` when the step fails for good. Steps called before the first ``await`` run
        in parallel (``asyncio.gather``).

        Args:
            name: the step's name in the journal and history; calls of one name are numbered in order.
            fn: the step function.
            *args: its arguments.
            retry: the retry policy (default: the workflow's).
            timeout: per-attempt timeout (default: the workflow's ``step_timeout``).
        """
        seq, entry, occurrence = self._call(EntryKind.STEP, name)
        future: asyncio.Future[Any] = self._loop.create_future()
        self._return_types[seq] = _return_type(fn)
        if entry is None:
            options = (retry or self._retry).options(timeout or self._step_timeout)
            self.new_events.append(
                StepScheduled(
                    seq=seq,
                    name=name,
                    occurrence=occurrence,
                    attempt=1,
                    function=function_ref(fn),
                    args=payload.encode(list(args)),
                    options=options,
                )
            )
        self._pending[seq] = future
        if entry is not None and entry.resolution and entry.resolution <= self._round:
            self._resolve(entry)
        return future

    def sleep(self, name: str, duration: timedelta) -> asyncio.Future[None]:
        """Sleep durably for ``duration`` (milliseconds to years).

        While it sleeps, the run holds no memory, task or coroutine in any worker: it is a row on disk and a timer.

        Args:
            name: the sleep's name in the journal and history.
            duration: how long; measured from the moment the workflow first reached this call.
        """
        return self._sleep(name, lambda: self._now_ms + int(duration / timedelta(milliseconds=1)))

    def sleep_until(self, name: str, until: datetime) -> asyncio.Future[None]:
        """Sleep durably until ``until`` (an aware datetime; a time in the past wakes at once)."""
        if until.tzinfo is None:
            raise WorkflowDefinitionError("sleep_until needs an aware datetime (with tzinfo), e.g. UTC")
        return self._sleep(name, lambda: int(until.timestamp() * 1000))

    def _sleep(self, name: str, due: Callable[[], int]) -> asyncio.Future[None]:
        seq, entry, _ = self._call(EntryKind.SLEEP, name)
        future: asyncio.Future[None] = self._loop.create_future()
        if entry is None:
            until = due()
            self.new_events.append(SleepStarted(seq, name, until))
            self.new_events.append(TimerScheduled(Timer.of(TimerPurpose.SLEEP, seq, 1, until)))
        self._pending[seq] = future
        if entry is not None and entry.resolution and entry.resolution <= self._round:
            self._resolve(entry)
        return future

    def wait_for_event(
        self,
        name: str,
        *,
        timeout: timedelta | None = None,
        type: Any = Any,
    ) -> asyncio.Future[Any]:
        """Wait for the outside event ``name`` and return its payload (decoded into ``type``).

        An event that arrived before this call is delivered at once, in arrival order. Several waits may be
        open together (``asyncio.gather`` or ``asyncio.wait``).

        Raises:
            EventTimeout: no event within ``timeout``.
        """
        seq, entry, _ = self._call(EntryKind.EVENT, name)
        future: asyncio.Future[Any] = self._loop.create_future()
        self._return_types[seq] = type
        if entry is None:
            timeout_ms = 0 if timeout is None else int(timeout / timedelta(milliseconds=1))
            self.new_events.append(EventAwaited(seq, name, timeout_ms))
            if timeout is not None:
                due = self._now_ms + timeout_ms
                self.new_events.append(TimerScheduled(Timer.of(TimerPurpose.EVENT_TIMEOUT, seq, 1, due)))
        self._pending[seq] = future
        if entry is not None and entry.resolution and entry.resolution <= self._round:
            self._resolve(entry)
        return future

    def now(self) -> datetime:
        """The current time in UTC, recorded on first execution so that replay sees the same value."""
        seq, entry, _ = self._call(EntryKind.VALUE, "now")
        if entry is not None and entry.args is not None:
            ms = int(payload.decode(entry.args, int))
        else:
            ms = self._now_ms
            self.new_events.append(ValueRecorded(seq=seq, name="now", value=payload.encode(ms)))
        return datetime.fromtimestamp(ms / 1000, tz=UTC)

    def uuid(self) -> uuid.UUID:
        """A random-looking UUID that is the same on every replay of this run."""
        self._uuids += 1
        seed = f"{self._state.start_id}/{self._state.tenant}/{self._state.workflow_id}/uuid/{self._uuids}"
        return uuid.UUID(bytes=hashlib.sha256(seed.encode()).digest()[:16], version=4)

    def random(self) -> random.Random:
        """A random generator seeded by the run, so its numbers are the same on every replay."""
        if self._random is None:
            self._random = random.Random(
                f"{self._state.start_id}/{self._state.key}"
            )  # not for secrets: determinism is the point
        return self._random

    # -- used by the replay executor ----------------------------------------------------------------------

    def _call(self, kind: EntryKind, name: str) -> tuple[int, JournalEntry | None, int]:
        if self._closed:
            raise Suspend
        seq = self._next_seq
        self._next_seq += 1
        self._occurrences[f"{kind}:{name}"] += 1
        occurrence = self._occurrences[f"{kind}:{name}"]
        if seq < len(self._journal):
            entry = self._journal[seq]
            if entry.kind is not kind or entry.name != name:
                self.diverge(
                    f"call {seq} is {kind.value} {name!r} but the journal recorded {entry.kind.value} {entry.name!r}"
                )
            return seq, entry, occurrence
        if not self._live:
            self.diverge(f"call {seq} ({kind.value} {name!r}) was not made when this run first executed here")
        return seq, None, occurrence

    def diverge(self, message: str) -> typing.NoReturn:
        """Record that replay left the journal, and raise :class:`NonDeterminismError`."""
        error = NonDeterminismError(
            f"workflow {self._state.workflow_type!r} v{self._state.version} diverged from its journal: {message}. "
            "The code changed in a way that is not compatible with running runs; deploy it as a new version."
        )
        if self.divergence is None:
            self.divergence = error
        raise error

    def _resolve(self, entry: JournalEntry) -> None:
        future = self._pending.pop(entry.seq, None)
        if future is None or future.done():
            return
        if entry.state is EntryState.FAILED and entry.error is not None and entry.error.type == "Cancelled":
            future.set_exception(Cancelled(entry.error.message))
        elif entry.state is EntryState.FAILED and entry.error is not None and entry.kind is EntryKind.EVENT:
            timeout_ms = int(payload.decode(entry.args, int)) if entry.args is not None else 0
            future.set_exception(EventTimeout(entry.name, timeout_ms))
        elif entry.kind is EntryKind.SLEEP and entry.state is EntryState.COMPLETED:
            future.set_result(None)
        elif entry.state is EntryState.COMPLETED and entry.result is not None:
            try:
                future.set_result(payload.decode(entry.result, self._return_types.get(entry.seq, Any)))
            except ValueError as exc:
                future.set_exception(exc)
        elif entry.state is EntryState.FAILED and entry.error is not None:
            future.set_exception(StepFailed(entry.name, entry.error, entry.attempt))

    def begin_round(self, resolution: int) -> None:
        """Replay round ``resolution``: deliver the result that arrived ``resolution``-th, as it happened."""
        self._round = resolution
        if resolution == self._state.resolutions:
            self._live = True
        for entry in self._journal:
            if entry.resolution == resolution:
                if entry.seq not in self._pending:
                    self.diverge(f"the result of call {entry.seq} ({entry.name!r}) arrived but replay never made it")
                self._resolve(entry)

    @property
    def round(self) -> int:
        """The last round delivered (the number of results the workflow has seen)."""
        return self._round

    def reopen(self, state: RunState, now_ms: int) -> None:
        """Before resuming a suspended activation with the run's next ``state``: its journal, its time."""
        self._state = state
        self._journal = state.journal
        self._now_ms = now_ms
        self._closed = False
        self.new_events = []

    @property
    def calls(self) -> int:
        """How many durable calls the replay has made."""
        return self._next_seq

    def close(self) -> None:
        """After the activation: any further durable call suspends at once."""
        self._closed = True
