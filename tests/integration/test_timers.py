"""Durable timers on a real broker: a sleep wakes, and 10,000 pending timers load within a memory bound."""

from __future__ import annotations

import asyncio
import tracemalloc

import pytest
from aiokafka import AIOKafkaProducer

from actors import payload
from actors.commands import Command, StartWorkflow
from actors.events import SleepStarted, TimerFired
from actors.model import RunStatus, Timer, TimerPurpose
from streams.client import Client
from streams.clock import WallClock
from streams.records import TIMER, TimerRecord
from streams.settings import Settings
from streams.timers import TimerService
from streams.topics import ensure_topics
from streams.worker import Worker
from tests.support import eventually
from tests.workflows import sleeper

pytestmark = pytest.mark.integration


async def test_a_two_second_sleep_wakes(worker: Worker, client: Client) -> None:
    handle = await client.start(sleeper, 2.0, id="nap-1")
    sleeping = await eventually(handle.status, timeout=30)
    assert RunStatus.RUNNING == sleeping.status
    assert [TimerPurpose.SLEEP] == [t.purpose for t in sleeping.timers]

    result = await handle.result(timeout=30)

    assert 2_000 <= result["slept_ms"] < 15_000
    [fired] = [e.body for e in await handle.history() if isinstance(e.body, TimerFired)]
    assert fired.late_ms < 10_000  # generous: lateness is measured in bench/, not here


async def test_a_sleep_counts_from_when_the_worker_takes_the_start(worker: Worker, client: Client) -> None:
    sent = WallClock().now_ms()
    # A start that waited a minute in a backlog: the workflow reaches its sleep only now.
    backlogged = Command(
        "start/default/nap-late", "default", "nap-late", sent - 60_000, StartWorkflow(sleeper.name, payload.encode(1.0))
    )
    await client.send(backlogged)
    handle = client.handle("nap-late", workflow=sleeper)

    result = await handle.result(timeout=30)

    history = await handle.history()
    [started] = [e.body for e in history if isinstance(e.body, SleepStarted)]
    assert started.until_ms >= sent + 1_000
    assert 1_000 <= result["slept_ms"] < 15_000
    assert history[0].at_ms >= sent


TIMERS = 10_000
PYTHON_HEAP_BOUND = 8 * 1024 * 1024
"""The timer service keeps pending timers in RocksDB, not in Python objects: 10,000 of them may grow the
Python heap by less than 8 MiB (they take about 1.2 MiB of record bytes on the topic)."""


async def test_ten_thousand_pending_timers_load_within_the_memory_bound(settings: Settings) -> None:
    topics = await ensure_topics(settings)
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap, acks="all", linger_ms=20)
    await producer.start()
    far = WallClock().now_ms() + 3_600_000
    try:
        for i in range(TIMERS):
            record = TimerRecord("default", f"sleeper-{i}", Timer.of(TimerPurpose.SLEEP, 0, 1, far + i), 0)
            await producer.send(
                topics.timers, TIMER.encode(record), key=record.key.encode(), partition=i % settings.partitions
            )
        await producer.flush()
    finally:
        await producer.stop()

    service = TimerService(settings, WallClock())
    tracemalloc.start()
    baseline = tracemalloc.get_traced_memory()[0]
    await service.start()
    running = asyncio.create_task(service.run())
    try:
        await eventually(
            lambda: sum(service.store.count(p) for p in service.owned) == TIMERS and len(service.owned) == 8,
            timeout=60,
        )
        grown = tracemalloc.get_traced_memory()[0] - baseline
    finally:
        tracemalloc.stop()
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await service.close()

    assert 0 == service.fired
    assert grown < PYTHON_HEAP_BOUND, f"python heap grew {grown / 1e6:.1f} MB for {TIMERS} timers"
    print(f"python heap growth for {TIMERS} pending timers: {grown / 1e6:.2f} MB")
