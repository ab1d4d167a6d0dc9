"""Poison code: each bad workflow is failed or parked visibly, and the other runs keep their pace."""

from __future__ import annotations

import asyncio

import pytest

from actors import RunFailed
from actors.model import RunState, RunStatus
from streams.client import Client, RunHandle
from streams.settings import Settings
from streams.worker import Worker
from tests.support import eventually
from tests.workflows import Greeting, chain

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """A worker that replays on every result: two of these workflows misbehave only when replayed, and a kept
    coroutine (the default) would not be replayed until the worker restarts or lets it go."""
    return settings.model_copy(update={"suspended_runs": 0})


async def test_bad_workflows_are_failed_or_parked_while_the_others_complete(worker: Worker, client: Client) -> None:
    replayed = await client.start("poison_replay", 0, id="poison-replay")
    hung = await client.start("hung", 0, id="poison-hung")
    nondeterministic = await client.start("nondeterministic", 0, id="poison-nd")
    healthy = await asyncio.gather(*(client.start(chain, Greeting(name=f"h{i}"), id=f"healthy-{i}") for i in range(50)))

    results = await asyncio.gather(*(h.result(timeout=60) for h in healthy))
    assert 50 == len(results)

    async def parked(handle: RunHandle) -> RunState | None:
        state = await handle.status()
        return state if state is not None and state.status is RunStatus.STUCK else None

    replay_stuck = await eventually(lambda: parked(replayed), timeout=60)
    assert "on replay it raised RuntimeError: this workflow fails whenever it is replayed" in replay_stuck.reason

    with pytest.raises(RunFailed) as hung_failure:
        await hung.result(timeout=60)
    assert "StepTimeout" == hung_failure.value.error.type
    assert "after 2 attempt(s)" in hung_failure.value.error.message

    stuck = await eventually(lambda: parked(nondeterministic), timeout=60)
    assert "diverged from its journal" in stuck.reason
    assert stuck.reason in [str(getattr(e.body, "reason", "")) for e in await nondeterministic.history()]
