"""Durable time through the test kit: sleeps, retry backoff, step and workflow timeouts, stale timers."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from actors import Context, RetryPolicy, RunFailed, StepFailed, Workflow
from actors.commands import FireTimer
from actors.events import (
    StepAttemptFailed,
    StepResultDropped,
    StepScheduled,
    TimerCancelled,
    TimerFired,
    TimerScheduled,
)
from actors.model import RunStatus, TimerPurpose
from streams.testkit import TestDriver
from tests.unit import steps

START = datetime(2030, 1, 1, tzinfo=UTC)

monthly = Workflow("monthly")


@monthly.main
async def monthly_main(ctx: Context, x: int) -> dict[str, object]:
    before = await ctx.step("inc", steps.inc, x)
    await ctx.sleep("a month", timedelta(days=30))
    after = await ctx.step("double", steps.double, before)
    return {"value": after, "woke": ctx.now().isoformat()}


async def test_a_thirty_day_sleep_wakes_after_thirty_days_and_not_before() -> None:
    async with TestDriver(monthly, start=START) as driver:
        await driver.start(monthly, 1, id="m")
        state = driver.status("m")
        assert RunStatus.RUNNING == state.status
        assert int((START + timedelta(days=30)).timestamp() * 1000) == state.next_wake_up_ms()

        await driver.advance(timedelta(days=29, hours=23))
        assert RunStatus.RUNNING == driver.status("m").status

        await driver.advance(timedelta(hours=1))
        assert {"value": 4, "woke": "2030-01-31T00:00:00+00:00"} == driver.result("m")
        [fired] = [e.body for e in driver.history("m") if isinstance(e.body, TimerFired)]
        assert (TimerPurpose.SLEEP, 0) == (fired.timer.purpose, fired.late_ms)


until = Workflow("until")


@until.main
async def until_main(ctx: Context) -> str:
    await ctx.sleep_until("new year", datetime(2031, 1, 1, tzinfo=UTC))
    return ctx.now().isoformat()


async def test_sleep_until_wakes_at_the_given_time() -> None:
    async with TestDriver(until, start=START) as driver:
        await driver.start(until, id="u")
        await driver.advance(timedelta(days=400))

        assert "2031-01-01T00:00:00+00:00" == driver.result("u")


backoff = Workflow(
    "backoff",
    retry=RetryPolicy(
        max_attempts=5,
        initial_interval=timedelta(seconds=1),
        backoff_coefficient=2.0,
        max_interval=timedelta(seconds=5),
    ),
)


@backoff.main
async def backoff_main(ctx: Context) -> str:
    return await ctx.step("flaky", steps.always_fails, "x")


async def test_retry_attempts_start_at_the_times_the_policy_gives() -> None:
    async with TestDriver(backoff, start=START) as driver:
        await driver.start(backoff, id="b")
        await driver.advance(timedelta(minutes=1))

        starts = [e.at_ms for e in driver.history("b") if isinstance(e.body, StepScheduled)]
        t0 = int(START.timestamp() * 1000)
        assert [t0, t0 + 1_000, t0 + 3_000, t0 + 7_000, t0 + 12_000] == starts
        with pytest.raises(RunFailed) as failed:
            driver.result("b")
        assert "steps.Flaky" in failed.value.error.type
        assert "after 5 attempt(s)" in failed.value.error.message


slow = Workflow("slow", retry=RetryPolicy(max_attempts=3, initial_interval=timedelta(seconds=1)))


@slow.main
async def slow_main(ctx: Context, label: str) -> str:
    return await ctx.step("slow", steps.hangs_first, label, timeout=timedelta(seconds=10))


async def test_an_attempt_that_times_out_is_retried_and_its_late_result_is_dropped() -> None:
    async with TestDriver(slow, start=START) as driver:
        await driver.start(slow, "t1", id="t")
        await driver.advance(timedelta(seconds=10))
        failed = [e.body for e in driver.history("t") if isinstance(e.body, StepAttemptFailed)]
        assert [("StepTimeout", 1, False)] == [(f.error.type, f.attempt, f.final) for f in failed]

        await driver.advance(timedelta(seconds=1))
        assert "t1 on attempt 2" == driver.result("t")

        steps.RELEASE["t1"].set()  # attempt 1 finally answers
        await asyncio.sleep(0.01)
        await driver.run_until_idle()
        [dropped] = [e.body for e in driver.history("t") if isinstance(e.body, StepResultDropped)]
        assert 1 == dropped.attempt
        assert "t1 on attempt 2" == driver.result("t")


picky = Workflow("picky", retry=RetryPolicy(max_attempts=5, non_retryable=(KeyError,)))


@picky.main
async def picky_main(ctx: Context) -> str:
    try:
        return await ctx.step("lookup", steps.missing_key, "k")
    except StepFailed as exc:
        return f"gave up after {exc.attempts}: {exc.error.type}"


async def test_a_non_retryable_error_fails_the_step_on_its_first_attempt() -> None:
    async with TestDriver(picky, start=START) as driver:
        await driver.start(picky, id="p")

        assert "gave up after 1: KeyError" == driver.result("p")
        assert 1 == sum(isinstance(e.body, StepScheduled) for e in driver.history("p"))


bounded = Workflow("bounded", timeout=timedelta(hours=1))


@bounded.main
async def bounded_main(ctx: Context) -> str:
    await ctx.sleep("too long", timedelta(hours=2))
    return "woke"


async def test_a_workflow_timeout_fails_the_run() -> None:
    async with TestDriver(bounded, start=START) as driver:
        await driver.start(bounded, id="w")
        await driver.advance(timedelta(hours=1))

        with pytest.raises(RunFailed) as failed:
            driver.result("w")
        assert "WorkflowTimeout" == failed.value.error.type
        cancelled = [e.body.timer_id for e in driver.history("w") if isinstance(e.body, TimerCancelled)]
        assert ["sleep/0/1"] == cancelled
        assert [] == driver.pending_timers()


quick = Workflow("quick")


@quick.main
async def quick_main(ctx: Context, x: int) -> int:
    return await ctx.step("inc", steps.inc, x, timeout=timedelta(seconds=30))


async def test_a_stale_timeout_timer_changes_nothing_when_it_fires() -> None:
    async with TestDriver(quick, start=START) as driver:
        await driver.start(quick, 1, id="q")
        [scheduled] = [e.body.timer for e in driver.history("q") if isinstance(e.body, TimerScheduled)]
        assert TimerPurpose.STEP_TIMEOUT == scheduled.purpose
        assert 2 == driver.result("q")
        before = (driver.status("q"), driver.history("q"))

        driver.send("default", "q", FireTimer(scheduled.id, scheduled.due_ms))  # fires late, after the step ended
        await driver.advance(timedelta(minutes=1))

        assert before == (driver.status("q"), driver.history("q"))
