"""Limit: what Kafka alone carries of W1's traffic, with raw aiokafka and Steady's producer settings.

The first W1 saturated pass under the same setting counted, per topic, the records and bytes Steady wrote
and the transactions its worker committed (without it, this workload runs such a pass first). Scaled to
``w1_runs`` runs, the same traffic is produced on a fresh set of topics created with Steady's own topic
settings, all at once:

- the starts (one per run) to the inbox by an idempotent ``acks=all, linger_ms=1`` producer, one
  ``send_and_wait`` per record with ``start_window`` in flight, as Steady's client does;
- the step reports (the rest of the inbox) by an idempotent ``acks=all`` producer, 64 in flight, as the
  step executor does;
- everything the worker writes (state, history, tasks, completions, timers) by a transactional
  ``acks=all, linger_ms=2`` producer in the same number of transactions, each committing consumer offsets;

while a ``read_committed`` consumer reads what Steady's own processes read (inbox, tasks, completions). The
time until the consumer has every record gives the runs per second the log can carry with no dependencies
between records; Steady's W1 rate is reported as a share of it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.stats import median_spread
from bench.workloads import w1
from bench.workloads.base import Env
from streams.settings import Settings
from streams.topics import Topics, ensure_topics

WORKER_TOPICS = ("state", "history", "tasks", "completions", "dead_letter", "timers")
READ_BY_STEADY = ("inbox", "tasks", "completions")
HEADER = ("steady.schema", b"steady.Record")
EXECUTOR_IN_FLIGHT = 64


@dataclass(frozen=True, slots=True)
class Flow:
    """``records`` records of ``size`` bytes (key + value + header) to one topic."""

    records: int
    size: int


@dataclass(frozen=True, slots=True)
class Traffic:
    """W1's traffic for ``runs`` runs: inbox starts, inbox reports, the worker's flows and transactions."""

    runs: int
    starts: Flow
    reports: Flow
    worker: dict[str, Flow]
    transactions: int

    @classmethod
    def scaled(cls, profile: dict[str, Any], runs: int) -> Traffic:
        """The traffic of ``runs`` runs, from a W1 pass's census (``profile``, see :mod:`bench.workloads.w1`)."""
        counted = profile["runs"]

        def flow(name: str, records: int | None = None) -> Flow:
            topic = profile[name]
            share = round(topic["records"] * runs / counted) if records is None else records
            return Flow(share, round(topic["avg_bytes"]))

        inbox = flow("inbox")
        transactions = max(1, round(profile["transactions"] * runs / (counted - 1)))
        return cls(
            runs=runs,
            starts=flow("inbox", runs),
            reports=Flow(max(0, inbox.records - runs), inbox.size),
            worker={name: flow(name) for name in WORKER_TOPICS if profile[name]["records"]},
            transactions=transactions,
        )

    def as_dict(self) -> dict[str, Any]:
        """For the results file."""
        return {
            "runs": self.runs,
            "transactions": self.transactions,
            "inbox_starts": vars_of(self.starts),
            "inbox_reports": vars_of(self.reports),
            **{name: vars_of(f) for name, f in self.worker.items()},
        }


def vars_of(flow: Flow) -> dict[str, int]:
    """A flow as a dict."""
    return {"records": flow.records, "avg_bytes": flow.size}


def _record(i: int, size: int) -> tuple[bytes, bytes]:
    key = f"default/raw{i:08d}".encode()
    overhead = len(key) + len(HEADER[0]) + len(HEADER[1])
    return key, b"v" * max(0, size - overhead)


async def _send_each(producer: AIOKafkaProducer, topic: str, flow: Flow, window: int) -> None:
    slots = asyncio.Semaphore(window)

    async def one(i: int) -> None:
        key, value = _record(i, flow.size)
        async with slots:
            await producer.send_and_wait(topic, value, key=key, headers=[HEADER])

    await asyncio.gather(*(one(i) for i in range(flow.records)))


