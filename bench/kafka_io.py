"""Reading what Steady wrote: whole topics, per-topic record and byte counts, and a live tail of the history."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import ConsumerRecord

from actors.events import Event
from streams.records import COMPLETION, EVENT, Completion
from streams.topics import Topics

STEADY_TOPICS = ("inbox", "state", "history", "tasks", "completions", "dead_letter", "timers")
"""Attribute names of :class:`streams.topics.Topics`, in the order results show them."""


async def partitions_of(bootstrap: str, topic: str) -> list[int]:
    """The partitions of ``topic`` (empty when it does not exist)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if topic not in set(await admin.list_topics()):
            return []
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return sorted(p["partition"] for p in described["partitions"])


async def read_topic(bootstrap: str, topic: str, *, timeout: float = 300.0) -> tuple[list[ConsumerRecord], int]:
    """Every committed record of ``topic`` up to its current end, and the number of offsets that span.

    Offsets that are not records (transaction markers, aborted records) are the difference.
    """
    parts = await partitions_of(bootstrap, topic)
    if not parts:
        return [], 0
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        enable_auto_commit=False,
        max_partition_fetch_bytes=8 * 2**20,
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        begins = await consumer.beginning_offsets(tps)
        for tp, offset in begins.items():
            consumer.seek(tp, offset)
        out: list[ConsumerRecord] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            remaining = [tp for tp in tps if await consumer.position(tp) < ends[tp]]
            if not remaining:
                break
            batch = await consumer.getmany(*remaining, timeout_ms=500, max_records=10_000)
            for tp, records in batch.items():
                out.extend(r for r in records if r.offset < ends[tp])
        else:
            raise TimeoutError(f"reading {topic} took more than {timeout:.0f}s")
        return out, sum(ends[tp] - begins[tp] for tp in tps)
    finally:
        await consumer.stop()


@dataclass(frozen=True, slots=True)
class TopicCount:
    """Records and bytes of one topic (bytes = key + value + header keys and values, no framing)."""

    records: int
    bytes: int
    value_bytes: int
    offsets: int

    @property
    def markers(self) -> int:
        """Offsets taken by transaction markers (and aborted records)."""
        return self.offsets - self.records

    @property
    def avg_bytes(self) -> float:
        """Mean record size."""
        return self.bytes / self.records if self.records else 0.0

    def as_dict(self) -> dict[str, float]:
        """For the results file."""
        return {**asdict(self), "markers": self.markers, "avg_bytes": round(self.avg_bytes, 1)}


def _size(record: ConsumerRecord) -> int:
    headers = sum(len(k) + len(v or b"") for k, v in record.headers)
    return len(record.key or b"") + len(record.value or b"") + headers


async def count_topic(bootstrap: str, topic: str) -> TopicCount:
    """Records, bytes and offsets of ``topic``."""
    records, offsets = await read_topic(bootstrap, topic)
    return TopicCount(
        records=len(records),
        bytes=sum(_size(r) for r in records),
        value_bytes=sum(len(r.value or b"") for r in records),
        offsets=offsets,
    )


async def census(bootstrap: str, prefix: str) -> dict[str, TopicCount]:
    """What Steady holds under ``prefix``: records and bytes per topic (keys: :data:`STEADY_TOPICS`)."""
    topics = Topics.named(prefix)
    return {name: await count_topic(bootstrap, getattr(topics, name)) for name in STEADY_TOPICS}


async def histories(bootstrap: str, prefix: str) -> list[tuple[int, Event]]:
    """Every history event under ``prefix`` with its Kafka record timestamp (ms)."""
    records, _ = await read_topic(bootstrap, Topics.named(prefix).history)
    return [(r.timestamp, EVENT.decode(r.value)) for r in records]


async def completions(bootstrap: str, prefix: str) -> list[Completion]:
    """Every terminal record under ``prefix``."""
    records, _ = await read_topic(bootstrap, Topics.named(prefix).completions)
    return [COMPLETION.decode(r.value) for r in records]


class Tail:
    """Counts records of one topic as they are committed, from its beginning, in a background task.

    ``classify`` turns a record value into a label (e.g. an event's type); counts are kept per label.
    """

    def __init__(self, bootstrap: str, topic: str, classify: Callable[[bytes], str]) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.classify = classify
        self.counts: Counter[str] = Counter()
        self.last_seen: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Tail:
        self._task = asyncio.create_task(self._run(), name=f"tail {self.topic}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        parts = await partitions_of(self.bootstrap, self.topic)
        if not parts:
            raise RuntimeError(f"topic {self.topic} does not exist; start the worker or client first")
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, isolation_level="read_committed", enable_auto_commit=False
        )
        await consumer.start()
        try:
            tps = [TopicPartition(self.topic, p) for p in parts]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            while True:
                batch = await consumer.getmany(timeout_ms=200, max_records=10_000)
                now = time.monotonic()
                for records in batch.values():
                    for record in records:
                        label = self.classify(record.value)
                        self.counts[label] += 1
                        self.last_seen[label] = now
        finally:
            await consumer.stop()

    async def wait_for(self, label: str, count: int, *, timeout: float) -> float:
        """Wait until ``count`` records labelled ``label`` were seen; return when the last one was seen."""
        deadline = time.monotonic() + timeout
        while self.counts[label] < count:
            if self._task is not None and self._task.done():
                self._task.result()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.counts[label]} of {count} {label} records on {self.topic} after {timeout}s")
            await asyncio.sleep(0.05)
        return self.last_seen[label]


def _varint_end(data: bytes, pos: int) -> tuple[int, int]:
    """The zig-zag varint at ``pos`` and the position after it."""
    shift = raw = 0
    while True:
        byte = data[pos]
        raw |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return (raw >> 1) ^ -(raw & 1), pos
        shift += 7


def _body_names() -> list[str]:
    [body] = [f for f in EVENT.codec.schema["fields"] if f["name"] == "body"]
    return [(t if isinstance(t, str) else t["name"]).rsplit(".", 1)[-1] for t in body["type"]]


_BODIES = _body_names()


def event_type(value: bytes) -> str:
    """The class name of a history event's body, read from the Avro prefix without decoding the whole event.

    A full decode costs ~70 us; tailing 100,000 runs' histories must not compete with the worker for CPU.
    """
    if value[:10] != EVENT.codec.prefix:
        return type(EVENT.decode(value).body).__name__
    pos = 10
    for _ in range(2):  # tenant, workflow_id: length-prefixed strings
        length, pos = _varint_end(value, pos)
        pos += length
    for _ in range(2):  # seq, at_ms
        _, pos = _varint_end(value, pos)
    index, _ = _varint_end(value, pos)
    return _BODIES[index]


OFFSETS_TOPIC = "__consumer_offsets"


async def transaction_markers(bootstrap: str) -> int:
    """Transaction markers on Kafka's offsets topic so far.

    A Steady worker commits its consumed offsets inside each transaction, so every transaction it commits
    leaves exactly one marker there (on its group's partition); the difference of two readings counts them.
    """
    return (await count_topic(bootstrap, OFFSETS_TOPIC)).markers
