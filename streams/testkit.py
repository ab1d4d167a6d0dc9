"""An in-memory test kit: workflows through the real actor core and step runner, on a clock the test moves.

No Kafka is involved.
A workflow that sleeps 30 days and retries with backoff is tested in milliseconds::

    async with TestDriver(app) as driver:
        await driver.start(orders, OrderRequest(...), id="o1")
        await driver.advance(timedelta(days=30))
        assert driver.result("o1") == ...

Steps really run (async steps on the loop, sync steps in a thread pool). ``run_until_idle`` waits for them
briefly in real time (``settle``), so a step that never returns does not block the test; its timeout fires when
the clock is advanced past it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

from actors import payload
from actors.actor import Actor
from actors.commands import (
    CancelWorkflow,
    Command,
    CommandBody,
    CompleteStep,
    FailStep,
    FireTimer,
    SendEvent,
    StartWorkflow,
)
from actors.context import StepInfo, idempotency_key
from actors.errors import RunCancelled, RunFailed
from actors.events import Event, StepScheduled, TimerCancelled, TimerFired, TimerScheduled
from actors.model import DEFAULT_TENANT, RunState, RunStatus, Timer, run_key
from actors.workflow import Registry, Workflow
from streams.clock import ManualClock
from streams.steps import StepError, run_step


class TestDriver:
    """Runs workflows in memory on a :class:`~streams.clock.ManualClock`.

    Args:
        app: a Registry, a Workflow or a list of Workflows.
        start: the clock's starting time.
        settle: real seconds to wait for running steps before calling the system idle.
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        app: object,
        *,
        start: datetime = datetime(2030, 1, 1, tzinfo=UTC),
        settle: float = 0.05,
        threads: int = 4,
    ) -> None:
        self.clock = ManualClock(start)
        self.actor = Actor(Registry.of(app))
        self.settle = settle
        self.states: dict[str, RunState] = {}
        self.histories: dict[str, list[Event]] = {}
        self.rejected: list[tuple[Command, str]] = []
        self._inbox: deque[Command] = deque()
        self._timers: dict[tuple[str, str], tuple[str, str, Timer]] = {}
        self._steps: set[asyncio.Task[Command]] = set()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="steady-testkit")

    async def __aenter__(self) -> TestDriver:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def now(self) -> datetime:
        """The driver's clock."""
        return datetime.fromtimestamp(self.clock.now_ms() / 1000, tz=UTC)

    # -- driving --------------------------------------------------------------------------------------------

    async def start(
        self,
        workflow: Workflow | str,
        input: Any = None,
        *,
        id: str | None = None,
        tenant: str = DEFAULT_TENANT,
    ) -> str:
        """Start a run and let it go as far as it can without the clock moving; returns its id."""
        workflow_id = id or str(uuid.uuid4())
        name = workflow.name if isinstance(workflow, Workflow) else workflow
        self.send(tenant, workflow_id, StartWorkflow(name, payload.encode(input)), f"start/{tenant}/{workflow_id}")
        await self.run_until_idle()
        return workflow_id

    def send(self, tenant: str, workflow_id: str, body: CommandBody, command_id: str | None = None) -> None:
        """Put a command in the inbox (it is applied by the next ``run_until_idle``)."""
        self._inbox.append(Command(command_id or str(uuid.uuid4()), tenant, workflow_id, self.clock.now_ms(), body))

    async def signal(self, id: str, name: str, value: Any = None, *, tenant: str = DEFAULT_TENANT) -> None:
        """Send run ``id`` the event ``name`` and let it react."""
        self.send(tenant, id, SendEvent(name, payload.encode(value)))
        await self.run_until_idle()

    async def cancel(self, id: str, reason: str = "", *, tenant: str = DEFAULT_TENANT) -> None:
        """Cancel run ``id`` and let it react (it may run compensation steps)."""
        self.send(tenant, id, CancelWorkflow(reason), f"cancel/{tenant}/{id}")
        await self.run_until_idle()

    async def run_until_idle(self) -> None:
        """Apply commands and run steps until nothing moves without the clock."""
        while True:
            while self._inbox:
                self._apply(self._inbox.popleft())
            if not self._steps:
                return
            done, _ = await asyncio.wait(self._steps, timeout=self.settle, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                return
            for task in done:
                self._steps.discard(task)
                self._inbox.append(task.result())

    async def advance(self, delta: timedelta) -> None:
        """Move the clock forward by ``delta``, firing every timer due on the way, in due order."""
        target = self.clock.now_ms() + int(delta / timedelta(milliseconds=1))
        await self.run_until_idle()
        while True:
            due = min((t.due_ms for _, _, t in self._timers.values()), default=None)
            if due is None or due > target:
                break
            self.clock.set_ms(due)
            for key, (tenant, workflow_id, timer) in sorted(self._timers.items(), key=lambda kv: kv[1][2].due_ms):
                if timer.due_ms <= due:
                    del self._timers[key]
                    self.send(tenant, workflow_id, FireTimer(timer.id, timer.due_ms), f"fire/{key}")
            await self.run_until_idle()
        self.clock.set_ms(target)
        await self.run_until_idle()

    # -- looking --------------------------------------------------------------------------------------------

    def status(self, id: str, *, tenant: str = DEFAULT_TENANT) -> RunState:
        """The run's state."""
        return self.states[run_key(tenant, id)]

    def history(self, id: str, *, tenant: str = DEFAULT_TENANT) -> list[Event]:
        """The run's events, in order."""
        return list(self.histories.get(run_key(tenant, id), []))

    def result(self, id: str, *, tenant: str = DEFAULT_TENANT, annotation: Any = Any) -> Any:
        """The run's result; raises :class:`RunFailed` if it failed, ``LookupError`` if it has not finished."""
        state = self.status(id, tenant=tenant)
        if state.error is not None:
            raise (RunCancelled if state.status is RunStatus.CANCELLED else RunFailed)(state.key, state.error)
        if state.result is None:
            raise LookupError(f"run {state.key} has not finished: it is {state.status.value}")
        return payload.decode(state.result, annotation)

    def pending_timers(self) -> list[Timer]:
        """Timers not fired yet, earliest first."""
        return sorted((t for _, _, t in self._timers.values()), key=lambda t: t.due_ms)

    async def close(self) -> None:
        """Cancel steps still running (for example ones that never return) and release the threads."""
        for task in self._steps:
            task.cancel()
        await asyncio.gather(*self._steps, return_exceptions=True)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- inside ---------------------------------------------------------------------------------------------

    def _apply(self, command: Command) -> None:
        outcome = self.actor.handle(self.states.get(command.key), command)
        if outcome.rejected:
            self.rejected.append((command, outcome.rejected))
            return
        if outcome.state is None:
            return
        self.states[command.key] = outcome.state
        self.histories.setdefault(command.key, []).extend(outcome.events)
        for event in outcome.events:
            body = event.body
            if isinstance(body, StepScheduled):
                info = StepInfo(
                    idempotency_key(event.tenant, event.workflow_id, body.name, body.occurrence),
                    body.attempt,
                    event.tenant,
                    event.workflow_id,
                    body.name,
                )
                self._steps.add(asyncio.create_task(self._run_step(event.tenant, event.workflow_id, body, info)))
            elif isinstance(body, TimerScheduled):
                self._timers[(command.key, body.timer.id)] = (event.tenant, event.workflow_id, body.timer)
            elif isinstance(body, TimerCancelled):
                self._timers.pop((command.key, body.timer_id), None)
            elif isinstance(body, TimerFired):
                self._timers.pop((command.key, body.timer.id), None)

    async def _run_step(self, tenant: str, workflow_id: str, step: StepScheduled, info: StepInfo) -> Command:
        started = self.clock.now_ms()
        outcome = await run_step(step.function, step.args, info, self._pool)
        body: CommandBody = (
            FailStep(step.seq, step.attempt, outcome.error, started, outcome.retry_after_ms)
            if isinstance(outcome, StepError)
            else CompleteStep(step.seq, step.attempt, outcome, started)
        )
        return Command(f"{info.idempotency_key}#{info.attempt}", tenant, workflow_id, self.clock.now_ms(), body)
