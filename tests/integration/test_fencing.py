"""A transaction whose offsets come from a member the group has dropped is refused, and the producer goes on.

With either of Kafka's transaction protocols (:mod:`streams.txn_v2`).
"""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import IllegalGenerationError, KafkaConnectionError, ProducerFenced, UnknownMemberIdError

from streams import batches, fencing, txn_v2
from streams.client import Client
from streams.pending import Pending
from streams.settings import Settings
from streams.worker import Worker
from tests.support import eventually, running_worker
from tests.workflows import Greeting, app, chain, napper

pytestmark = pytest.mark.integration


async def _create(bootstrap: str, *topics: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1) for topic in topics])
    finally:
        await admin.close()


async def _joined(bootstrap: str, topic: str, group: str) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False, session_timeout_ms=6_000
    )
    await consumer.start()
    async with asyncio.timeout(30):
        while not consumer.assignment():
            await consumer.getmany(timeout_ms=100)
    return consumer


async def _settled(consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int) -> None:
    """Wait until the group's committed offset is ``offset`` (it shows once the transaction's markers are written)."""

    async def committed() -> bool:
        return bool(await consumer.committed(tp) == offset)

    await eventually(committed, timeout=15, interval=0.1)


@pytest.mark.parametrize("protocol", [1, 2])
async def test_a_dropped_members_transaction_is_refused_and_the_producer_stays_usable(
    kafka_bootstrap: str, topic_prefix: str, protocol: int
) -> None:
    fencing.install()
    txn_v2.install()
    topic, group = f"{topic_prefix}in", f"{topic_prefix}group"
    await _create(kafka_bootstrap, topic, f"{topic}.out")
    tp = TopicPartition(topic, 0)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"{topic_prefix}txn")
    await producer.start()
    try:
        if protocol == 2:
            assert await txn_v2.enable(producer)  # Kafka 4 formats new clusters with transactions v2
        old = await _joined(kafka_bootstrap, topic, group)
        member = fencing.group_member(old, group)
        assert member.generation_id > 0
        assert member.member_id

        async with producer.transaction():
            await producer.send_and_wait(f"{topic}.out", b"by the live member")
            await fencing.send_offsets(producer, {tp: 5}, member)
        await _settled(old, tp, 5)

        await old.stop()  # the member leaves; its successor joins a new generation
        new = await _joined(kafka_bootstrap, topic, group)
        try:
            await producer.begin_transaction()
            await producer.send_and_wait(f"{topic}.out", b"by the zombie")
            with pytest.raises(UnknownMemberIdError):
                await fencing.send_offsets(producer, {tp: 9}, member)
            await producer.abort_transaction()
            await _settled(old, tp, 5)

            async with producer.transaction():
                await fencing.send_offsets(producer, {tp: 7}, fencing.group_member(new, group))
            await _settled(new, tp, 7)
        finally:
            await new.stop()
    finally:
        await producer.stop()

    reader = AIOKafkaConsumer(
        f"{topic}.out",
        bootstrap_servers=kafka_bootstrap,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
    )
    await reader.start()
    try:
        seen = await reader.getmany(timeout_ms=2_000)
        assert [r.value for records in seen.values() for r in records] == [b"by the live member"]
    finally:
        await reader.stop()


@pytest.mark.parametrize("protocol", [1, 2])
async def test_a_member_the_group_dropped_commits_nothing_once_aiokafka_forgot_its_generation(
    kafka_bootstrap: str, topic_prefix: str, protocol: int
) -> None:
    # Told that the group dropped it, aiokafka resets the member to generation -1 and no member id until it has
    # rejoined. The coordinator checks neither on a transactional commit that names none, so such a commit is
    # refused before it is sent, while another member owns the partition.
    fencing.install()
    txn_v2.install()
    topic, group = f"{topic_prefix}in", f"{topic_prefix}group"
    await _create(kafka_bootstrap, topic)
    tp = TopicPartition(topic, 0)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"{topic_prefix}txn")
    await producer.start()
    owner = await _joined(kafka_bootstrap, topic, group)
    try:
        if protocol == 2:
            assert await txn_v2.enable(producer)
        async with producer.transaction():
            await fencing.send_offsets(producer, {tp: 3}, fencing.group_member(owner, group))
        await _settled(owner, tp, 3)

        await producer.begin_transaction()
        with pytest.raises(IllegalGenerationError):
            await fencing.send_offsets(producer, {tp: 9}, fencing.GroupMember(group, -1, ""))
        await producer.abort_transaction()

        async with producer.transaction():  # the producer goes on
            await fencing.send_offsets(producer, {tp: 4}, fencing.group_member(owner, group))
        await _settled(owner, tp, 4)
    finally:
        await owner.stop()
        await producer.stop()


@pytest.mark.parametrize("protocol", [1, 2])
async def test_a_producer_whose_transactional_id_was_taken_is_fenced_on_commit(
    kafka_bootstrap: str, topic_prefix: str, protocol: int
) -> None:
    fencing.install()
    txn_v2.install()
    topic = f"{topic_prefix}fenced"
    await _create(kafka_bootstrap, topic)
    old = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"{topic_prefix}same")
    new = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"{topic_prefix}same")
    await old.start()
    try:
        if protocol == 2:
            assert await txn_v2.enable(old)
        async with old.transaction():
            await old.send_and_wait(topic, b"committed by the first")
        await old.begin_transaction()
        await old.send_and_wait(topic, b"pending when the id was taken")
        await new.start()  # takes the id: the first producer's open transaction is aborted
        with pytest.raises(ProducerFenced):
            await old.commit_transaction()
    finally:
        await old.stop()
        await new.stop()


