"""A pure driver for unit tests: feeds commands to an Actor and answers its steps by hand."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from actors import payload
from actors.actor import Actor, fold
from actors.commands import Command, CompleteStep, FailStep, StartWorkflow
from actors.errors import ErrorInfo
from actors.events import Event, StepScheduled
from actors.model import RunState
from actors.workflow import Registry, Workflow


@dataclass
class Run:
    """One run driven by hand: its state, its history, and the step attempts it is waiting for."""

    actor: Actor
    workflow_id: str = "w1"
    tenant: str = "default"
    state: RunState | None = None
    history: list[Event] = field(default_factory=list)
    clock: int = 1_000
    sent: int = 0

    def command(self, body: Any, command_id: str | None = None) -> list[Event]:
        self.sent += 1
        self.clock += 10
        cmd = Command(command_id or f"c{self.sent}", self.tenant, self.workflow_id, self.clock, body)
        outcome = self.actor.handle(self.state, cmd)
        assert not outcome.rejected, outcome.rejected
        self.state = outcome.state
        self.history.extend(outcome.events)
        return outcome.events

    def start(self, workflow: Workflow, value: Any = None) -> list[Event]:
        return self.command(StartWorkflow(workflow.name, payload.encode(value)))

    def complete(self, seq: int, value: Any, attempt: int = 1) -> list[Event]:
        return self.command(CompleteStep(seq, attempt, payload.encode(value), self.clock))

    def fail(self, seq: int, error: ErrorInfo, attempt: int = 1) -> list[Event]:
        return self.command(FailStep(seq, attempt, error, self.clock))

    def scheduled(self) -> list[StepScheduled]:
        return [e.body for e in self.history if isinstance(e.body, StepScheduled)]

    def refolded(self) -> RunState | None:
        return fold(None, self.history)


def run_of(*workflows: Workflow) -> Run:
    return Run(Actor(Registry(workflows)))


def kinds(events: list[Event]) -> list[str]:
    return [type(e.body).__name__ for e in events]
