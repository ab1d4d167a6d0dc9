"""Declaring workflows: ``Workflow`` and the ``Registry`` a worker serves.

Example:
    ```python
    orders = Workflow("order", version="1")

    @orders.main
    async def run(ctx: Context, req: OrderRequest) -> Receipt:
        charge = await ctx.step("charge", charge_card, req)
        return Receipt(charge_id=charge.id)
    ```
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from actors.errors import WorkflowDefinitionError
from actors.policy import DEFAULT_RETRY, RetryPolicy

if TYPE_CHECKING:
    from actors.context import Context

WorkflowFunction = Callable[["Context", Any], Awaitable[Any]] | Callable[["Context"], Awaitable[Any]]
"""A workflow's main function: ``async def fn(ctx, input)``, or ``async def fn(ctx)`` for one without input."""

_Main = TypeVar("_Main", bound=WorkflowFunction)


@dataclass(frozen=True, slots=True)
class Trigger:
    """Start a run of a workflow for every record of a user topic.

    Attributes:
        topic: the topic to read.
        id_from: ``"offset"``: the run id is ``topic-partition-offset``; ``"key"``: the record's key (UTF-8).
            Either way, a record read again after a crash starts no second run.
        tenant: the tenant of the runs it starts.
        group: the consumer group (default ``<prefix>trigger.<workflow>.<topic>``).
    """

    topic: str
    id_from: Literal["offset", "key"] = "offset"
    tenant: str = "default"
    group: str = ""


class Workflow:
    """A named, versioned workflow type.

    Args:
        name: the workflow type, as clients name it when they start a run.
        version: the code version; a run is pinned to the version it started with.
        retry: the default retry policy of its steps.
        step_timeout: the default per-attempt timeout of its steps (``None``: no timeout).
        timeout: how long a whole run may take (``None``: no limit).
    """

    def __init__(
        self,
        name: str,
        *,
        version: str = "1",
        retry: RetryPolicy = DEFAULT_RETRY,
        step_timeout: timedelta | None = None,
        timeout: timedelta | None = None,
    ) -> None:
        if not name or "/" in name:
            raise WorkflowDefinitionError(f"a workflow name must be non-empty and contain no '/': {name!r}")
        self.name = name
        self.version = version
        self.retry = retry
        self.step_timeout = step_timeout
        self.timeout = timeout
        self._fn: WorkflowFunction | None = None
        self._takes_input = False
        self.input_type: Any = Any
        self.output_type: Any = Any
        self.triggers: list[Trigger] = []

    def main(self, fn: _Main) -> _Main:
        """Decorate the workflow's ``async def fn(ctx, input)`` or ``fn(ctx)``; the input annotation decodes input."""
        decorated = fn  # returned as given (the check below narrows ``fn`` to a plain coroutine function)
        if not inspect.iscoroutinefunction(fn):
            raise WorkflowDefinitionError(f"workflow {self.name!r}: the main function must be `async def`")
        params = list(inspect.signature(fn).parameters.values())
        if not 1 <= len(params) <= 2:
            raise WorkflowDefinitionError(f"workflow {self.name!r}: main takes (ctx) or (ctx, input)")
        hints = typing.get_type_hints(fn)
        if len(params) == 2:
            self.input_type = hints.get(params[1].name, Any)
        self.output_type = hints.get("return", Any)
        self._takes_input = len(params) == 2
        self._fn = decorated
        return decorated

    def trigger(
        self, topic: str, *, id_from: Literal["offset", "key"] = "offset", tenant: str = "default", group: str = ""
    ) -> Trigger:
        """Start a run for every record of ``topic``; the record's value (JSON) is the input.

        The worker reads the topic in its own consumer group and commits a record's offset only after its
        start is durable in the inbox, so no record is skipped and none starts two runs.
        """
        if id_from not in ("offset", "key"):
            raise WorkflowDefinitionError(f"id_from must be 'offset' or 'key', not {id_from!r}")
        trigger = Trigger(topic, id_from, tenant, group)
        self.triggers.append(trigger)
        return trigger

    @property
    def fn(self) -> WorkflowFunction:
        """The main function."""
        if self._fn is None:
            raise WorkflowDefinitionError(f"workflow {self.name!r} has no @main function")
        return self._fn

    @property
    def takes_input(self) -> bool:
        """Whether main takes an input argument."""
        self.fn  # noqa: B018 - raises when main is missing
        return self._takes_input

    def __repr__(self) -> str:
        return f"Workflow({self.name!r}, version={self.version!r})"


class Registry:
    """The workflows a worker serves, by name and version. The newest registered version starts new runs."""

    def __init__(self, workflows: Iterable[Workflow] = ()) -> None:
        self._by_key: dict[tuple[str, str], Workflow] = {}
        self._latest: dict[str, Workflow] = {}
        for workflow in workflows:
            self.add(workflow)

    def add(self, workflow: Workflow) -> Workflow:
        """Register ``workflow``; registering the same name and version twice is an error."""
        key = (workflow.name, workflow.version)
        if key in self._by_key and self._by_key[key] is not workflow:
            raise WorkflowDefinitionError(f"{workflow!r} is registered twice")
        workflow.fn  # noqa: B018 - fail now, not at the first run, when main is missing
        self._by_key[key] = workflow
        self._latest[workflow.name] = workflow
        return workflow

    def get(self, name: str, version: str = "") -> Workflow | None:
        """The workflow ``name`` at ``version`` (empty: the newest), or ``None``."""
        if not version:
            return self._latest.get(name)
        return self._by_key.get((name, version))

    def __iter__(self) -> Iterator[Workflow]:
        return iter(self._by_key.values())

    def __len__(self) -> int:
        return len(self._by_key)

    @classmethod
    def of(cls, app: object) -> Registry:
        """A registry from what ``--app`` names: a Registry, a Workflow, or an iterable of Workflows."""
        if isinstance(app, Registry):
            return app
        if isinstance(app, Workflow):
            return cls([app])
        if isinstance(app, Iterable):
            items = list(app)
            if all(isinstance(w, Workflow) for w in items):
                return cls(items)
        raise WorkflowDefinitionError(f"expected a Registry, a Workflow or a list of Workflows, got {app!r}")
