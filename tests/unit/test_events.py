"""Outside events and cancellation through the test kit."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from actors import Cancelled, Context, RunCancelled, Workflow, payload
from actors.commands import SendEvent
from actors.events import EventDelivered, EventReceived, StepScheduled, WorkflowCancelled
from actors.model import RunStatus
from streams.testkit import TestDriver
from tests.workflows import app

START = datetime(2030, 1, 1, tzinfo=UTC)


async def test_an_event_sent_after_the_wait_answers_it() -> None:
    async with TestDriver(app, start=START) as driver:
        await driver.start("approval", 60, id="a")
        await driver.signal("a", "approval", {"approver": "kim", "ok": True})

        assert "kim:True" == driver.result("a")


async def test_an_event_sent_before_the_wait_is_kept_and_delivered() -> None:
    early = Workflow("early")

    @early.main
    async def early_main(ctx: Context) -> str:
        await ctx.sleep("first", timedelta(minutes=5))
        return str(await ctx.wait_for_event("go"))

    async with TestDriver(early, start=START) as driver:
        await driver.start(early, id="e")
        await driver.signal("e", "go", "now")
        assert ["now"] == [e.payload.data.decode().strip('"') for e in driver.status("e").events]

        await driver.advance(timedelta(minutes=5))

        assert "now" == driver.result("e")
        kinds = [type(e.body) for e in driver.history("e")]
        assert kinds.index(EventReceived) < kinds.index(EventDelivered)


async def test_a_wait_without_its_event_times_out() -> None:
    async with TestDriver(app, start=START) as driver:
        await driver.start("approval", 60, id="t")
        await driver.advance(timedelta(seconds=59))
        assert RunStatus.RUNNING == driver.status("t").status

        await driver.advance(timedelta(seconds=1))

        assert "timed out" == driver.result("t")


async def test_events_are_delivered_in_arrival_order_and_resends_are_dropped() -> None:
    async with TestDriver(app, start=START) as driver:
        await driver.start("collector", 3, id="c")
        for i in range(3):
            driver.send("default", "c", SendEvent("item", payload.encode(i)), f"ev{i}")
        driver.send("default", "c", SendEvent("item", payload.encode(1)), "ev1")
        await driver.run_until_idle()

        assert [0, 1, 2] == driver.result("c")


async def test_several_waits_can_be_open_at_once() -> None:
    both = Workflow("both")

    @both.main
    async def both_main(ctx: Context) -> list[str]:
        return list(await asyncio.gather(ctx.wait_for_event("left"), ctx.wait_for_event("right")))

    async with TestDriver(both, start=START) as driver:
        await driver.start(both, id="b")
        await driver.signal("b", "right", "R")
        await driver.signal("b", "left", "L")

        assert ["L", "R"] == driver.result("b")


async def test_cancel_during_a_step_runs_compensation_and_ends_cancelled() -> None:
    async with TestDriver(app, start=START, settle=0.02) as driver:
        await driver.start("cancellable", "step", id="x")
        assert "slow" in [e.body.name for e in driver.history("x") if isinstance(e.body, StepScheduled)]

        await driver.cancel("x", "customer changed their mind")

        with pytest.raises(RunCancelled, match="customer changed their mind"):
            driver.result("x")
        names = [e.body.name for e in driver.history("x") if isinstance(e.body, StepScheduled)]
        assert ["reserve", "slow", "release"] == names
        assert isinstance(driver.history("x")[-1].body, WorkflowCancelled)


async def test_cancel_during_a_sleep_runs_compensation_and_clears_the_timer() -> None:
    async with TestDriver(app, start=START) as driver:
        await driver.start("cancellable", "sleep", id="s")

        await driver.cancel("s", "stop")

        assert RunStatus.CANCELLED == driver.status("s").status
        assert [] == driver.pending_timers()
        assert "release" == [e.body for e in driver.history("s") if isinstance(e.body, StepScheduled)][-1].name


async def test_a_workflow_that_catches_cancelled_may_finish_normally() -> None:
    stubborn = Workflow("stubborn")

    @stubborn.main
    async def stubborn_main(ctx: Context) -> str:
        try:
            await ctx.sleep("nap", timedelta(days=1))
        except Cancelled as exc:
            return f"cleaned up after {exc.reason}"
        return "slept"

    async with TestDriver(stubborn, start=START) as driver:
        await driver.start(stubborn, id="s")
        await driver.cancel("s", "shutdown")

        assert "cleaned up after shutdown" == driver.result("s")


async def test_kept_events_answering_several_open_waits_replay_one_round_each() -> None:
    pair = Workflow("pair")

    @pair.main
    async def pair_main(ctx: Context) -> list[object]:
        await ctx.sleep("later", timedelta(seconds=1))
        left, right = await asyncio.gather(ctx.wait_for_event("left"), ctx.wait_for_event("right"))
        after = await ctx.wait_for_event("left")
        return [left, right, after]

    async with TestDriver(pair, start=START) as driver:
        await driver.start(pair, id="p")
        for name, value in (("right", "R"), ("left", "L1"), ("left", "L2")):
            await driver.signal("p", name, value)
        await driver.advance(timedelta(seconds=1))

        assert ["L1", "R", "L2"] == driver.result("p")
