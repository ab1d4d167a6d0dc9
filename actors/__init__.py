"""The workflow model: authoring API and the per-run actor (pure: no Kafka, no disk, no clock)."""

from actors.context import Context, StepInfo, current_step
from actors.errors import (
    Cancelled,
    ErrorInfo,
    EventTimeout,
    NonDeterminismError,
    RetryableError,
    RunCancelled,
    RunFailed,
    SteadyError,
    StepFailed,
    TerminalError,
    WorkflowDefinitionError,
)
from actors.policy import RetryPolicy
from actors.workflow import Registry, Workflow

__all__ = [
    "Cancelled",
    "Context",
    "ErrorInfo",
    "EventTimeout",
    "NonDeterminismError",
    "Registry",
    "RetryPolicy",
    "RetryableError",
    "RunCancelled",
    "RunFailed",
    "SteadyError",
    "StepFailed",
    "StepInfo",
    "TerminalError",
    "Workflow",
    "WorkflowDefinitionError",
    "current_step",
]
