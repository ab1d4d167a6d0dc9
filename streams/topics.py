"""Steady's topics and their creation.

All share one partition count, so that a run's records on every topic land on the same partition number and
one worker owns them together.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.structs import ConsumerRecord

from streams.settings import Settings

logger = logging.getLogger(__name__)

_WEEK_MS = 7 * 24 * 3600 * 1000

INDEX_INTERVAL_BYTES = 64 * 1024
"""Bytes of records between two entries of a partition's offset and time indexes (Kafka's default is 4 KiB).

Kafka keeps each index in a memory-mapped file made sparse when its segment is created. The first entry written
into each 4 KiB page of it allocates that page on disk, within the write of a record batch, while the
partition's lock is held. On a busy disk such a write held a broker's request thread for 70-700 ms
(``bench/results/index-interval/``), and all of Steady's records, small and many, crossed a new index page every
2 MiB of a partition, a fresh partition after its first 4 KiB. At 64 KiB a partition takes its first entry later
and a new page every 32 MiB; a read from an arbitrary offset scans at most 64 KiB of batch headers for its start.
"""

SCAN_INDEX_INTERVAL_BYTES = 1024 * 1024
"""The index interval of the topics read from a start rather than at their end: ``state`` (a restore reads a
partition from a position on, a status scan from its beginning) and ``history`` (from a time on). Their reads
look an offset up once per scan, so a coarse index costs them little, and they carry most of a run's bytes (a
state partition reached 64 KiB within a 330-run closed loop and met the page faults above again)."""


@dataclass(frozen=True, slots=True)
class Topics:
    """The names of Steady's topics under one prefix."""

    inbox: str
    state: str
    history: str
    tasks: str
    completions: str
    dead_letter: str
    timers: str

    @classmethod
    def named(cls, prefix: str) -> Topics:
        """The topics under ``prefix`` (default ``steady.``)."""
        return cls(
            inbox=f"{prefix}inbox",
            state=f"{prefix}state",
            history=f"{prefix}history",
            tasks=f"{prefix}tasks",
            completions=f"{prefix}completions",
            dead_letter=f"{prefix}dead-letter",
            timers=f"{prefix}timers",
        )

    def configs(self) -> dict[str, dict[str, str]]:
        """Topic-level settings of each topic."""
        configs = {
            self.inbox: {"cleanup.policy": "delete"},
            self.state: {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"},
            self.history: {"cleanup.policy": "delete", "retention.ms": str(4 * 52 * _WEEK_MS)},
            self.tasks: {"cleanup.policy": "delete"},
            self.completions: {"cleanup.policy": "delete", "retention.ms": str(52 * _WEEK_MS)},
            self.dead_letter: {"cleanup.policy": "delete", "retention.ms": str(52 * _WEEK_MS)},
            # The timer service's input is its own changelog: live timers stay, fired ones are tombstoned.
            self.timers: {"cleanup.policy": "compact", "min.compaction.lag.ms": "0", "delete.retention.ms": "3600000"},
        }
        scanned = {self.state, self.history}
        return {
            name: {
                **config,
                "index.interval.bytes": str(SCAN_INDEX_INTERVAL_BYTES if name in scanned else INDEX_INTERVAL_BYTES),
            }
            for name, config in configs.items()
        }


async def ensure_topics(settings: Settings) -> Topics:
    """Create Steady's topics if they are missing, and check that they are co-partitioned."""
    topics = Topics.named(settings.prefix)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(name, settings.partitions, settings.replication, topic_configs=config)
            for name, config in topics.configs().items()
            if name not in existing
        ]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another worker or client was quicker
                await admin.create_topics(missing)
            logger.info("created topics %s", ", ".join(t.name for t in missing))
        described = await admin.describe_topics([topics.inbox, topics.state, topics.tasks, topics.timers])
        counts = {d["topic"]: len(d["partitions"]) for d in described}
        if len(set(counts.values())) != 1:
            raise RuntimeError(f"Steady's topics must have one partition count, found {counts}")
    finally:
        await admin.close()
    return topics


