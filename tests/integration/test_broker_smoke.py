"""The broker is real and fit for Steady's design: partitions, transactions, compaction, faust tables."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


async def _create(bootstrap: str, name: str, partitions: int = 8, config: dict[str, str] | None = None) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1, topic_configs=config or {})])
    finally:
        await admin.close()


async def _drain(
    bootstrap: str, topic: str, until: int, *, group: str | None = None, timeout: float = 30.0
) -> list[tuple[bytes, bytes]]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        enable_auto_commit=False,
    )
    await consumer.start()
    seen: list[tuple[bytes, bytes]] = []
    try:
        deadline = time.monotonic() + timeout
        while len(seen) < until and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                seen.extend((r.key, r.value) for r in records)
    finally:
        await consumer.stop()
    return seen


async def test_topics_have_eight_partitions(kafka_bootstrap: str, topic_prefix: str) -> None:
    topic = f"{topic_prefix}parts"
    await _create(kafka_bootstrap, topic, 8)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    assert list(range(8)) == sorted(p["partition"] for p in described["partitions"])


async def test_read_committed_group_skips_aborted_transaction(kafka_bootstrap: str, topic_prefix: str) -> None:
    topic = f"{topic_prefix}txn"
    await _create(kafka_bootstrap, topic, 8)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"{topic_prefix}tx", acks="all")
    await producer.start()
    try:
        async with producer.transaction():
            for i in range(10):
                await producer.send(topic, key=f"k{i}".encode(), value=b"committed")
        await producer.begin_transaction()
        for i in range(10):
            await producer.send(topic, key=f"k{i}".encode(), value=b"aborted")
        await producer.abort_transaction()
        async with producer.transaction():
            for i in range(10):
                await producer.send(topic, key=f"k{i}".encode(), value=b"after")
    finally:
        await producer.stop()

    seen = await _drain(kafka_bootstrap, topic, 20, group=f"{topic_prefix}readers")

    values = sorted(v for _, v in seen)
    assert [b"after"] * 10 + [b"committed"] * 10 == values


async def test_compacted_topic_keeps_latest_value_per_key(kafka_bootstrap: str, topic_prefix: str) -> None:
    topic = f"{topic_prefix}compact"
    config = {
        "cleanup.policy": "compact",
        "segment.ms": "100",
        "min.cleanable.dirty.ratio": "0.01",
        "delete.retention.ms": "100",
        "min.compaction.lag.ms": "0",
    }
    await _create(kafka_bootstrap, topic, 1, config)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for version in range(20):
            for key in ("a", "b", "c"):
                await producer.send(topic, key=key.encode(), value=f"{key}{version}".encode())
        await producer.flush()
        # Only closed segments are cleaned: keep writing a tick so the segment holding a/b/c rolls.
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            await producer.send_and_wait(topic, key=b"tick", value=b"t")
            seen = await _drain(kafka_bootstrap, topic, 10_000, timeout=1.5)
            kept = [(k, v) for k, v in seen if k != b"tick"]
            if len(kept) == 3:
                break
            await asyncio.sleep(1.0)
    finally:
        await producer.stop()

    assert [(b"a", b"a19"), (b"b", b"b19"), (b"c", b"c19")] == sorted(kept)


class _CounterWorker:
    def __init__(self, bootstrap: str, prefix: str, datadir: Path, log: Path) -> None:
        self.env = {
            **os.environ,
            "COUNTER_BOOTSTRAP": bootstrap,
            "COUNTER_PREFIX": prefix,
            "COUNTER_DATADIR": str(datadir),
        }
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log.write_bytes(b"")
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.integration.faust_counter", "worker", "-l", "info"],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    async def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while b"Ready" not in self.log.read_bytes():
            assert self.proc is not None
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, self.log.read_text()
            await asyncio.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def _send(bootstrap: str, topic: str, keys: list[str]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key in keys:
            await producer.send_and_wait(topic, key=key.encode(), value=b"x")
    finally:
        await producer.stop()


async def _wait_counts(bootstrap: str, topic: str, expected: set[tuple[bytes, bytes]]) -> set[tuple[bytes, bytes]]:
    seen: set[tuple[bytes, bytes]] = set()
    deadline = time.monotonic() + 60
    while not expected <= seen and time.monotonic() < deadline:
        seen = set(await _drain(bootstrap, topic, 10_000, timeout=2.0))
    return seen


async def test_faust_rocksdict_table_is_rebuilt_from_changelog_after_restart(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    prefix = f"{topic_prefix}{uuid.uuid4().hex[:4]}."
    datadir = tmp_path / "faust-data"
    worker = _CounterWorker(kafka_bootstrap, prefix, datadir, tmp_path / "worker.log")
    await _create(kafka_bootstrap, f"{prefix}in", 8)
    await _create(kafka_bootstrap, f"{prefix}out", 8)
    try:
        worker.start()
        await worker.wait_ready()
        await _send(kafka_bootstrap, f"{prefix}in", ["a", "a", "a", "b", "b"])
        first = {(b"a", b"1"), (b"a", b"2"), (b"a", b"3"), (b"b", b"1"), (b"b", b"2")}
        assert first <= await _wait_counts(kafka_bootstrap, f"{prefix}out", first)
        worker.stop()
        assert list(datadir.rglob("*.rocksdb")) or list(datadir.rglob("CURRENT")), "no RocksDB files written"

        # Without its local RocksDB files the restarted worker can only know the counts from the changelog.
        shutil.rmtree(datadir)
        worker.start()
        await worker.wait_ready()
        await _send(kafka_bootstrap, f"{prefix}in", ["a", "b"])
        after = first | {(b"a", b"4"), (b"b", b"3")}
        assert after <= await _wait_counts(kafka_bootstrap, f"{prefix}out", after)
    finally:
        worker.stop()
