"""Workflows and steps the tests run (module-level, so step executors in any process can import them)."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

from pydantic import BaseModel

from actors import (
    Cancelled,
    Context,
    EventTimeout,
    Registry,
    RetryPolicy,
    TerminalError,
    Workflow,
    current_step,
)


class Greeting(BaseModel):
    name: str
    times: int = 1


def shout(text: str) -> str:
    return text.upper()


async def repeat(text: str, times: int) -> str:
    return " ".join([text] * times)


def count_chars(text: str) -> dict[str, int]:
    return {"chars": len(text)}


chain = Workflow("chain")


@chain.main
async def run_chain(ctx: Context, req: Greeting) -> dict[str, object]:
    loud = await ctx.step("shout", shout, f"hello {req.name}")
    repeated = await ctx.step("repeat", repeat, loud, req.times)
    counted = await ctx.step("count", count_chars, repeated)
    return {"text": repeated, **counted}


def flaky(fail_times: int) -> str:
    """Fails ``fail_times`` times per idempotency key, then succeeds (attempt numbers come from the step)."""
    info = current_step()
    if info.attempt <= fail_times:
        raise ConnectionError(f"attempt {info.attempt} failed")
    return f"ok after {info.attempt}"


def declined(amount: int) -> str:
    raise TerminalError(f"card declined for {amount}")


def refund(amount: int) -> str:
    return f"refunded {amount}"


def explode() -> None:
    raise RuntimeError("boom")


failures = Workflow("failures", retry=RetryPolicy(max_attempts=4, initial_interval=timedelta(0)))


@failures.main
async def run_failures(ctx: Context, mode: str) -> str:
    if mode == "retry":
        return await ctx.step("flaky", flaky, 2)
    if mode == "compensate":
        try:
            await ctx.step("charge", declined, 100)
        except TerminalError as exc:
            refunded = await ctx.step("refund", refund, 100)
            return f"{refunded} because {exc.message}"
        return "charged"
    if mode == "exhaust":
        return await ctx.step("flaky", flaky, 10)
    if mode == "uncaught":
        raise ValueError("the workflow itself failed")
    await ctx.step("explode", explode)
    return "unreachable"


def journal_step(label: str) -> str:
    """Appends "idempotency_key attempt start_ms" to $STEADY_TEST_JOURNAL, then sleeps a little."""
    info = current_step()
    _journal(f"{info.idempotency_key} {info.attempt} {int(time.time() * 1000)}")
    time.sleep(float(os.environ.get("STEADY_TEST_STEP_SLEEP", "0.05")))
    return label


journaled = Workflow("journaled")


@journaled.main
async def run_journaled(ctx: Context, n: int) -> list[str]:
    first = await ctx.step("one", journal_step, f"{n}-1")
    second, third = await asyncio.gather(
        ctx.step("two", journal_step, f"{n}-2"), ctx.step("three", journal_step, f"{n}-3")
    )
    fourth = await ctx.step("four", journal_step, f"{n}-4")
    return [first, second, third, fourth]


app = Registry([chain, failures, journaled])


sleeper = Workflow("sleeper")


@sleeper.main
async def run_sleeper(ctx: Context, seconds: float) -> dict[str, int]:
    before = ctx.now()
    await ctx.sleep("nap", timedelta(seconds=seconds))
    woke = ctx.now()
    done = await ctx.step("after", shout, "awake")
    return {"slept_ms": int((woke - before).total_seconds() * 1000), "after": len(done)}


app.add(sleeper)

napper = Workflow("napper")


@napper.main
async def run_napper(ctx: Context, seconds: float) -> str:
    """Sleeps, then runs a step; it reads no clock, so the step may start as soon as the firing is in the inbox."""
    await ctx.sleep("nap", timedelta(seconds=seconds))
    return await ctx.step("after", shout, "awake")


app.add(napper)


class Approval(BaseModel):
    approver: str
    ok: bool


approval = Workflow("approval")


@approval.main
async def run_approval(ctx: Context, timeout_s: float) -> str:
    try:
        decision = await ctx.wait_for_event("approval", timeout=timedelta(seconds=timeout_s), type=Approval)
    except EventTimeout:
        return "timed out"
    return f"{decision.approver}:{decision.ok}"


collector = Workflow("collector")


@collector.main
async def run_collector(ctx: Context, count: int) -> list[int]:
    return [await ctx.wait_for_event("item", type=int) for _ in range(count)]


def reserve(order: str) -> str:
    return f"reserved {order}"


def release(order: str) -> str:
    return f"released {order}"


async def slow_step(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "slow done"


cancellable = Workflow("cancellable")


@cancellable.main
async def run_cancellable(ctx: Context, mode: str) -> str:
    reserved = await ctx.step("reserve", reserve, "o1")
    try:
        if mode == "step":
            await ctx.step("slow", slow_step, 30.0)
        else:
            await ctx.sleep("nap", timedelta(hours=1))
    except Cancelled:
        await ctx.step("release", release, "o1")
        raise
    return reserved


app.add(approval)
app.add(collector)
app.add(cancellable)


late_waiter = Workflow("late_waiter")


@late_waiter.main
async def run_late_waiter(ctx: Context, seconds: float) -> str:
    await ctx.sleep("first", timedelta(seconds=seconds))
    return str(await ctx.wait_for_event("go"))


ticket = Workflow("ticket")
ticket.trigger(os.environ.get("STEADY_TEST_TRIGGER_TOPIC", "tickets.opened"), id_from="offset")


async def route(text: str) -> str:
    """Route a ticket; takes $STEADY_TEST_STEP_SLEEP seconds (default 0) so a test can kill its worker mid-way."""
    await asyncio.sleep(float(os.environ.get("STEADY_TEST_STEP_SLEEP", "0")))
    return text.upper()


@ticket.main
async def run_ticket(ctx: Context, body: dict[str, object]) -> str:
    return await ctx.step("route", route, str(body.get("subject", "")))


app.add(late_waiter)
trigger_app = Registry([ticket])
"""A separate registry, so that only the trigger tests run a trigger consumer."""


def _journal(info_line: str) -> None:
    path = Path(os.environ["STEADY_TEST_JOURNAL"])
    with path.open("a") as f:
        f.write(info_line + "\n")
        f.flush()
        os.fsync(f.fileno())


def logged_step(label: str) -> str:
    """Appends "idempotency_key attempt start_ms" to $STEADY_TEST_JOURNAL, sleeps a little, returns ``label``."""
    info = current_step()
    _journal(f"{info.idempotency_key} {info.attempt} {int(time.time() * 1000)}")
    time.sleep(float(os.environ.get("STEADY_TEST_STEP_SLEEP", "0.02")))
    return label


def logged_flaky(fail_times: int) -> str:
    """Logs every attempt like ``logged_step``; fails the first ``fail_times`` attempts."""
    info = current_step()
    _journal(f"{info.idempotency_key} {info.attempt} {int(time.time() * 1000)}")
    if info.attempt <= fail_times:
        raise ConnectionError(f"attempt {info.attempt} failed on purpose")
    return f"ok on attempt {info.attempt}"


mixed = Workflow("mixed", retry=RetryPolicy(max_attempts=6, initial_interval=timedelta(milliseconds=200)))


@mixed.main
async def run_mixed(ctx: Context, n: int) -> dict[str, object]:
    first = await ctx.step("first", logged_step, f"{n}-first")
    flaky_result = await ctx.step("flaky", logged_flaky, 2)
    await ctx.sleep("nap", timedelta(seconds=1 + n % 3))
    go = await ctx.wait_for_event("go", timeout=timedelta(minutes=10))
    last = await ctx.step("last", logged_step, f"{n}-last")
    return {"first": first, "flaky": flaky_result, "go": go, "last": last}


app.add(mixed)


_activations: Counter[str] = Counter()

poison_replay = Workflow("poison_replay")


@poison_replay.main
async def run_poison_replay(ctx: Context, _: int) -> str:
    _activations[ctx.workflow_id] += 1
    if _activations[ctx.workflow_id] > 1:
        raise RuntimeError("this workflow fails whenever it is replayed")
    return await ctx.step("once", shout, "x")


async def never_returns(label: str) -> str:
    await asyncio.Event().wait()
    return label


hung = Workflow("hung", retry=RetryPolicy(max_attempts=2, initial_interval=timedelta(milliseconds=100)))


@hung.main
async def run_hung(ctx: Context, _: int) -> str:
    return await ctx.step("forever", never_returns, "x", timeout=timedelta(seconds=1))


nondeterministic = Workflow("nondeterministic")


@nondeterministic.main
async def run_nondeterministic(ctx: Context, _: int) -> str:
    first = await ctx.step(f"step-{random.random()}", shout, "x")
    return await ctx.step("second", shout, first)


app.add(poison_replay)
app.add(hung)
app.add(nondeterministic)