async def partitions_of(bootstrap: str, topic: str) -> list[int]:
    """The partition numbers of ``topic`` (empty if it does not exist)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return sorted(p["partition"] for p in described["partitions"])


async def written_ends(bootstrap: str, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    """Where ``tps`` end, counting the records of transactions still open (their high watermarks)."""
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_uncommitted")
    try:
        await probe.start()
        return dict(await probe.end_offsets(tps))
    finally:
        await probe.stop()


async def settled_ends(
    bootstrap: str, consumer: AIOKafkaConsumer, tps: list[TopicPartition], *, timeout: float
) -> dict[TopicPartition, int]:
    """Where ``tps`` end for the read_committed ``consumer`` once the transactions open at the call have ended.

    A transaction's commit returns before its markers are on every partition it wrote: until they are, the last
    stable offset stops short of its records, on some partitions and not yet on others. This waits until the last
    stable offsets reach the ends as of the call (the markers are written, or a dead writer's transaction is
    aborted after its timeout), ``timeout`` seconds at most, and returns them.
    """
    written = await written_ends(bootstrap, tps)
    deadline = time.monotonic() + timeout
    while True:
        stable = await consumer.end_offsets(tps)
        if all(stable[tp] >= written[tp] for tp in tps) or time.monotonic() > deadline:
            return dict(stable)
        await asyncio.sleep(0.05)


async def committed_positions(consumer: AIOKafkaConsumer, partitions: set[TopicPartition]) -> dict[TopicPartition, int]:
    """Where ``consumer``'s group resumes on ``partitions``: its committed offsets, else their first offsets."""
    positions: dict[TopicPartition, int] = {}
    uncommitted: list[TopicPartition] = []
    for tp in partitions:
        offset = await consumer.committed(tp)
        if offset is None or offset < 0:
            uncommitted.append(tp)
        else:
            positions[tp] = offset
    if uncommitted:
        positions.update(await consumer.beginning_offsets(uncommitted))
    return positions


async def read_topic(bootstrap: str, topic: str, *, timeout: float = 120.0) -> list[ConsumerRecord]:
    """Every committed record of ``topic`` from the beginning to its end as of the call, partition by partition.

    The end is taken once the transactions open at the call have ended (:func:`settled_ends`): a transaction seen
    whole on another topic (a run's completion) is then whole here too (its history).
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in await partitions_of(bootstrap, topic)]
        if not tps:
            return []
        consumer.assign(tps)
        ends = await settled_ends(bootstrap, consumer, tps, timeout=timeout / 2)
        for tp, offset in (await consumer.beginning_offsets(tps)).items():
            consumer.seek(tp, offset)
        out: list[ConsumerRecord] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            remaining = [tp for tp in tps if await consumer.position(tp) < ends[tp]]
            if not remaining:
                break
            batch = await consumer.getmany(*remaining, timeout_ms=500)
            for tp, records in batch.items():
                out.extend(r for r in records if r.offset < ends[tp])
        else:
            raise TimeoutError(f"could not read {topic} to its end within {timeout:.0f}s")
        return out
    finally:
        await consumer.stop()


class RunPartitioner:
    """The partition of a run key on every Steady topic: Kafka's default murmur2, over the topics' real count."""

    KNOWN = 50_000
    """Keys whose partition is remembered (a run's records are partitioned several times per step)."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self._all = list(range(partitions))
        self._murmur2 = DefaultPartitioner()
        self._known: dict[bytes, int] = {}

    def __call__(self, key: bytes) -> int:
        """The partition of ``key``."""
        partition = self._known.get(key)
        if partition is None:
            if len(self._known) >= self.KNOWN:
                self._known.clear()
            partition = self._known[key] = int(self._murmur2(key, self._all, self._all))
        return partition

    @classmethod
    async def of(cls, producer: AIOKafkaProducer, topics: Topics) -> RunPartitioner:
        """The partitioner for the inbox's partition count as the cluster reports it."""
        return cls(len(await producer.partitions_for(topics.inbox)))


def group_consumer(settings: Settings, group: str, client_id: str, **options: object) -> AIOKafkaConsumer:
    """A read_committed consumer in ``group`` with manual offsets and the range assignor (co-partitioning)."""
    return AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap,
        group_id=group,
        client_id=client_id,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        partition_assignment_strategy=(RangePartitionAssignor,),
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=settings.heartbeat_interval_ms,
        **options,
    )
