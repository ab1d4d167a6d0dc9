"""Kept coroutines: a run waiting on steps resumes where it awaits, and gives the events a full replay gives."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors import Context, Workflow
from actors.actor import Actor
from actors.commands import Command, FireTimer
from actors.errors import ErrorInfo, StepFailed
from actors.model import RunState
from actors.workflow import Registry
from tests.unit.core import Run, kinds
from tests.unit.steps import inc
from tests.unit.test_fuzz import commands
from tests.workflows import app

entered: list[str] = []

chain = Workflow("sticky_chain")


@chain.main
async def chain_main(ctx: Context, x: int) -> int:
    entered.append(ctx.workflow_id)
    for i in range(3):
        x = await ctx.step(f"s{i}", inc, x)
    return x


napper = Workflow("sticky_napper")


@napper.main
async def napper_main(ctx: Context, x: int) -> int:
    entered.append(ctx.workflow_id)
    x = await ctx.step("before", inc, x)
    await ctx.sleep("nap", timedelta(seconds=5))
    return await ctx.step("after", inc, x)


rescuer = Workflow("sticky_rescuer")


@rescuer.main
async def rescuer_main(ctx: Context, x: int) -> list[int]:
    entered.append(ctx.workflow_id)
    try:
        first = await ctx.step("first", inc, x)
    except StepFailed:
        first = -1
    both = await asyncio.gather(ctx.step("a", inc, first), ctx.step("b", inc, first))
    return [first, *both]


def _run(workflow_id: str, *, kept: int = 100) -> Run:
    entered.clear()
    return Run(Actor(Registry([chain, napper, rescuer]), suspended_runs=kept), workflow_id=workflow_id)


def test_a_run_waiting_on_steps_resumes_without_replay() -> None:
    run = _run("c")
    run.start(chain, 1)
    for seq in range(3):
        run.complete(seq, 2 + seq)

    assert run.state is not None
    assert run.state.status.value == "completed"
    assert entered == ["c"]  # entered once: every result resumed the kept coroutine


def test_without_kept_coroutines_every_result_replays_from_the_start() -> None:
    run = _run("c", kept=0)
    run.start(chain, 1)
    for seq in range(3):
        run.complete(seq, 2 + seq)

    assert entered == ["c"] * 4


def test_a_sleeping_run_keeps_nothing_and_replays_when_it_wakes() -> None:
    run = _run("n")
    run.start(napper, 1)
    run.complete(0, 2)  # now it sleeps: the coroutine is closed
    assert run.state is not None
    [timer] = run.state.timers
    run.command(FireTimer(timer.id, timer.due_ms))

    assert entered == ["n", "n"]


def test_a_state_that_is_not_the_one_it_produced_is_replayed() -> None:
    run = _run("c")
    run.start(chain, 1)
    assert run.state is not None
    run.state = RunState(**{f: getattr(run.state, f) for f in RunState.__dataclass_fields__})  # an equal copy
    run.complete(0, 2)

    assert entered == ["c", "c"]


def test_a_failed_step_and_parallel_steps_resume_like_a_replay() -> None:
    kept, replayed = _run("r"), _run("r", kept=0)
    for run in (kept, replayed):
        run.start(rescuer, 1)
        run.fail(0, ErrorInfo("Boom", "no", retryable=False))
        run.complete(2, 5)
        run.complete(1, 4)

    assert kept.state == replayed.state
    assert kinds(kept.history) == kinds(replayed.history)
    assert kept.state is not None
    assert kept.state.status.value == "completed"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sequence=st.lists(commands, max_size=25))
def test_kept_coroutines_give_the_events_a_full_replay_gives(sequence: list[Command]) -> None:
    # Leaving out the two workflows that misbehave on purpose whenever they are replayed.
    honest = Registry([w for w in app if w.name not in ("poison_replay", "nondeterministic")])
    sticky, plain = Actor(honest), Actor(honest, suspended_runs=0)
    states: dict[str, tuple[RunState | None, RunState | None]] = {}
    for command in sequence:
        s, p = states.get(command.key, (None, None))
        a, b = sticky.handle(s, command), plain.handle(p, command)
        assert (a.events, a.rejected) == (b.events, b.rejected)
        states[command.key] = (a.state, b.state)
