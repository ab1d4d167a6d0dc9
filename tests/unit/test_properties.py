"""Properties of the actor: duplicates change nothing, order of results does not change the outcome, and
folding the history gives the state."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from actors import Context, Workflow, payload
from actors.actor import Actor, fold
from actors.commands import Command, CompleteStep, StartWorkflow
from actors.events import Event
from actors.model import RunState, RunStatus
from actors.workflow import Registry
from tests.unit.steps import inc

fan = Workflow("fan4")


@fan.main
async def fan_main(ctx: Context, x: int) -> list[int]:
    return list(await asyncio.gather(*(ctx.step(f"s{i}", inc, x + i) for i in range(4))))


ACTOR = Actor(Registry([fan]))
START = Command("start", "default", "w", 1_000, StartWorkflow("fan4", payload.encode(10)))
RESULTS = [
    Command(f"r{i}", "default", "w", 2_000 + i, CompleteStep(i, 1, payload.encode(11 + i), 1_500)) for i in range(4)
]


def _apply(commands: list[Command]) -> tuple[RunState | None, list[Event]]:
    state: RunState | None = None
    history: list[Event] = []
    for command in commands:
        outcome = ACTOR.handle(state, command)
        state = outcome.state
        history.extend(outcome.events)
    return state, history


def _without_history_noise(state: RunState | None) -> Any:
    # Dropped duplicates are recorded in the history (operators see them), so history_len may differ.
    return None if state is None else (state.status, state.journal, state.result, state.resolutions)


@settings(max_examples=200, deadline=None)
@given(order=st.permutations(range(4)), dupes=st.lists(st.integers(0, 4), max_size=8), data=st.data())
def test_duplicates_in_any_order_give_the_same_state(order: list[int], dupes: list[int], data: st.DataObject) -> None:
    clean = [START, *(RESULTS[i] for i in order)]
    noisy = list(clean)
    for d in dupes:
        original = clean[d]
        first = noisy.index(original)
        noisy.insert(data.draw(st.integers(first + 1, len(noisy))), original)

    clean_state, _ = _apply(clean)
    noisy_state, _ = _apply(noisy)

    assert _without_history_noise(clean_state) == _without_history_noise(noisy_state)


@settings(max_examples=100, deadline=None)
@given(order=st.permutations(range(4)))
def test_results_in_any_order_give_the_same_result(order: list[int]) -> None:
    state, _ = _apply([START, *(RESULTS[i] for i in order)])

    assert state is not None
    assert RunStatus.COMPLETED == state.status
    assert [11, 12, 13, 14] == payload.decode(state.result) if state.result else None


@settings(max_examples=100, deadline=None)
@given(order=st.permutations(range(4)), cut=st.integers(0, 4))
def test_folding_the_history_gives_the_state(order: list[int], cut: int) -> None:
    state, history = _apply([START, *(RESULTS[i] for i in order)][: cut + 1])

    assert state == fold(None, history)