async def test_every_worker_transaction_carries_offsets_its_fence(worker: Worker, client: Client) -> None:
    # Step outcomes and firings are taken before they are written, so some transactions hold no input the reader
    # applied. They must still commit an offset, or the group could not fence them; also right after a resync,
    # before the reader has read anything.
    commits: list[tuple[bool, bool, bool]] = []  # has effects, has offsets, holds inputs taken early
    commit = worker._commit

    async def recorded(pending: Pending) -> None:
        commits.append((pending.has_effects, bool(pending.offsets), bool(pending.early)))  # emptied once committed
        await commit(pending)

    worker._commit = recorded  # type: ignore[method-assign]
    for i in range(5):
        await (await client.start(chain, Greeting(name=f"f{i}"), id=f"fence-chain-{i}")).result(timeout=30)
    naps = [await client.start(napper, 4.0, id=f"fence-nap-{i}") for i in range(5)]
    asleep = await asyncio.gather(*(eventually(nap.status, timeout=15, interval=0.05) for nap in naps))
    assert all(state.timers for state in asleep)  # committed, and not due yet
    await _as_after_a_failed_commit(worker)
    worker._work.set()
    resynced = len(commits)
    assert await asyncio.gather(*(h.result(timeout=30) for h in naps)) == ["AWAKE"] * 5

    assert any(early for _, _, early in commits[resynced:])  # firings taken early after the resync, before any read
    assert [c for c in commits if c[0] and not c[1]] == []


async def test_a_worker_knows_where_it_reads_from_before_reading_even_where_nothing_was_committed(
    worker: Worker,
) -> None:
    # These topics are new: the group committed nothing, and the reader begins at each partition's first offset.
    # Known before the first read, that position is the fence of a transaction holding only inputs taken early.
    assert worker._consumer is not None
    owned = {tp for tp in worker._consumer.assignment() if tp.topic == worker.topics.inbox}
    assert owned
    assert {tp: worker._consumed.get(tp) for tp in owned} == dict.fromkeys(owned, 0)
    await _as_after_a_failed_commit(worker)
    worker._consumed.clear()
    worker._work.set()
    await eventually(lambda: not worker._out_of_sync, timeout=30, interval=0.05)
    assert {tp: worker._consumed.get(tp) for tp in owned} == dict.fromkeys(owned, 0)


async def _as_after_a_failed_commit(worker: Worker) -> None:
    """What a failed commit does: drop what was applied; the worker then reloads its partitions and offsets."""
    async with worker._lock:
        worker._restored.clear()
        worker._drop_open()
        worker._out_of_sync = True


async def test_a_resync_between_a_revoke_and_the_next_assignment_takes_no_revoked_partition_back(
    worker: Worker, client: Client
) -> None:
    # During a rebalance aiokafka still names the revoked partitions as assigned. A resync that ran then (after a
    # commit failed) marked them restored: the worker went on applying step outcomes and firings of runs another
    # worker owned, and committing them in a generation the group accepts.
    assert worker._consumer is not None
    owned = set(worker._consumer.assignment())
    await _as_after_a_failed_commit(worker)
    await worker.revoke(owned)  # as the listener does before the worker rejoins
    await worker._resync()
    assert set() == worker._restored
    assert {} == worker._consumed

    await worker.assign(owned)  # the same partitions again: the worker goes on
    assert {tp.partition for tp in owned} == worker._restored
    handle = await client.start(chain, Greeting(name="again"), id="after-resync")
    assert "completed" == (await handle.completion(timeout=30)).status


async def test_partitions_whose_restore_failed_on_assignment_are_reloaded(worker: Worker, client: Client) -> None:
    # aiokafka only logs what the assignment listener raises: the partitions would stay owned and never applied.
    assert worker._consumer is not None
    owned = set(worker._consumer.assignment())
    await worker.revoke(owned)
    restore = worker._restore
    failures = 0

    async def broker_away(partitions: list[int]) -> int:
        nonlocal failures
        if failures == 0 and partitions:
            failures += 1
            raise KafkaConnectionError("broker away")
        return await restore(partitions)

    worker._restore = broker_away  # type: ignore[method-assign]
    await worker.assign(owned)
    assert 1 == failures
    await eventually(lambda: worker._restored == {tp.partition for tp in owned}, timeout=30, interval=0.05)
    handle = await client.start(chain, Greeting(name="back"), id="after-restore")
    assert "completed" == (await handle.completion(timeout=30)).status


async def test_a_transaction_left_open_by_a_producer_that_could_not_abort_it_does_not_hold_up_the_resync(
    settings: Settings, client: Client
) -> None:
    # After an abort that failed (the broker away), the worker drops its producer. The transaction it left open holds
    # back the changelog's last stable offset, which the resync's restore waits for: until the broker times the
    # transaction out, unless a new producer with the same transactional id fences it first.
    patient = settings.model_copy(update={"transaction_timeout_ms": 300_000})
    async with running_worker(app, patient) as worker:
        handle = await client.start(chain, Greeting(name="before"), id="before-orphan")
        assert "completed" == (await handle.completion(timeout=30)).status
        async with worker._lock:
            orphan = worker._producer
            assert orphan is not None
            await batches.begin(orphan)
            await (await orphan.send(worker.topics.state, b"never committed", key=b"orphan", partition=0))
            worker._producer = None  # as after an abort that failed
        try:
            await _as_after_a_failed_commit(worker)
            worker._work.set()
            await eventually(lambda: not worker._out_of_sync, timeout=60, interval=0.1)  # not 300 s
            with pytest.raises(ProducerFenced):
                await orphan.commit_transaction()
        finally:
            await orphan.stop()
        handle = await client.start(chain, Greeting(name="after"), id="after-orphan")
        assert "completed" == (await handle.completion(timeout=30)).status
