"""The replay executor: runs a workflow function against its journal and says what it does next.

Each activation runs the ``async def`` from the start on a private, deterministic event loop. Results are
delivered in rounds, in the order they first arrived (round 0 is the start, round ``n`` delivers the
``n``-th result), so that code which races steps (``asyncio.gather``, ``asyncio.wait``) sees the same order on
every replay. In the last round the journal has no more answers: the calls made then are the new work, and
the function suspends at the first ``await`` that nothing answers.

The loop runs callbacks only; it has no clock, no I/O and no threads. ``asyncio`` timers (``asyncio.sleep``
with a delay, ``wait_for``) are not durable and are refused with a clear error.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Coroutine, Iterator
from contextvars import Context as ContextVars
from typing import Any

from actors import payload
from actors.context import Context
from actors.errors import Cancelled, ErrorInfo, NonDeterminismError, WorkflowDefinitionError, error_info
from actors.events import EventBody, WorkflowCancelled, WorkflowCompleted, WorkflowFailed, WorkflowStuck
from actors.model import RunState
from actors.workflow import Workflow


class ReplayLoop(asyncio.AbstractEventLoop):
    """A deterministic event loop that runs ready callbacks until none is left.

    It implements what ``asyncio.Future``, ``Task``, ``gather`` and ``wait`` use; the I/O, subprocess and
    signal methods of a real loop stay abstract (and raise) because workflow code must not use them.
    """

    def __init__(self, now: float) -> None:
        self._ready: deque[asyncio.Handle] = deque()
        self._now = now
        self._tasks: list[asyncio.Task[Any]] = []

    def call_soon(  # type: ignore[override]  # typeshed's TypeVarTuple form; the behaviour is the same
        self, callback: Callable[..., object], *args: Any, context: ContextVars | None = None
    ) -> asyncio.Handle:
        """Queue ``callback`` to run in this round."""
        handle = asyncio.Handle(callback, args, self, context)
        self._ready.append(handle)
        return handle

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        """Refused: a timer in memory does not survive a restart."""
        raise WorkflowDefinitionError(
            "asyncio timers do not survive a restart: use ctx.sleep(...) instead of asyncio.sleep/wait_for"
        )

    def call_at(self, when: float, callback: Callable[..., object], *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        """Refused, like :meth:`call_later`."""
        return self.call_later(0, callback)

    def time(self) -> float:
        """The activation's time (seconds since the epoch)."""
        return self._now

    def set_time(self, now_ms: int) -> None:
        """The time of the next activation."""
        self._now = now_ms / 1000

    def create_future(self) -> asyncio.Future[Any]:
        """A future of this loop."""
        return asyncio.Future(loop=self)

    def create_task(self, coro: Any, *, name: str | None = None, context: ContextVars | None = None) -> Any:
        """A task of this loop."""
        task: asyncio.Task[Any] = asyncio.Task(coro, loop=self, name=name, context=context)
        self._tasks.append(task)
        return task

    def get_debug(self) -> bool:
        """Never in debug mode."""
        return False

    def is_running(self) -> bool:
        """Always running while the workflow runs."""
        return True

    def is_closed(self) -> bool:
        """Never closed while the workflow runs."""
        return False

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        """Ignore: a suspended workflow's pending tasks are expected."""
        return

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        """Ignore, like call_exception_handler."""
        return

    def run_ready(self) -> None:
        """Run callbacks until the workflow can make no more progress."""
        while self._ready:
            handle = self._ready.popleft()
            if not handle.cancelled():
                handle._run()  # the way asyncio's own loops run a Handle

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Make this loop the running loop of the thread for the duration (asyncio.gather needs one)."""
        previous = asyncio.events._get_running_loop()
        asyncio.events._set_running_loop(self)
        try:
            yield
        finally:
            asyncio.events._set_running_loop(previous)

    def close_tasks(self) -> None:
        """Close the coroutines of a suspended workflow so that nothing of it stays in memory."""
        with self.running():
            for task in self._tasks:
                if task.done():
                    continue
                coro = task.get_coro()
                if isinstance(coro, Coroutine):
                    with contextlib.suppress(BaseException):
                        coro.close()
        self._ready.clear()


class Activation:
    """The workflow function running on its replay loop: started once, then advanced round by round.

    :func:`activate` replays a run from its start every time. An activation kept after it suspended can instead
    be resumed (:meth:`resume`) with the run's next state: only the new round runs (the sticky cache of a worker). Both
    give the same events; keeping one is an optimisation, never required for correctness.
    """

    def __init__(self, state: RunState, workflow: Workflow, now_ms: int) -> None:
        self.workflow = workflow
        self._loop = ReplayLoop(now_ms / 1000)  # type: ignore[abstract]  # see the class docstring
        self._ctx = Context(state, self._loop, now_ms, workflow.retry, workflow.step_timeout)
        self._task: asyncio.Task[Any] | None = None

    @property
    def suspended(self) -> bool:
        """Whether the function waits at an ``await`` (neither finished nor diverged)."""
        return self._task is not None and not self._task.done() and self._ctx.divergence is None

    def run(self, state: RunState) -> list[EventBody]:
        """Run the function from its start up to ``state``'s last round; the events of what it did next."""
        ctx = self._ctx
        try:
            args: tuple[Any, ...] = (
                (payload.decode(state.input, self.workflow.input_type),) if self.workflow.takes_input else ()
            )
        except ValueError as exc:
            error = ErrorInfo("InvalidInput", f"the input does not match {self.workflow!r}: {exc}", False)
            return [WorkflowFailed(error)]
        try:
            with self._loop.running():
                self._task = self._loop.create_task(self.workflow.fn(ctx, *args))
                self._loop.run_ready()
                self._rounds(state)
        except NonDeterminismError:
            pass  # recorded in ctx.divergence, even if the workflow code caught it
        return self._outcome(state)

    def resume(self, state: RunState, now_ms: int) -> list[EventBody] | None:
        """Run only the round ``state`` adds to what this activation saw; ``None`` if that is not one round."""
        ctx = self._ctx
        if self._task is None or self._task.done() or ctx.divergence is not None:
            return None
        if state.resolutions != ctx.round + 1 or len(state.journal) != ctx.calls:
            return None
        ctx.reopen(state, now_ms)
        self._loop.set_time(now_ms)
        try:
            with self._loop.running():
                self._rounds(state)
        except NonDeterminismError:
            pass
        return self._outcome(state)

    def close(self) -> None:
        """Close the suspended coroutines so that nothing of the run stays in memory."""
        self._loop.close_tasks()

    def _rounds(self, state: RunState) -> None:
        task = self._task
        assert task is not None
        for resolution in range(self._ctx.round + 1, state.resolutions + 1):
            if task.done():
                raised = None if task.cancelled() else task.exception()
                how = f"raised {type(raised).__name__}: {raised}" if raised is not None else "returned"
                self._ctx.diverge(f"on replay it {how} before result {resolution} of {state.resolutions} arrived")
            self._ctx.begin_round(resolution)
            self._loop.run_ready()

    def _outcome(self, state: RunState) -> list[EventBody]:
        ctx, task = self._ctx, self._task
        assert task is not None
        ctx.close()
        if ctx.divergence is not None:
            self.close()
            return [WorkflowStuck(str(ctx.divergence))]
        if ctx.calls < len(state.journal):
            # Every journaled call must be made again: fewer means a step was removed or skipped.
            self.close()
            return [
                WorkflowStuck(
                    f"workflow {self.workflow.name!r} v{self.workflow.version} diverged from its journal: replay "
                    f"made {ctx.calls} calls but the journal holds {len(state.journal)}"
                )
            ]
        if not task.done():
            return ctx.new_events
        raised = task.exception() if not task.cancelled() else asyncio.CancelledError()
        if isinstance(raised, Cancelled):
            return [*ctx.new_events, WorkflowCancelled(raised.reason)]
        if raised is not None:
            return [*ctx.new_events, WorkflowFailed(error_info(raised))]
        try:
            return [*ctx.new_events, WorkflowCompleted(payload.encode(task.result()))]
        except (TypeError, ValueError) as err:
            return [WorkflowFailed(ErrorInfo("InvalidResult", f"the result cannot be encoded as JSON: {err}", False))]


def activate(state: RunState, workflow: Workflow, now_ms: int) -> list[EventBody]:
    """Run the workflow against ``state``'s journal and return the events of what it did next.

    Returns new ``StepScheduled``/``ValueRecorded`` events while it suspends, and a ``WorkflowCompleted`` or
    ``WorkflowFailed`` once it ends. A divergence from the journal returns only ``WorkflowStuck``.
    """
    activation = Activation(state, workflow, now_ms)
    events = activation.run(state)
    activation.close()
    return events
