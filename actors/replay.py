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


def activate(state: RunState, workflow: Workflow, now_ms: int) -> list[EventBody]:
    """Run the workflow against ``state``'s journal and return the events of what it did next.

    Returns new ``StepScheduled``/``ValueRecorded`` events while it suspends, and a ``WorkflowCompleted`` or
    ``WorkflowFailed`` once it ends. A divergence from the journal returns only ``WorkflowStuck``.
    """
    loop = ReplayLoop(now_ms / 1000)  # type: ignore[abstract]  # see the class docstring
    ctx = Context(state, loop, now_ms, workflow.retry, workflow.step_timeout)
    try:
        args: tuple[Any, ...] = (payload.decode(state.input, workflow.input_type),) if workflow.takes_input else ()
    except ValueError as exc:
        return [WorkflowFailed(ErrorInfo("InvalidInput", f"the input does not match {workflow!r}: {exc}", False))]
    try:
        with loop.running():
            task = loop.create_task(workflow.fn(ctx, *args))
            loop.run_ready()
            for resolution in range(1, state.resolutions + 1):
                if task.done():
                    raised = None if task.cancelled() else task.exception()
                    how = f"raised {type(raised).__name__}: {raised}" if raised is not None else "returned"
                    ctx.diverge(f"on replay it {how} before result {resolution} of {state.resolutions} arrived")
                ctx.begin_round(resolution)
                loop.run_ready()
    except NonDeterminismError:
        pass  # recorded in ctx.divergence, even if the workflow code caught it
    ctx.close()
    if ctx.divergence is not None:
        loop.close_tasks()
        return [WorkflowStuck(str(ctx.divergence))]
    if ctx.calls < len(state.journal):
        # Every journaled call must be made again: fewer means a step was removed or skipped.
        loop.close_tasks()
        return [
            WorkflowStuck(
                f"workflow {workflow.name!r} v{workflow.version} diverged from its journal: replay made "
                f"{ctx.calls} calls but the journal holds {len(state.journal)}"
            )
        ]
    if not task.done():
        loop.close_tasks()
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
