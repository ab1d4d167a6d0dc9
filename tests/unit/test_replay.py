"""The replay executor: steps are memoized, parallel steps are scheduled together, divergence parks the run."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from actors import Context, RetryPolicy, StepFailed, TerminalError, Workflow, payload
from actors.actor import Actor
from actors.commands import Command, CompleteStep, FireTimer, SendEvent
from actors.errors import ErrorInfo
from actors.events import (
    StepResultDropped,
    StepScheduled,
    ValueRecorded,
    WorkflowCompleted,
    WorkflowFailed,
    WorkflowStuck,
)
from actors.model import RunStatus
from actors.replay import activate
from tests.unit.core import kinds, run_of
from tests.unit.steps import double, inc, name_of

chain = Workflow("chain")


@chain.main
async def chain_main(ctx: Context, x: int) -> int:
    a = await ctx.step("inc", inc, x)
    b = await ctx.step("double", double, a)
    return await ctx.step("inc", inc, b)


fan = Workflow("fan")


@fan.main
async def fan_main(ctx: Context, x: int) -> list[int]:
    first = await ctx.step("inc", inc, x)
    pair = await asyncio.gather(ctx.step("a", double, first), ctx.step("b", inc, first), ctx.step("c", inc, 0))
    return list(pair)


def test_first_activation_schedules_the_first_step_only() -> None:
    run = run_of(chain)

    events = run.start(chain, 1)

    assert ["WorkflowStarted", "StepScheduled"] == kinds(events)
    step = events[1].body
    assert isinstance(step, StepScheduled)
    assert ("inc", 1, 1, "tests.unit.steps:inc") == (step.name, step.occurrence, step.attempt, step.function)


def test_completed_steps_are_replayed_from_the_journal_and_the_run_completes() -> None:
    run = run_of(chain)
    run.start(chain, 1)
    run.complete(0, 2)
    run.complete(1, 4)

    events = run.complete(2, 5)

    assert ["StepCompleted", "WorkflowCompleted"] == kinds(events)
    assert run.state is not None
    assert RunStatus.COMPLETED == run.state.status
    assert b"5" == run.state.result.data if run.state.result else None
    assert [1, 1, 2] == [s.occurrence for s in run.scheduled()]


def test_replaying_a_journal_gives_the_same_commands() -> None:
    run = run_of(fan)
    run.start(fan, 1)
    first = run.complete(0, 2)
    assert run.state is not None

    again = activate(run.state, fan, now_ms=99_999)

    assert [] == again  # everything the code asks for is already in the journal
    assert ["StepCompleted", "StepScheduled", "StepScheduled", "StepScheduled"] == kinds(first)


def test_parallel_steps_are_scheduled_in_one_activation() -> None:
    run = run_of(fan)
    run.start(fan, 1)

    events = run.complete(0, 2)

    scheduled = [e.body for e in events if isinstance(e.body, StepScheduled)]
    assert [("a", 1), ("b", 2), ("c", 3)] == [(s.name, s.seq) for s in scheduled]


def test_results_arriving_in_any_order_complete_the_fan_out() -> None:
    run = run_of(fan)
    run.start(fan, 1)
    run.complete(0, 2)
    run.complete(3, 1)
    run.complete(1, 4)

    events = run.complete(2, 3)

    assert isinstance(events[-1].body, WorkflowCompleted)
    assert b"[4,3,1]" == events[-1].body.result.data


racer = Workflow("racer")


async def _branch(ctx: Context, name: str, x: int) -> int:
    first = await ctx.step(f"{name}1", inc, x)
    return await ctx.step(f"{name}2", inc, first)


@racer.main
async def racer_main(ctx: Context, x: int) -> list[int]:
    return list(await asyncio.gather(_branch(ctx, "left", x), _branch(ctx, "right", x)))


def test_racing_branches_replay_in_the_order_their_results_arrived() -> None:
    run = run_of(racer)
    run.start(racer, 0)  # left1 (0), right1 (1)
    run.complete(1, 1)  # right1 first: right2 becomes call 2
    run.complete(0, 1)  # then left1: left2 becomes call 3
    run.complete(3, 2)

    events = run.complete(2, 2)

    assert [("left1", 0), ("right1", 1), ("right2", 2), ("left2", 3)] == [(s.name, s.seq) for s in run.scheduled()]
    assert isinstance(events[-1].body, WorkflowCompleted)
    assert b"[2,2]" == events[-1].body.result.data


immediate = Workflow("immediate", retry=RetryPolicy(max_attempts=3, initial_interval=timedelta(0)))
immediate.main(chain_main)

renamed = Workflow("chain")


@renamed.main
async def renamed_main(ctx: Context, x: int) -> int:
    a = await ctx.step("increment", inc, x)
    return await ctx.step("double", double, a)


def test_a_renamed_step_parks_the_run_as_stuck_and_touches_nothing_else() -> None:
    run = run_of(chain)
    run.start(chain, 1)
    run.complete(0, 2)
    assert run.state is not None
    state = run.state

    events = activate(state, renamed, now_ms=5_000)

    assert 1 == len(events)
    assert isinstance(events[0], WorkflowStuck)
    assert "call 0 is step 'increment' but the journal recorded step 'inc'" in events[0].reason


def test_a_removed_step_is_detected_when_the_next_result_arrives() -> None:
    shorter = Workflow("fan")

    @shorter.main
    async def shorter_main(ctx: Context, x: int) -> list[int]:
        first = await ctx.step("inc", inc, x)
        return list(await asyncio.gather(ctx.step("a", double, first), ctx.step("b", inc, first)))

    run = run_of(fan)
    run.start(fan, 1)
    run.complete(0, 2)
    run.actor.registry = type(run.actor.registry)([shorter])

    events = run.complete(3, 1)

    assert isinstance(events[-1].body, WorkflowStuck)
    assert run.state is not None
    assert RunStatus.STUCK == run.state.status
    assert "diverged" in run.state.reason
    assert not any(isinstance(e.body, StepScheduled) for e in events)


def test_caught_divergence_still_parks_the_run() -> None:
    sneaky = Workflow("chain")

    @sneaky.main
    async def sneaky_main(ctx: Context, x: int) -> int:
        try:
            await ctx.step("other", inc, x)
        except Exception:  # noqa: BLE001 - the point of the test
            return -1
        return 0

    run = run_of(chain)
    run.start(chain, 1)
    run.complete(0, 2)
    assert run.state is not None

    events = activate(run.state, sneaky, now_ms=5_000)

    assert [WorkflowStuck] == [type(e) for e in events]


clock = Workflow("clock")


@clock.main
async def clock_main(ctx: Context, _: int) -> list[str]:
    before = ctx.now().isoformat()
    token = str(ctx.uuid())
    await ctx.step("inc", inc, 1)
    return [before, token, str(ctx.uuid()), str(ctx.random().random())]


def test_now_uuid_and_random_are_the_same_on_every_replay() -> None:
    run = run_of(clock)
    first = run.start(clock, 0)
    recorded = [e.body for e in first if isinstance(e.body, ValueRecorded)]

    done = run.complete(1, 2)
    assert run.state is not None
    again = activate(run.state, clock, now_ms=10**12)

    assert 1 == len(recorded)
    assert isinstance(done[-1].body, WorkflowCompleted)
    assert [] == again[:-1]
    assert isinstance(again[-1], WorkflowCompleted)
    assert done[-1].body.result == again[-1].result
    assert b"1970-01-01T00:00:01.010000+00:00" in again[-1].result.data


compensating = Workflow("compensating")


@compensating.main
async def compensating_main(ctx: Context, x: int) -> str:
    try:
        await ctx.step("charge", inc, x)
    except StepFailed as exc:
        await ctx.step("refund", name_of, x)
        return f"refunded after {exc.error.message}"
    return "charged"


def test_terminal_error_is_not_retried_and_reaches_the_workflow() -> None:
    run = run_of(compensating)
    run.start(compensating, 1)

    events = run.fail(0, ErrorInfo("TerminalError", "declined", retryable=False))

    assert ["StepAttemptFailed", "StepScheduled"] == kinds(events)
    assert isinstance(events[1].body, StepScheduled)
    assert "refund" == events[1].body.name
    done = run.complete(1, "n1")
    assert isinstance(done[-1].body, WorkflowCompleted)
    assert b'"refunded after declined"' == done[-1].body.result.data


def test_retryable_failure_schedules_the_next_attempt_until_attempts_run_out() -> None:
    run = run_of(immediate)
    run.start(immediate, 1)
    error = ErrorInfo("ConnectionError", "down")

    second = run.fail(0, error, attempt=1)
    third = run.fail(0, error, attempt=2)
    last = run.fail(0, error, attempt=3)

    assert ["StepAttemptFailed", "StepScheduled"] == kinds(second)
    assert isinstance(second[1].body, StepScheduled)
    assert 2 == second[1].body.attempt
    assert isinstance(third[1].body, StepScheduled)
    assert 3 == third[1].body.attempt
    assert ["StepAttemptFailed", "WorkflowFailed"] == kinds(last)
    assert isinstance(last[-1].body, WorkflowFailed)
    assert "after 3 attempt(s)" in last[-1].body.error.message


def test_a_result_for_an_old_attempt_is_dropped() -> None:
    run = run_of(immediate)
    run.start(immediate, 1)
    run.fail(0, ErrorInfo("ConnectionError", "down"), attempt=1)

    events = run.complete(0, 2, attempt=1)

    assert ["StepResultDropped"] == kinds(events)
    assert isinstance(events[0].body, StepResultDropped)
    assert "attempt 1 of step 'inc' is not current (attempt 2 is)" == events[0].body.reason


def test_uncaught_exception_fails_the_run() -> None:
    broken = Workflow("broken")

    @broken.main
    async def broken_main(ctx: Context, x: int) -> int:
        raise TerminalError(f"no {x}")

    run = run_of(broken)

    events = run.start(broken, 3)

    assert ["WorkflowStarted", "WorkflowFailed"] == kinds(events)
    assert isinstance(events[1].body, WorkflowFailed)
    assert "no 3" == events[1].body.error.message


def test_asyncio_sleep_is_refused_with_a_clear_error() -> None:
    sleepy = Workflow("sleepy")

    @sleepy.main
    async def sleepy_main(ctx: Context) -> None:
        await asyncio.sleep(1)

    run = run_of(sleepy)

    events = run.start(sleepy)

    assert isinstance(events[-1].body, WorkflowFailed)
    assert "use ctx.sleep" in events[-1].body.error.message


def test_input_that_does_not_fit_the_annotation_fails_the_run() -> None:
    run = run_of(chain)

    events = run.start(chain, "not a number")

    assert isinstance(events[-1].body, WorkflowFailed)
    assert "InvalidInput" == events[-1].body.error.type


def test_only_a_current_step_outcome_or_live_timer_is_taken_out_of_turn() -> None:
    run = run_of(chain)
    run.start(chain, 1)
    assert run.state is not None

    def command(body: object) -> Command:
        return Command("x", run.tenant, run.workflow_id, 5_000, body)  # type: ignore[arg-type]

    current = command(CompleteStep(0, 1, payload.encode(2), 5_000))
    assert Actor.answers(run.state, current)
    assert not Actor.answers(None, current)
    assert not Actor.answers(run.state, command(CompleteStep(0, 2, payload.encode(2), 5_000)))  # not this attempt
    assert not Actor.answers(run.state, command(CompleteStep(7, 1, payload.encode(2), 5_000)))  # no such step
    assert not Actor.answers(run.state, command(FireTimer("no-such-timer", 0)))
    assert not Actor.answers(run.state, command(SendEvent("approval", payload.encode(1))))
    run.complete(0, 2)
    assert not Actor.answers(run.state, current)  # a duplicate