async def _transactional(producer: AIOKafkaProducer, settings: Settings, traffic: Traffic) -> float:
    """Write the worker's share in ``traffic.transactions`` transactions; return the seconds it took."""
    began = time.perf_counter()
    topics = Topics.named(settings.prefix)
    queue = [(getattr(topics, name), flow) for name, flow in traffic.worker.items() for _ in range(flow.records)]
    per = -(-len(queue) // traffic.transactions)
    inbox = [TopicPartition(topics.inbox, p) for p in range(settings.partitions)]
    for n, first in enumerate(range(0, len(queue), per)):
        await producer.begin_transaction()
        for i, (topic, flow) in enumerate(queue[first : first + per], start=first):
            key, value = _record(i, flow.size)
            await producer.send(topic, value, key=key, headers=[HEADER])
        await producer.send_offsets_to_transaction(dict.fromkeys(inbox, n + 1), settings.group)
        await producer.commit_transaction()
    return time.perf_counter() - began


async def _reader(settings: Settings) -> AIOKafkaConsumer:
    """A started ``read_committed`` consumer on the topics Steady's processes read, at their beginning."""
    topics = Topics.named(settings.prefix)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap, isolation_level="read_committed", enable_auto_commit=False
    )
    await consumer.start()
    tps = [TopicPartition(getattr(topics, name), p) for name in READ_BY_STEADY for p in range(settings.partitions)]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    return consumer


async def _consume(consumer: AIOKafkaConsumer, expected: int) -> float:
    """Read until ``expected`` records arrived; return when (``perf_counter``)."""
    seen = 0
    deadline = time.monotonic() + 600
    while seen < expected:
        if time.monotonic() > deadline:
            raise TimeoutError(f"raw consumer saw {seen} of {expected} records")
        batch = await consumer.getmany(timeout_ms=200, max_records=10_000)
        seen += sum(len(records) for records in batch.values())
    return time.perf_counter()


async def raw_pass(env: Env, traffic: Traffic) -> dict[str, float]:
    """Produce and consume ``traffic`` once on fresh topics; seconds and runs per second."""
    prefix = env.prefix("raw")
    settings = Settings.model_validate({"bootstrap": env.bootstrap, "prefix": prefix, "worker_id": "raw"})
    topics = await ensure_topics(settings)
    client = AIOKafkaProducer(bootstrap_servers=env.bootstrap, enable_idempotence=True, acks="all", linger_ms=1)
    reports = AIOKafkaProducer(bootstrap_servers=env.bootstrap, enable_idempotence=True, acks="all")
    worker = AIOKafkaProducer(
        bootstrap_servers=env.bootstrap,
        transactional_id=f"{prefix}raw-worker",
        enable_idempotence=True,
        acks="all",
        linger_ms=2,
    )
    producers = (client, reports, worker)
    for producer in producers:
        await producer.start()
    reader = await _reader(settings)
    expected = traffic.starts.records + traffic.reports.records
    expected += sum(f.records for name, f in traffic.worker.items() if name in READ_BY_STEADY)
    began = time.perf_counter()
    consumed = asyncio.create_task(_consume(reader, expected))
    try:
        *_, transactional_s = await asyncio.gather(
            _send_each(client, topics.inbox, traffic.starts, env.sizes.start_window),
            _send_each(reports, topics.inbox, traffic.reports, EXECUTOR_IN_FLIGHT),
            _transactional(worker, settings, traffic),
        )
        produced = time.perf_counter()
        ended = max(await consumed, produced)
    finally:
        consumed.cancel()
        await reader.stop()
        for producer in producers:
            await producer.stop()
    elapsed = ended - began
    return {
        "elapsed_s": round(elapsed, 3),
        "produce_s": round(produced - began, 3),
        "transactions_s": round(transactional_s, 3),
        "ms_per_transaction": round(1000 * transactional_s / traffic.transactions, 1),
        "runs_per_s": traffic.runs / elapsed,
    }


async def run(env: Env) -> dict[str, Any]:
    """Limit."""
    profile = env.shared.get(w1.PROFILE_KEY)
    if profile is None:
        profile = (await w1.saturated_pass(env, env.sizes.w1_runs, "w1prof"))["written"]
    traffic = Traffic.scaled(profile, env.sizes.w1_runs)
    passes = [await raw_pass(env, traffic) for _ in range(env.sizes.limit_repeats)]
    rates = [p["runs_per_s"] for p in passes]
    out: dict[str, Any] = {
        "runs": traffic.runs,
        "runs_per_s": median_spread(rates),
        "passes": passes,
        "traffic": traffic.as_dict(),
        "read": list(READ_BY_STEADY),
    }
    steady = env.shared.get(w1.RATE_KEY)
    if steady is not None:
        out["steady_w1_share"] = round(steady / out["runs_per_s"]["median"], 3)
    return out
