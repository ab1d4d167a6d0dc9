"""A topic-triggered workflow over 500 records, its worker killed -9 mid-way: exactly 500 runs."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from actors.events import WorkflowStarted
from streams.settings import Settings
from tests.support import WorkerProcess, completions, eventually, histories

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

RECORDS = 500


async def test_trigger_starts_exactly_one_run_per_record_across_a_crash(settings: Settings, tmp_path: Path) -> None:
    topic = f"{settings.prefix}tickets"
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 4, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        for i in range(RECORDS):
            await producer.send(topic, json.dumps({"subject": f"ticket {i}"}).encode(), key=f"t{i}".encode())
        await producer.flush()
    finally:
        await producer.stop()

    # 500 steps of 50 ms, 4 at a time: about 6 s of work, so the kill lands mid-way.
    env = {
        "STEADY_TEST_TRIGGER_TOPIC": topic,
        "STEADY_SESSION_TIMEOUT_MS": "6000",
        "STEADY_TEST_STEP_SLEEP": "0.05",
        "STEADY_STEP_CONCURRENCY": "4",
    }
    first = WorkerProcess(settings, "tests.workflows:trigger_app", tmp_path / "worker1.log", env)
    second = WorkerProcess(settings, "tests.workflows:trigger_app", tmp_path / "worker2.log", env)
    try:
        first.start()

        async def some_done() -> bool:
            return len(await completions(settings.bootstrap, settings.prefix)) >= 20

        await eventually(some_done, timeout=120, interval=0.2)
        first.kill()
        assert len(await completions(settings.bootstrap, settings.prefix)) < RECORDS, "the kill should land mid-way"
        second.start()

        async def all_done() -> bool:
            return len({c.workflow_id for c in await completions(settings.bootstrap, settings.prefix)}) >= RECORDS

        await eventually(all_done, timeout=180, interval=1.0)
    finally:
        first.stop()
        second.stop()

    done = Counter(c.workflow_id for c in await completions(settings.bootstrap, settings.prefix))
    assert RECORDS == len(done)
    assert {1} == set(done.values())
    started = [e for events in (await histories(settings.bootstrap, settings.prefix)).values() for e in events]
    assert RECORDS == sum(isinstance(e.body, WorkflowStarted) for e in started)
    assert all(key.startswith(f"{topic}-") for key in done)
