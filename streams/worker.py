"""The worker: owns a share of the runs (partitions of the inbox) and drives their actors.

One consumer in the workers' group reads the inbox and the tasks topic. Both have the same partition count
and the range assignor gives a worker the same partition numbers of both, so the worker that owns a run also
runs its steps and can tell, from its own state, whether a step task is still current.

For each batch of inbox records the worker, in one Kafka transaction, writes the history events, new step
tasks, completions and dead letters, the new state snapshot of every run it touched (the compacted
``state`` changelog), and the consumed offsets. Consumers read ``read_committed``, so either all of a
batch's effects are visible or none. The local RocksDB copy is written after the commit, together with the
changelog offset it reflects; on assignment a worker brings it up to date from the changelog.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError, ProducerFenced
from aiokafka.structs import ConsumerRecord, RecordMetadata

from actors.actor import Actor
from actors.commands import Command
from actors.events import (
    Event,
    StepScheduled,
    TimerCancelled,
    TimerScheduled,
    WorkflowCancelled,
    WorkflowCompleted,
    WorkflowFailed,
)
from actors.model import EntryKind, EntryState, RunState, RunStatus
from actors.workflow import Registry
from schemas.codec import CodecError
from streams.clock import Clock, WallClock
from streams.executor import StepExecutor
from streams.records import (
    COMMAND,
    COMPLETION,
    DEAD_LETTER,
    EVENT,
    STATE,
    TASK,
    TIMER,
    Completion,
    DeadLetter,
    StepTask,
    TimerRecord,
    timer_key,
)
from streams.settings import Settings
from streams.store import RunStore
from streams.timers import TimerService
from streams.topics import RunPartitioner, Topics, ensure_topics, group_consumer
from streams.trigger import TriggerRunner

logger = logging.getLogger(__name__)

DEAD_LETTER_KEEP_BYTES = 512 * 1024
"""Original bytes kept in a dead letter at most (a record must still fit under the broker's size limit)."""


@dataclass(slots=True)
class _Out:
    topic: str
    partition: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    task: StepTask | None = None
    """A step task, run by this worker as soon as the transaction that records it commits."""


@dataclass(slots=True)
class _TaskOffsets:
    """Offsets of one tasks partition: the next to read, and those whose steps are still running."""

    fetched: int = -1
    running: set[int] = field(default_factory=set)
    committed: int = -1

    def committable(self) -> int | None:
        # Never past a record not fetched yet, nor past a step still running (locally dispatched ones included).
        nxt = min(self.fetched, *self.running) if self.running else self.fetched
        return nxt if nxt > self.committed else None


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._worker.revoke(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._worker.assign(assigned)


class Worker:
    """Runs the actors and the step executor for the workflows of ``registry``.

    Example:
        ```python
        worker = Worker(Registry([orders]), Settings.from_env())
        await worker.run()          # until stop() or cancellation
        ```
    """

    def __init__(self, registry: Registry, settings: Settings, *, clock: Clock | None = None) -> None:
        self.registry = registry
        self.settings = settings
        self.topics = Topics.named(settings.prefix)
        self.actor = Actor(registry)
        self.clock: Clock = clock or WallClock()
        self.timers = TimerService(settings, self.clock)
        self.ready = asyncio.Event()
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._partition: RunPartitioner = RunPartitioner(settings.partitions)
        self._task_offsets: dict[TopicPartition, _TaskOffsets] = {}
        self._local_tasks: dict[TopicPartition, set[int]] = {}
        self._restored: set[int] = set()
        self._cache: OrderedDict[str, RunState] = OrderedDict()
        """Committed states of recently active runs (LRU, ``settings.state_cache`` at most): saves a read and a
        decode per command. Dropped on every rebalance, since another worker may have moved a run on."""
        """Partitions whose local state is up to date with the changelog: only their records are processed."""
        # One store per topic namespace and worker: state of another prefix or worker is never mixed in.
        self._store = RunStore(settings.state_dir / settings.prefix.rstrip(".") / settings.worker_id)
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._reports: AIOKafkaProducer | None = None
        self._executor: StepExecutor | None = None
        self.applied = 0
        self._failure: BaseException | None = None

    # -- life cycle ----------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Create missing topics, join the workers' group and start the step executor."""
        s = self.settings
        await ensure_topics(s)
        self._producer = await self._transactional_producer()
        self._reports = AIOKafkaProducer(bootstrap_servers=s.bootstrap, enable_idempotence=True, acks="all")
        await self._reports.start()
        self._executor = StepExecutor(
            self._reports,
            self.topics.inbox,
            concurrency=s.step_concurrency,
            threads=s.step_threads,
            is_current=self.is_current,
            clock=self.clock,
        )
        self._partition = await RunPartitioner.of(self._reports, self.topics)
        self._consumer = group_consumer(
            s,
            s.group,
            f"steady-{s.worker_id}",
            max_poll_records=s.max_batch,
            fetch_max_wait_ms=s.fetch_max_wait_ms,
        )
        await self._consumer.start()
        await self.timers.start()
        self._consumer.subscribe([self.topics.inbox, self.topics.tasks], listener=_Rebalance(self))
        logger.info("worker %s joined group %s on %s", s.worker_id, s.group, s.bootstrap)

    async def _transactional_producer(self) -> AIOKafkaProducer:
        """A producer with the worker's stable transactional id; starting it fences any earlier incarnation."""
        s = self.settings
        producer = AIOKafkaProducer(
            bootstrap_servers=s.bootstrap,
            transactional_id=f"{s.prefix}worker-{s.worker_id}",
            transaction_timeout_ms=s.transaction_timeout_ms,
            enable_idempotence=True,
            acks="all",
            linger_ms=2,
        )
        try:
            await producer.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await producer.stop()
            raise
        return producer

    async def run(self) -> None:
        """Start, then process records until :meth:`stop` is called or the task is cancelled."""
        await self.start()
        background = [asyncio.create_task(self.timers.run(), name="steady timers")]
        background += [
            asyncio.create_task(TriggerRunner(w, t, self.settings, self.clock).run(), name=f"trigger {t.topic}")
            for w in self.registry
            for t in w.triggers
        ]
        for task in background:
            task.add_done_callback(self._background_ended)
        try:
            await self._loop()
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await self.close()
        if self._failure is not None:
            raise self._failure

    def _background_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        # The timer service or a trigger died: stop the worker rather than run on without it.
        logger.error("%s failed; stopping the worker", task.get_name(), exc_info=task.exception())
        self._failure = task.exception()
        self.stop()

    async def _loop(self) -> None:
        assert self._consumer is not None
        last_commit = time.monotonic()
        backoff = 0.0
        while not self._stopping.is_set():
            batch = await self._consumer.getmany(timeout_ms=200, max_records=self.settings.max_batch)
            self._flow_control()
            idle_commit = time.monotonic() - last_commit > 1.0
            if not (batch or idle_commit):
                continue
            try:
                if await self._process(batch, commit_idle=idle_commit):
                    last_commit = time.monotonic()
                backoff = 0.0
            except ProducerFenced:
                logger.error("another worker runs with id %s: this one stops", self.settings.worker_id)
                raise
            except (KafkaError, TimeoutError, OSError) as exc:
                # The broker is away or restarting: the batch was rolled back and will be read again.
                backoff = min(5.0, max(0.25, backoff * 2))
                logger.warning("batch not committed (%s); retrying in %.2fs", exc, backoff)
                await asyncio.sleep(backoff)

    @property
    def failed(self) -> BaseException | None:
        """What stopped the worker, if something did."""
        return self._failure

    def stop(self) -> None:
        """Ask the worker to finish its current batch and leave the group."""
        self._stopping.set()

    async def close(self) -> None:
        """Stop the executor, leave the group, close producers and the store."""
        if self._executor is not None:
            await self._executor.stop()
        await self.timers.close()
        for client in (self._consumer, self._producer, self._reports):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.stop()
        self._store.close()

    # -- partitions ----------------------------------------------------------------------------------------

    async def revoke(self, revoked: set[TopicPartition]) -> None:
        """Let the batch in progress commit before the partitions go to another worker."""
        async with self._lock:
            self._cache.clear()
            for tp in revoked:
                self._task_offsets.pop(tp, None)
                self._local_tasks.pop(tp, None)
                self._restored.discard(tp.partition)
        logger.info("revoked %s", sorted((tp.topic, tp.partition) for tp in revoked))

    async def assign(self, assigned: set[TopicPartition]) -> None:
        """Bring the local state of newly owned partitions up to date from the changelog."""
        partitions = sorted(tp.partition for tp in assigned if tp.topic == self.topics.inbox)
        began = time.monotonic()
        async with self._lock:  # no batch runs against a partition whose state is not restored yet
            self._cache.clear()
            restored = await self._restore(partitions)
            self._restored |= set(partitions)
        logger.info(
            "assigned partitions %s; restored %d state records in %.2fs",
            partitions,
            restored,
            time.monotonic() - began,
        )
        self.ready.set()

    async def _restore(self, partitions: list[int]) -> int:
        if not partitions:
            return 0
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap,
            isolation_level="read_committed",
            enable_auto_commit=False,
            group_id=None,
        )
        await consumer.start()
        restored = 0
        try:
            tps = [TopicPartition(self.topics.state, p) for p in partitions]
            consumer.assign(tps)
            ends = await self._settled_ends(consumer, tps)
            todo = {}
            for tp in tps:
                start = self._store.next_offset(tp.partition)
                if start > ends[tp]:
                    logger.warning("changelog %s was recreated; dropping the local copy", tp)
                    self._store.clear(tp.partition)
                    start = 0
                if start < ends[tp]:
                    consumer.seek(tp, start)
                    todo[tp] = ends[tp]
            while todo:
                batch = await consumer.getmany(*todo, timeout_ms=500)
                for tp, records in batch.items():
                    writes = [(r.key.decode(), r.value) for r in records if r.key is not None]
                    self._store.write(tp.partition, writes, records[-1].offset + 1)
                    restored += len(writes)
                for tp in list(todo):
                    if await consumer.position(tp) >= todo[tp]:
                        self._store.write(tp.partition, [], todo.pop(tp))
        finally:
            await consumer.stop()
        return restored

    async def _settled_ends(self, consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        """The changelog's end once no transaction is pending on it.

        A previous owner's last commit may have returned while its markers are still being written: until
        then the last stable offset stops short of it, and a restore would miss that state. The new owner
        waits until the last stable offset reaches the high watermark (the marker is written, or a dead
        owner's transaction is aborted after ``transaction_timeout_ms``).
        """
        probe = AIOKafkaConsumer(bootstrap_servers=self.settings.bootstrap, isolation_level="read_uncommitted")
        await probe.start()
        try:
            deadline = time.monotonic() + self.settings.transaction_timeout_ms / 1000 + 30
            while True:
                stable = await consumer.end_offsets(tps)
                written = await probe.end_offsets(tps)
                if all(stable[tp] >= written[tp] for tp in tps) or time.monotonic() > deadline:
                    return dict(stable)
                await asyncio.sleep(0.05)
        finally:
            await probe.stop()

    def _flow_control(self) -> None:
        assert self._consumer is not None
        assert self._executor is not None
        task_tps = [tp for tp in self._consumer.assignment() if tp.topic == self.topics.tasks]
        if self._executor.in_flight >= 4 * self.settings.step_concurrency:
            self._consumer.pause(*task_tps)
        elif self._consumer.paused():
            self._consumer.resume(*task_tps)

    # -- records -------------------------------------------------------------------------------------------

    def partition_of(self, key: bytes) -> int:
        """The partition of ``key`` on every Steady topic (Kafka's murmur2 default partitioner)."""
        return self._partition(key)

    def _state(self, partition: int, key: str) -> RunState | None:
        """A run's committed state: from the cache of recently active runs, else from RocksDB."""
        state = self._cache.get(key)
        if state is not None:
            self._cache.move_to_end(key)
            return state
        state = self._store.get(partition, key)
        if state is not None:
            self._remember(key, state)
        return state

    def _remember(self, key: str, state: RunState) -> None:
        self._cache[key] = state
        self._cache.move_to_end(key)
        while len(self._cache) > self.settings.state_cache:
            self._cache.popitem(last=False)

    def is_current(self, task: StepTask) -> bool:
        """Whether ``task`` is still the current attempt of a scheduled step of a live run."""
        state = self._state(self.partition_of(task.key.encode()), task.key)
        if state is None:
            logger.warning("no state for the run of step task %s; running it", task.idempotency_key)
            return True
        if state.status is not RunStatus.RUNNING or not 0 <= task.seq < len(state.journal):
            return False
        entry = state.journal[task.seq]
        return entry.kind is EntryKind.STEP and entry.state is EntryState.SCHEDULED and entry.attempt == task.attempt

    async def _process(self, batch: dict[TopicPartition, list[ConsumerRecord]], *, commit_idle: bool) -> bool:
        assert self._consumer is not None
        async with self._lock:
            outputs: list[_Out] = []
            states: dict[str, tuple[int, RunState]] = {}
            offsets: dict[TopicPartition, int] = {}
            for tp, records in list(batch.items()):
                if tp.partition not in self._restored:
                    # Fetched just before a rebalance gave or took the partition: read it again once restored.
                    if tp in self._consumer.assignment():
                        self._consumer.seek(tp, records[0].offset)
                    del batch[tp]
                    continue
                if tp.topic == self.topics.tasks:
                    for record in records:
                        self._accept_task(tp, record, outputs)
                elif tp.topic == self.topics.inbox:
                    for record in records:
                        self._apply(record, states, outputs)
                    offsets[tp] = records[-1].offset + 1
            for tp, tracked in self._task_offsets.items():
                nxt = tracked.committable()
                if nxt is not None:
                    offsets[tp] = nxt
            # Offsets alone (a step task read back, a duplicate dropped) wait for the next batch with effects or
            # for the idle commit: re-reading them after a crash changes nothing.
            if not outputs and not states and not (offsets and commit_idle):
                return False
            await self._commit(outputs, states, offsets, batch)
            return True

    def _accept_task(self, tp: TopicPartition, record: ConsumerRecord, outputs: list[_Out]) -> None:
        assert self._executor is not None
        tracked = self._task_offsets.setdefault(tp, _TaskOffsets())
        tracked.fetched = record.offset + 1
        local = self._local_tasks.get(tp)
        if local is not None and record.offset in local:
            local.discard(record.offset)  # already running here since its transaction committed
            return
        try:
            task = TASK.decode(record.value)
        except CodecError as exc:
            outputs.append(self._dead_letter(record, f"undecodable step task: {exc}"))
            return
        tracked.running.add(record.offset)
        assert self._executor is not None
        self._executor.submit(task, lambda: tracked.running.discard(record.offset))

    def _apply(self, record: ConsumerRecord, states: dict[str, tuple[int, RunState]], outputs: list[_Out]) -> None:
        if record.key is None:
            outputs.append(self._dead_letter(record, "inbox record without a key"))
            return
        if record.value is None or len(record.value) > self.settings.max_payload_bytes:
            size = 0 if record.value is None else len(record.value)
            limit = self.settings.max_payload_bytes
            outputs.append(self._dead_letter(record, f"record of {size} bytes exceeds the limit of {limit} bytes"))
            return
        partition = self.partition_of(record.key)
        if partition != record.partition:
            # A producer with another partitioner (librdkafka's default is CRC32): route it to its run's owner.
            outputs.append(_Out(record.topic, partition, record.key, record.value, list(record.headers)))
            return
        try:
            command = COMMAND.decode(record.value)
        except CodecError as exc:
            outputs.append(self._dead_letter(record, f"undecodable command: {exc}"))
            return
        if command.key.encode() != record.key:
            outputs.append(self._dead_letter(record, f"record key {record.key!r} is not the command's run key"))
            return
        cached = states.get(command.key)
        state = cached[1] if cached is not None else self._state(partition, command.key)
        try:
            outcome = self.actor.handle(state, command)
        except Exception as exc:
            logger.exception("command %s for %s could not be applied", command.id, command.key)
            outputs.append(self._dead_letter(record, f"internal error applying {command.id}: {exc!r}"))
            return
        self.applied += 1
        if outcome.rejected:
            outputs.append(self._dead_letter(record, outcome.rejected))
            return
        if outcome.state is not None and outcome.events:
            states[command.key] = (partition, outcome.state)
        self._emit(command, outcome.state, outcome.events, partition, outputs)

    def _emit(
        self, command: Command, state: RunState | None, events: list[Event], partition: int, outputs: list[_Out]
    ) -> None:
        key = command.key.encode()
        for event in events:
            outputs.append(_Out(self.topics.history, partition, key, EVENT.encode(event), EVENT.headers))
            body = event.body
            if isinstance(body, StepScheduled) and state is not None:
                task = StepTask(
                    tenant=state.tenant,
                    workflow_id=state.workflow_id,
                    workflow_type=state.workflow_type,
                    version=state.version,
                    seq=body.seq,
                    name=body.name,
                    attempt=body.attempt,
                    function=body.function,
                    args=body.args,
                    idempotency_key=f"{state.tenant}/{state.workflow_id}/{body.name}/{body.occurrence}",
                    timeout_ms=body.options.timeout_ms,
                    at_ms=event.at_ms,
                )
                outputs.append(_Out(self.topics.tasks, partition, key, TASK.encode(task), TASK.headers, task))
            elif isinstance(body, TimerScheduled):
                record = TimerRecord(command.tenant, command.workflow_id, body.timer, event.at_ms)
                outputs.append(
                    _Out(self.topics.timers, partition, record.key.encode(), TIMER.encode(record), TIMER.headers)
                )
            elif isinstance(body, TimerCancelled):
                tombstone = timer_key(command.key, body.timer_id).encode()
                outputs.append(_Out(self.topics.timers, partition, tombstone, None, []))
            elif isinstance(body, WorkflowCompleted | WorkflowFailed | WorkflowCancelled) and state is not None:
                done = Completion(
                    tenant=state.tenant,
                    workflow_id=state.workflow_id,
                    workflow_type=state.workflow_type,
                    version=state.version,
                    status=state.status.value,
                    result=state.result,
                    error=state.error,
                    started_at_ms=state.started_at_ms,
                    at_ms=event.at_ms,
                )
                outputs.append(
                    _Out(self.topics.completions, partition, key, COMPLETION.encode(done), COMPLETION.headers)
                )

    def _dead_letter(self, record: ConsumerRecord, reason: str) -> _Out:
        logger.warning("dead letter from %s[%d]@%d: %s", record.topic, record.partition, record.offset, reason)
        value = record.value
        if value is not None and len(value) > DEAD_LETTER_KEEP_BYTES:
            reason = f"{reason} (original truncated to {DEAD_LETTER_KEEP_BYTES} of {len(value)} bytes)"
            value = value[:DEAD_LETTER_KEEP_BYTES]
        letter = DeadLetter(
            record.topic, record.partition, record.offset, record.key, value, reason, self.clock.now_ms()
        )
        partition = (
            self.partition_of(record.key) if record.key is not None else record.partition % self._partition.partitions
        )
        return _Out(self.topics.dead_letter, partition, record.key, DEAD_LETTER.encode(letter), DEAD_LETTER.headers)

    async def _roll_back(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        """Abort the open transaction (or replace the producer if it cannot) and rewind the batch's inbox reads."""
        assert self._consumer is not None
        for tp, records in batch.items():
            if tp.topic == self.topics.inbox and tp in self._consumer.assignment():
                self._consumer.seek(tp, records[0].offset)
        if self._producer is None:
            return
        try:
            await self._producer.abort_transaction()
        except Exception:
            logger.warning("could not abort the transaction; the producer is replaced", exc_info=True)
            with contextlib.suppress(Exception):
                await self._producer.stop()
            self._producer = None  # a new one (same transactional id) is made before the next batch

    async def _commit(
        self,
        outputs: list[_Out],
        states: dict[str, tuple[int, RunState]],
        offsets: dict[TopicPartition, int],
        batch: dict[TopicPartition, list[ConsumerRecord]],
    ) -> None:
        assert self._consumer is not None
        if self._producer is None:
            self._producer = await self._transactional_producer()
        encoded = {key: (partition, STATE.encode(state)) for key, (partition, state) in states.items()}
        producer = self._producer
        await producer.begin_transaction()
        try:
            dispatch = []
            for out in outputs:
                sent = await producer.send(
                    out.topic, out.value, key=out.key, partition=out.partition, headers=out.headers
                )
                if out.task is not None:
                    dispatch.append((out.task, sent))
            pending = {
                key: await producer.send(
                    self.topics.state, value, key=key.encode(), partition=partition, headers=STATE.headers
                )
                for key, (partition, value) in encoded.items()
            }
            if offsets:
                await producer.send_offsets_to_transaction(offsets, self.settings.group)
            await producer.commit_transaction()
        except BaseException:
            await self._roll_back(batch)
            raise
        # Committed: the local copy follows, with the changelog position it now reflects.
        by_partition: dict[int, tuple[list[tuple[str, bytes | None]], int]] = {}
        for key, future in pending.items():
            meta = future.result()
            writes, nxt = by_partition.get(meta.partition, ([], 0))
            writes.append((key, encoded[key][1]))
            by_partition[meta.partition] = (writes, max(nxt, meta.offset + 1))
        for partition, (writes, nxt) in by_partition.items():
            self._store.write(partition, writes, nxt)
        for key, (_, state) in states.items():
            self._remember(key, state)
        for tp, offset in offsets.items():
            if tp in self._task_offsets:
                self._task_offsets[tp].committed = offset
        for task, sent in dispatch:
            self._dispatch(task, sent.result())

    def _dispatch(self, task: StepTask, meta: RecordMetadata) -> None:
        """Run a step whose task this worker just committed, without waiting to read it back from the topic.

        The task record stays on the topic for whoever owns the partition after a crash; when this worker reads
        it back it skips it. Its offset counts as running until the step's outcome is in the inbox.
        """
        assert self._executor is not None
        tp = TopicPartition(meta.topic, meta.partition)
        tracked = self._task_offsets.setdefault(tp, _TaskOffsets())
        tracked.running.add(meta.offset)
        self._local_tasks.setdefault(tp, set()).add(meta.offset)
        self._executor.submit(task, lambda: tracked.running.discard(meta.offset))
