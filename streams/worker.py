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
from collections.abc import AsyncIterator

import aiokafka.producer.sender
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import IllegalStateError, KafkaError, ProducerFenced
from aiokafka.structs import ConsumerRecord, RecordMetadata

from actors.actor import Actor
from actors.commands import Command
from actors.events import (
    Event,
    StepScheduled,
    TimerCancelled,
    TimerScheduled,
    ValueRecorded,
    WorkflowCancelled,
    WorkflowCompleted,
    WorkflowFailed,
)
from actors.frozen import replace
from actors.model import EntryKind, EntryState, RunState, RunStatus
from actors.workflow import Registry
from schemas.codec import CodecError
from streams import batches, fencing, txn_v2
from streams.batches import Record, Writable
from streams.clock import Clock, WallClock
from streams.executor import StepExecutor
from streams.loop import CLOSE_TIMEOUT_S, bounded
from streams.pending import EarlyInput, EarlyInputs, LocalStep, Out, Pending, TaskOffsets
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
from streams.store import RunStore, restore
from streams.timers import TimerService
from streams.topics import RunPartitioner, Topics, committed_positions, ensure_topics, group_consumer, written_ends
from streams.trigger import TriggerRunner

logger = logging.getLogger(__name__)

DEAD_LETTER_KEEP_BYTES = 512 * 1024
"""Original bytes kept in a dead letter at most (a record must still fit under the broker's size limit)."""

APPLY_CHUNK = 4
"""Inbox records applied at most between two chances for other tasks to run (step outcomes and timer firings
to be applied, a commit to go on): each record may run workflow code, so a larger chunk delays them all.

A commit waits for its turn on the event loop at each of its steps (begin, records, their acknowledgement, the
end), behind every chunk queued meanwhile: with chunks of 25, commits under a burst of starts took 60-130 ms, and
a timer firing waits for the commit in progress (W4's lateness). See bench/results/ab-chunks for the side-by-side
runs that chose 4.
"""

REPORT_UNDER_LOAD = 8
"""While a transaction commits, a step outcome taken into the open one with at least this many there (itself
included) is not reported to the inbox: its run's next steps wait for the commit instead.

A report lets the next step start about a commit earlier, for a record written and read back. With one run in
flight that is the difference between a closed loop's steps and its commits; with many, the next transaction
commits right after the one under way anyway, and the records cost the broker and the worker. See
bench/results/report-under-load for the side-by-side runs.
"""

BATCH_BYTES = 256 * 1024
"""Record batches of the worker's transactions hold up to this many bytes (a larger record gets its own)."""

COMMIT_LINGER_S = 0.01
"""How long a transaction may wait for the outcomes of quick steps it started (see ``Worker._linger``)."""

IDLE_COMMIT_S = 1.0
"""How long consumed offsets without other effects may wait for a transaction."""

COMMITTED_TIMEOUT_S = 10.0
"""How long a worker taking partitions over waits for the group's committed offsets (else it learns them by reading)."""

TXN_RETRY_BACKOFF_MS = 2
"""Retry delay of the transactional producer's requests.

A transaction that begins right after the previous one committed meets the broker still writing that one's
markers (CONCURRENT_TRANSACTIONS, KAFKA-5477): the coordinator answers within about a millisecond, so the
request is retried after this, not after aiokafka's defaults (100 ms, and 20 ms for adding partitions).
Workers commit back to back whenever step outcomes keep arriving, so this wait is on every step's path.
"""

aiokafka.producer.sender.BACKOFF_OVERRIDE = TXN_RETRY_BACKOFF_MS / 1000
fencing.install()
txn_v2.install()


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

    _taking: EarlyInput | None = None
    """The step outcome or firing being applied before it was written (its run's new steps wait for it)."""
    _consumer: AIOKafkaConsumer | None = None
    _producer: AIOKafkaProducer | None = None
    """The transactional producer (replaced after a transaction it could not abort)."""
    _reports: AIOKafkaProducer | None = None
    """The producer of step outcomes' reports to the inbox."""
    _executor: StepExecutor | None = None
    _failure: BaseException | None = None
    """What stopped the worker (a background task that failed), if something did."""

    def __init__(self, registry: Registry, settings: Settings, *, clock: Clock | None = None) -> None:
        self.registry = registry
        self.settings = settings
        self.topics = Topics.named(settings.prefix)
        self.actor = Actor(registry, suspended_runs=settings.suspended_runs)
        self.clock: Clock = clock or WallClock()
        self.timers = TimerService(
            settings,
            self.clock,
            take=self.take_firing,
            on_fired=self.offer,
            on_early_fired=self.early_reported,
            on_lost=self.early_lost,
        )
        self.ready = asyncio.Event()
        self._lock = asyncio.Lock()
        """Held while a transaction commits and while partitions change hands."""
        self._stopping = asyncio.Event()
        self._partition: RunPartitioner = RunPartitioner(settings.partitions)
        self._owned: set[int] = set()
        """Partitions the group gave this worker (as its listener heard): a resync reloads these, and only these."""
        self._restored: set[int] = set()
        """Owned partitions whose local state is up to date with the changelog: only their inputs are applied."""
        self._open = Pending()
        """What is being applied now, for the next transaction."""
        self._committing: Pending | None = None
        """What the transaction in progress writes."""
        self._out_of_sync = False
        """A commit failed: nothing is applied until the owned partitions are reloaded (``_resync``)."""
        self._work = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._consumed: dict[TopicPartition, int] = {}
        """Per inbox partition: every record before this offset has been applied (or skipped)."""
        self._offered: dict[TopicPartition, set[int]] = {}
        """Per inbox partition: offsets of records applied before the consumer reached them, to skip then."""
        self._rewind: dict[TopicPartition, int] = {}
        """Per inbox partition: where the reader reads again after dropped work (see :meth:`_drop_open`)."""
        self._task_offsets: dict[TopicPartition, TaskOffsets] = {}
        self._catching_up: dict[TopicPartition, int] = {}
        """Per inbox partition taken over: where it ended then. Until the reader is there, the tasks partition of the
        same number is not read (see :meth:`_catch_up`)."""
        self._early = EarlyInputs()
        """Step outcomes and firings applied before they were written, on their way to the inbox."""
        self._running_local: dict[tuple[str, int, int], LocalStep] = {}
        """Steps this worker started itself and that have not finished, by attempt."""
        self._local: dict[tuple[TopicPartition, int], LocalStep] = {}
        """Steps this worker scheduled and runs itself, by where their task records are (committed ones only)."""
        self._cache: OrderedDict[str, RunState] = OrderedDict()
        """Committed states of recently active runs (LRU, ``settings.state_cache`` at most): saves a read and a
        decode per command. Dropped on every rebalance, since another worker may have moved a run on."""
        # One store per topic namespace and worker: state of another prefix or worker is never mixed in.
        self._store = RunStore(settings.state_dir / settings.prefix.rstrip(".") / settings.worker_id)
        self._last_commit = time.monotonic()
        self.applied = 0
        self.transactions = 0
        self.transaction_protocol = 0
        """Kafka's transaction protocol the worker commits with: 2 (KIP-890) where the cluster has it, else 1."""

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
            on_reported=self.offer,
            take=self.take_outcome,
            on_early_reported=self.early_reported,
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
        logger.info(
            "worker %s joined group %s on %s (transactions v%d)",
            s.worker_id,
            s.group,
            s.bootstrap,
            self.transaction_protocol,
        )

    async def _transactional_producer(self) -> AIOKafkaProducer:
        """A producer with the worker's stable transactional id; starting it fences any earlier incarnation."""
        s = self.settings
        producer = AIOKafkaProducer(
            bootstrap_servers=s.bootstrap,
            transactional_id=f"{s.prefix}worker-{s.worker_id}",
            transaction_timeout_ms=s.transaction_timeout_ms,
            enable_idempotence=True,
            acks="all",
            retry_backoff_ms=TXN_RETRY_BACKOFF_MS,
            max_batch_size=BATCH_BYTES,
        )
        try:
            await producer.start()
            self.transaction_protocol = 2 if await txn_v2.enable(producer) else 1
        except BaseException:
            with contextlib.suppress(Exception):
                await producer.stop()
            raise
        return producer

    async def _ensure_producer(self) -> AIOKafkaProducer:
        """The transactional producer, a new one if the last could not abort its transaction.

        Starting the new one fences that transaction at once: a restore would otherwise wait for the broker to time
        it out (``transaction_timeout_ms``), since it holds back the changelog's last stable offset.
        """
        if self._producer is None:
            self._producer = await self._transactional_producer()
        return self._producer

    async def run(self) -> None:
        """Start, then process records until :meth:`stop` is called or the task is cancelled."""
        await self.start()
        background = [
            asyncio.create_task(self.timers.run(), name="steady timers"),
            asyncio.create_task(self._commits(), name="steady commits"),
        ]
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
            await self._shut_down(background)
        if self._failure is not None:
            raise self._failure

    @property
    def longest_stop_s(self) -> float:
        """How long a stop may take at most: the grace to commit, then its tasks, its steps and its clients."""
        return self.settings.shutdown_grace_ms / 1000 + 3 * CLOSE_TIMEOUT_S

    async def _shut_down(self, background: list[asyncio.Task[None]]) -> None:
        """Commit what was applied and close, within ``shutdown_grace_ms`` and :data:`CLOSE_TIMEOUT_S`.

        A transaction under way may finish first. With the broker away, nothing finishes: past the grace the
        worker leaves what it applied and did not commit, whose inputs are in the inbox after the committed
        offsets, to the next owner, and a transaction left open is aborted by the broker or the next incarnation.
        """
        grace = self.settings.shutdown_grace_ms / 1000
        try:
            async with asyncio.timeout(grace):
                async with self._lock:  # let a transaction in progress finish
                    for task in background:
                        task.cancel()
                await asyncio.gather(*background, return_exceptions=True)
                if self._failure is None and not self._out_of_sync:  # out of sync: nothing it holds may be committed
                    await self._flush(force=True)
        except TimeoutError:
            logger.warning("nothing committed within %.1fs of stopping: the next owner applies the rest again", grace)
        except (KafkaError, OSError) as exc:
            logger.warning("the last commit failed (%s): the next owner applies the rest again", exc)
        finally:
            for task in background:
                task.cancel()  # past the grace: a commit or a resync waiting on the broker
            await bounded(CLOSE_TIMEOUT_S, *(t for t in background if not t.done()))  # cleanups may wait on it too
            await self.close()

    def _background_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        # The committer, the timer service or a trigger died: stop the worker rather than run on without it.
        logger.error("%s failed; stopping the worker", task.get_name(), exc_info=task.exception())
        self._fail(task.exception())

    def _fail(self, failure: BaseException | None) -> None:
        """Stop the worker because of ``failure``, which :meth:`run` raises once it has shut down."""
        self._failure = failure
        self.stop()
        self._room.set()

    async def _loop(self) -> None:
        assert self._consumer is not None
        while not self._stopping.is_set():
            if self._open.inputs >= self.settings.max_batch:
                # The transaction in progress has not caught up: wait for it rather than pile up more.
                self._room.clear()
                await self._room.wait()
                continue
            batch = await self._consumer.getmany(timeout_ms=200, max_records=APPLY_CHUNK)
            self._rewind_dropped(batch)
            self._flow_control()
            if batch:
                self._take(batch)
            if self._catching_up:
                await self._caught_up()
            if batch:
                await asyncio.sleep(0)  # let step outcomes and timer firings in between chunks

    def _rewind_dropped(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        """Read again from where dropped work began; records fetched before that are left out of ``batch``.

        The seek is made here, between two reads, because the records of a read that was under way while the work
        was dropped may begin after the rewound offset: applied, they would move the position past inputs that
        are no longer applied anywhere.
        """
        assert self._consumer is not None
        for tp, offset in self._rewind.items():
            batch.pop(tp, None)
            if tp in self._consumer.assignment():
                self._consumer.seek(tp, offset)
        self._rewind.clear()

    async def _commits(self) -> None:
        """Commit what was applied, one transaction at a time, as soon as there is something to commit."""
        backoff = 0.0
        while True:
            if self._out_of_sync:  # a commit failed (here, or while giving up partitions)
                try:
                    await self._resync()
                except (KafkaError, TimeoutError, OSError) as exc:
                    backoff = min(5.0, max(0.25, backoff * 2))
                    logger.warning("could not resynchronise (%s); retrying in %.2fs", exc, backoff)
                    await asyncio.sleep(backoff)
                continue
            # asyncio.timeout, not wait_for: in Python 3.11 wait_for can swallow a cancellation that races with the
            # wake-up, and the worker would never stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(IDLE_COMMIT_S):
                    await self._work.wait()
            self._work.clear()
            await self._linger()
            try:
                await self._flush(force=False)
                backoff = 0.0
            except ProducerFenced:
                logger.error("another worker runs with id %s: this one stops", self.settings.worker_id)
                raise
            except fencing.FENCED as exc:
                logger.warning("the group moved on without this worker (%s): transaction aborted; it rejoins", exc)
            except (KafkaError, TimeoutError, OSError) as exc:
                # The broker is away or restarting: the transaction was rolled back; the state is reloaded next.
                backoff = min(5.0, max(0.25, backoff * 2))
                logger.warning("transaction not committed (%s); retrying in %.2fs", exc, backoff)
                await asyncio.sleep(backoff)

    async def _linger(self) -> None:
        """Give steps started from the open transaction a moment to report into it.

        A chain of quick steps then commits once, with its runs' next steps and completions, instead of once per
        step; nothing waits on the transaction meanwhile (no step is held back for it).
        """
        deadline = time.monotonic() + COMMIT_LINGER_S
        while self._open.awaits_outcomes and (left := deadline - time.monotonic()) > 0:
            self._work.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._work.wait()

    @property
    def steps_executed(self) -> int:
        """Step attempts this worker ran to an outcome."""
        return self._executor.executed if self._executor is not None else 0

    @property
    def failed(self) -> BaseException | None:
        """What stopped the worker, if something did."""
        return self._failure

    def stop(self) -> None:
        """Ask the worker to commit what it applied and leave the group."""
        self._stopping.set()

    async def close(self) -> None:
        """Stop the executor, leave the group, close producers and the store (:data:`CLOSE_TIMEOUT_S` at most)."""
        if self._executor is not None:
            await bounded(CLOSE_TIMEOUT_S, self._executor.stop())
        clients = [c for c in (self._consumer, self._producer, self._reports) if c is not None]
        await asyncio.gather(self.timers.close(), bounded(CLOSE_TIMEOUT_S, *(c.stop() for c in clients)))
        self._store.close()

    # -- partitions ----------------------------------------------------------------------------------------

    async def revoke(self, revoked: set[TopicPartition]) -> None:
        """Let a transaction under way finish, and drop what was applied since: the next owner reads it again.

        What was applied and not committed is not committed now: this worker may already have lost the
        partitions (a session that expired while the broker was away), and a commit would then race the next
        owner. Every input it holds is in the inbox, after the committed offsets; the group protocol revokes all
        partitions, and the ones assigned again are read from their committed offsets.
        """
        partitions = {tp.partition for tp in revoked}
        self._owned -= partitions  # before waiting for the lock: a resync holding it must not take them back
        async with self._withheld(partitions):  # their inputs are left to the next owner
            self._drop_open()
            self._forget(revoked)
        logger.info("revoked %s", sorted((tp.topic, tp.partition) for tp in revoked))

    @contextlib.asynccontextmanager
    async def _withheld(self, partitions: set[int]) -> AsyncIterator[None]:
        """Hold the lock with ``partitions`` out of the restored set: neither the reader nor an offer applies them.

        They are taken out before waiting for the lock and again once it is held: a resync that held it meanwhile
        marks every assigned partition restored.
        """
        self._restored -= partitions
        async with self._lock:
            self._restored -= partitions
            yield

    def _drop_open(self) -> None:
        """Forget what was applied and not committed (the committed states stay on disk); read its inputs again."""
        dropped = self._open
        self._drop_early(dropped)
        self._unoffer(dropped)
        for tp, first in dropped.first.items():
            position = self._consumed.get(tp)
            if position is None or position <= first:
                continue  # the consumer has not handed it out yet (an input offered ahead of it)
            self._consumed[tp] = first
            self._rewind[tp] = min(self._rewind.get(tp, first), first)
        self._open = Pending()
        self._room.set()
        self._cache.clear()  # committed states only, but some may have been read while a dropped one was applied
        self.actor.forget()  # kept coroutines saw the dropped states (they would not be used again anyway)

    def _drop_early(self, dropped: Pending) -> None:
        """Outcomes applied early in ``dropped`` are lost with it: their steps never start, their reports are inputs."""
        assert self._executor is not None
        for early in dropped.early:
            early.dropped = True
            reported = self._early.arrived(early.command.id)  # read again like any input
            if not reported and early.task is not None and early.release is not None:
                # Recorded nowhere else: the attempt must run again. Revokes and failed commits give the partition
                # up first, and the task is read again from its held-back offset; a drop that keeps the partition
                # (tests/integration/test_dropped_work.py makes one) runs it again here.
                if self.partition_of(early.command.key.encode()) in self._restored:
                    self._executor.submit(early.task, early.release)
                else:
                    early.release()
            if not early.settled:
                self._early.settle(early)

    def _unoffer(self, dropped: Pending) -> None:
        """The records applied when written in ``dropped`` are applied again when the consumer reads them."""
        for tp, offset in dropped.offered:
            self._offered.get(tp, set()).discard(offset)

    def _forget(self, partitions: set[TopicPartition]) -> None:
        """Forget where reading and local steps stood on ``partitions``: they are read again from committed offsets."""
        for tp in partitions:
            self._task_offsets.pop(tp, None)
            self._catching_up.pop(tp, None)
            self._consumed.pop(tp, None)
            self._offered.pop(tp, None)
            self._rewind.pop(tp, None)
        for at in [at for at in self._local if at[0] in partitions]:
            del self._local[at]

    async def assign(self, assigned: set[TopicPartition]) -> None:
        """Bring the local state of newly owned partitions up to date from the changelog.

        If that fails (the broker is away), the worker reloads them as after a failed commit (:meth:`_resync`):
        aiokafka would only log the error, and the partitions would stay owned and never be applied.
        """
        partitions = sorted(tp.partition for tp in assigned if tp.topic == self.topics.inbox)
        began = time.monotonic()
        async with self._withheld(set(partitions)):  # no input is applied to a state not restored yet
            self._owned |= set(partitions)
            self._cache.clear()
            self._forget(assigned)
            try:
                await self._ensure_producer()
                restored = await self._restore(partitions)
            except (KafkaError, OSError, TimeoutError) as exc:
                logger.warning("could not restore partitions %s (%s): they are reloaded next", partitions, exc)
                self._unsync()
                return
            except Exception as exc:  # RocksDB itself: stop, and let the partitions' next owner restore them
                logger.exception("restoring partitions %s failed; stopping the worker", partitions)
                self._fail(exc)
                return
            inbox = {tp for tp in assigned if tp.topic == self.topics.inbox}
            await self._resume_at_committed(inbox)
            await self._catch_up(inbox)
            self._restored |= set(partitions)
        logger.info(
            "assigned partitions %s; restored %d state records in %.2fs",
            partitions,
            restored,
            time.monotonic() - began,
        )
        self.ready.set()

    async def _resume_at_committed(self, inbox: set[TopicPartition]) -> None:
        """Start the consumed positions of ``inbox`` partitions at the group's committed offsets (else their first).

        The reader resumes there, so every input before is applied. Knowing it before the first read places
        inputs offered at that offset in order, and gives a transaction of inputs taken before they were written
        an offset to commit again: its fence (see :meth:`_commit_open`), a first offset as well as a committed one.
        """
        assert self._consumer is not None
        try:
            async with asyncio.timeout(COMMITTED_TIMEOUT_S):  # aiokafka retries while the coordinator is away
                self._consumed.update(await committed_positions(self._consumer, inbox))
        except (KafkaError, OSError, TimeoutError) as exc:
            logger.warning("committed offsets of %s unknown (%s); positions follow the first reads", inbox, exc)

    async def _catch_up(self, inbox: set[TopicPartition]) -> None:
        """Read no step task of the partitions of ``inbox`` until the reader has read them to where they end now.

        A previous owner may have reported a step's outcome to the inbox and stopped before it applied it (a crash,
        a failed commit): the step's task is then ahead of the committed offsets too, and read again. Considered
        before the outcome is applied, the task would still be current and the step run a second time; applied
        first, the outcome makes it stale. (An outcome reported after this call, by an owner that lost the
        partition while its step ran, is not covered: that attempt was in flight at the handover.)
        """
        assert self._consumer is not None
        if not inbox:
            return
        try:
            async with asyncio.timeout(COMMITTED_TIMEOUT_S):
                self._catching_up.update(await written_ends(self.settings.bootstrap, sorted(inbox)))
        except (KafkaError, OSError, TimeoutError) as exc:
            logger.warning(
                "ends of %s unknown (%s): step tasks are read at once, and a step whose outcome is in the inbox and"
                " not applied yet may run again",
                sorted(tp.partition for tp in inbox),
                exc,
            )
        self._flow_control()

    async def _caught_up(self) -> None:
        """Let the tasks partitions be read whose inbox partitions the reader has read to their end at takeover."""
        assert self._consumer is not None
        for tp, end in list(self._catching_up.items()):
            if tp.partition not in self._restored or tp not in self._consumer.assignment():
                continue
            try:
                async with asyncio.timeout(0.2):  # a position not known yet (just assigned) is looked up
                    position = await self._consumer.position(tp)  # past what was handed out; markers once fetched
            except (IllegalStateError, KafkaError, TimeoutError):
                continue  # taken away meanwhile, or the coordinator is away: asked again after the next read
            if position >= end and self._catching_up.get(tp) == end and tp.partition in self._restored:
                del self._catching_up[tp]
        self._flow_control()

    async def _restore(self, partitions: list[int]) -> int:
        settle = self.settings.transaction_timeout_ms / 1000 + 30  # a previous owner's transaction may be open
        return await restore(self._store, self.settings.bootstrap, self.topics.state, partitions, settle_s=settle)

    def _flow_control(self) -> None:
        """Stop reading while too many steps wait for a slot; inputs wait in Kafka, which costs no memory.

        Steps start as inputs are applied, so a burst of starts would otherwise hold a waiting step (its task,
        coroutine and arguments) per run. Step outcomes and timer firings of this process still arrive in-process.
        The tasks partitions of inbox partitions catching up after a takeover stay paused (:meth:`_catch_up`).
        """
        assert self._consumer is not None
        assert self._executor is not None
        if self._executor.in_flight >= 4 * self.settings.step_concurrency:
            self._consumer.pause(*self._consumer.assignment())
            return
        waiting: set[TopicPartition] = set()
        if self._catching_up:
            waiting = {TopicPartition(self.topics.tasks, tp.partition) for tp in self._catching_up}
            waiting &= self._consumer.assignment()
            self._consumer.pause(*waiting)
        resumed = self._consumer.paused() - waiting
        if resumed:
            self._consumer.resume(*resumed)

    # -- states --------------------------------------------------------------------------------------------

    def partition_of(self, key: bytes) -> int:
        """The partition of ``key`` on every Steady topic (Kafka's murmur2 default partitioner)."""
        return self._partition(key)

    def _state(self, partition: int, key: str) -> RunState | None:
        """A run's latest state: applied and not committed yet, else committed (cached, else from RocksDB)."""
        for pending in (self._open, self._committing):
            if pending is not None and key in pending.states:
                return pending.states[key][1]
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
        """Whether ``task`` is still the current attempt of a scheduled step of a live run.

        Not while its partition is not restored (being taken over, or reloaded after a failed commit): what was
        applied there may have been dropped, and the task is read again once it is.
        """
        partition = self.partition_of(task.key.encode())
        if partition not in self._restored:
            return False
        state = self._state(partition, task.key)
        if state is None:
            logger.warning("no state for the run of step task %s; running it", task.idempotency_key)
            return True
        if state.status is not RunStatus.RUNNING or not 0 <= task.seq < len(state.journal):
            return False
        entry = state.journal[task.seq]
        return entry.kind is EntryKind.STEP and entry.state is EntryState.SCHEDULED and entry.attempt == task.attempt

    # -- inputs --------------------------------------------------------------------------------------------

    def _take(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        """Apply a fetched batch of inbox records and accept the step tasks in it."""
        assert self._consumer is not None
        pending = self._open
        for tp, records in batch.items():
            if tp.partition not in self._restored:
                # Fetched just before a rebalance gave or took the partition: read it again once restored.
                if tp in self._consumer.assignment():
                    self._consumer.seek(tp, records[0].offset)
                continue
            if tp.topic == self.topics.tasks:
                for record in records:
                    self._accept_task(tp, record, pending)
                continue
            offered = self._offered.get(tp)
            for record in records:
                if offered and record.offset in offered:
                    offered.discard(record.offset)  # applied when it was written
                else:
                    if tp not in pending.first or record.offset < pending.first[tp]:
                        pending.first[tp] = record.offset  # an input offered ahead may have come first
                    self._apply(record, pending)
                    pending.inputs += 1
            self._consumed[tp] = records[-1].offset + 1
            pending.offsets[tp] = records[-1].offset + 1
        self._work.set()

    def offer(self, command: Command, meta: RecordMetadata) -> None:
        """Apply a step outcome or timer firing this process just wrote to the inbox, without waiting to read it.

        Only what the run takes now is applied (a step's current attempt, a live timer); the rest is left to the
        consumer. An input applied exactly at the consumer's position is in the inbox's order, and its effects
        are those any later owner would derive from the inbox; one applied ahead of records not read yet makes
        its run's new steps wait for the commit. Either way the record is skipped when the consumer reaches it.
        """
        tp = TopicPartition(meta.topic, meta.partition)
        if meta.topic != self.topics.inbox or meta.partition not in self._restored or self._stopping.is_set():
            return
        if self.partition_of(command.key.encode()) != meta.partition:
            return  # not on its run's partition: the consumer forwards it
        if not self.actor.answers(self._state(meta.partition, command.key), command):
            return
        pending = self._open
        in_order = self._consumed.get(tp) == meta.offset
        if not in_order:
            pending.held.add(command.key)
        if not self._handle(command, meta.partition, pending, None):
            return  # left to the consumer, which dead-letters it if it fails again
        self._applied_ahead(tp, meta.offset, pending, in_order=in_order)
        self._work.set()

    def _applied_ahead(self, tp: TopicPartition, offset: int, pending: Pending | None, *, in_order: bool) -> None:
        """The inbox record at ``offset`` was applied before the consumer reached it: skip it there.

        In order, the consumed position moves past it. If ``pending`` (what it was applied in, not committed yet)
        is dropped, the consumer reads it again.
        """
        if in_order:
            self._consumed[tp] = offset + 1
            self._open.offsets[tp] = offset + 1
        self._offered.setdefault(tp, set()).add(offset)
        if pending is not None:
            pending.first[tp] = min(pending.first.get(tp, offset), offset)
            pending.offered.append((tp, offset))

    def take_outcome(self, task: StepTask, command: Command) -> EarlyInput | None:
        """Apply the outcome of a step of a run this worker owns before it is written; ``None``: report it first.

        The transaction of what it is applied in records it (history, state). If its run scheduled new steps from
        it, they wait until the outcome's report is in the inbox (:meth:`early_reported`): a crash before then
        must not leave a step that ran on an outcome nobody recorded.

        No report is written when the run scheduled no step, nor under load (:data:`REPORT_UNDER_LOAD`): then the
        new steps wait for the commit, as do those of the run's later inputs.
        """
        early = self._take_early(task, command)
        if early is None:
            return None
        busy = self._committing is not None and len(early.pending.early) >= REPORT_UNDER_LOAD
        if early.steps and not busy:
            self._early.expect(early)
        else:
            self._settle_with_commit(early)
            early.steps.clear()  # nothing waits for a report: the executor writes none
        step = self._running_local.get(task.attempt_id)
        if step is not None:
            step.finished = True  # for the linger: its outcome is in the transaction
        return early

    def take_firing(self, command: Command) -> EarlyInput | None:
        """Apply a timer's firing that is being written to the inbox, before it is there; ``None``: offer it then.

        As with a step outcome taken early, the transaction of what it is applied in records it, and its run's new
        steps wait until the firing is in the inbox (:meth:`early_reported`) or that transaction committed. A
        firing that could not be written (:meth:`early_lost`) stays due and fires again; the run then drops it.
        """
        early = self._take_early(None, command)
        if early is not None:
            self._early.expect(early)
        return early

    def _take_early(self, task: StepTask | None, command: Command) -> EarlyInput | None:
        """Apply ``command`` in the open transaction if this worker owns its run and the run takes it now."""
        key = command.key
        partition = self.partition_of(key.encode())
        if partition not in self._restored or self._stopping.is_set():
            return None
        if not self.actor.answers(self._state(partition, key), command):
            return None
        pending = self._open
        early = EarlyInput(task, command, pending)
        self._taking = early
        try:
            applied = self._handle(command, partition, pending, None)
        finally:
            self._taking = None
        if not applied:
            return None
        pending.early.append(early)
        self._work.set()
        return early

    def early_lost(self, early: EarlyInput) -> None:
        """``early``'s record could not be written to the inbox: its run's waiting steps wait for the commit."""
        if not self._early.arrived(early.command.id) or early.dropped or early.settled:
            return
        self._early.settle(early)
        self._settle_with_commit(early)

    @staticmethod
    def _settle_with_commit(early: EarlyInput) -> None:
        """The transaction ``early`` was applied in is its only record: its run's new steps wait for the commit."""
        early.settled = True
        early.pending.held.add(early.command.key)  # the run's later inputs' steps too
        early.pending.deferred.extend(early.steps)  # not committed (the commit settles what it holds): starts then

    def early_reported(self, early: EarlyInput, meta: RecordMetadata) -> None:
        """The record of an input applied early (a report, a firing) is in the inbox: its run's steps may start."""
        self._reported(early, TopicPartition(meta.topic, meta.partition), meta.offset, read=False)

    def _reported(self, early: EarlyInput, tp: TopicPartition, offset: int, *, read: bool) -> None:
        """``early``'s report is at ``offset`` of ``tp``: written (``read`` False) or reached by the consumer."""
        if not self._early.arrived(early.command.id) or early.dropped:
            return  # already seen, or its work was dropped: the record is an ordinary input again
        pending = early.pending
        in_order = read or self._consumed.get(tp) == offset
        if not read:
            self._applied_ahead(tp, offset, None if pending.committed else pending, in_order=in_order)
        if (not in_order or early.overtaken) and not pending.committed:
            # It landed after inputs of its run that were applied after it (overtaken) or are not read yet: a new
            # owner would apply those first, so the run's new steps wait for the commit.
            pending.held.add(early.command.key)
        if early.settled:
            return
        self._early.settle(early)
        if pending.committed or self._may_start_now(early.command.key):  # held above if it did not land in order
            for step in early.steps:
                self._start(step)
        else:
            pending.deferred.extend(early.steps)
        self._work.set()

    def _accept_task(self, tp: TopicPartition, record: ConsumerRecord, pending: Pending) -> None:
        assert self._executor is not None
        tracked = self._task_offsets.setdefault(tp, TaskOffsets())
        tracked.fetched = record.offset + 1
        if self._local.pop((tp, record.offset), None) is not None:
            return  # this worker scheduled it and runs it (or ran it) already
        try:
            task = TASK.decode(record.value)
        except CodecError as exc:
            pending.outputs.append(self._dead_letter(record, f"undecodable step task: {exc}"))
            return
        tracked.running.add(record.offset)
        self._executor.submit(task, lambda: tracked.running.discard(record.offset))

    def _apply(self, record: ConsumerRecord, pending: Pending) -> None:
        if record.key is None:
            pending.outputs.append(self._dead_letter(record, "inbox record without a key"))
            return
        if record.value is None or len(record.value) > self.settings.max_payload_bytes:
            size = 0 if record.value is None else len(record.value)
            limit = self.settings.max_payload_bytes
            pending.outputs.append(
                self._dead_letter(record, f"record of {size} bytes exceeds the limit of {limit} bytes")
            )
            return
        partition = self.partition_of(record.key)
        if partition != record.partition:
            # A producer with another partitioner (librdkafka's default is CRC32): route it to its run's owner.
            pending.outputs.append(Out(record.topic, partition, record.key, record.value, list(record.headers)))
            return
        try:
            command = COMMAND.decode(record.value)
        except CodecError as exc:
            pending.outputs.append(self._dead_letter(record, f"undecodable command: {exc}"))
            return
        if command.key.encode() != record.key:
            pending.outputs.append(self._dead_letter(record, f"record key {record.key!r} is not the command's run key"))
            return
        early = self._early.get(command.id)
        if early is not None and early.command == command:
            self._reported(early, TopicPartition(record.topic, record.partition), record.offset, read=True)
            return  # applied before it was written
        self._handle(command, partition, pending, record)

    def _handle(self, command: Command, partition: int, pending: Pending, record: ConsumerRecord | None) -> bool:
        """Apply ``command`` to its run; ``record`` is where it was read (``None``: offered when written).

        Returns whether it was applied; what cannot be goes to the dead-letter topic when it was read.
        """
        if self._early.waits(command.key) and (self._taking is None or self._taking.command is not command):
            # An input of a run whose outcome applied early is not in the inbox yet: where its report lands, a new
            # owner might apply this one first. The steps waiting on that outcome wait for the commit instead.
            self._early.overtake(command.key)
        now = self.clock.now_ms()
        if command.at_ms < now:
            # The run's "now" is when its worker takes the command: a sleep counts from the moment the workflow
            # reached it, not from when a start that waited in a backlog was sent.
            command = replace(command, at_ms=now)
        state = self._state(partition, command.key)
        try:
            outcome = self.actor.handle(state, command)
        except Exception as exc:
            logger.exception("command %s for %s could not be applied", command.id, command.key)
            if record is not None:
                pending.outputs.append(self._dead_letter(record, f"internal error applying {command.id}: {exc!r}"))
            return False
        if outcome.rejected:
            if record is not None:
                pending.outputs.append(self._dead_letter(record, outcome.rejected))
            return False
        self.applied += 1
        if any(isinstance(e.body, ValueRecorded) for e in outcome.events):
            # The workflow read the clock (ctx.now()): applied again after a crash, at another time, it may take
            # another branch, so its new steps wait for the commit that records what it read.
            pending.held.add(command.key)
        if outcome.state is not None and outcome.events:
            pending.states[command.key] = (partition, outcome.state)
        self._emit(command, outcome.state, outcome.events, partition, pending)
        return True

    def _may_start_now(self, key: str) -> bool:
        """Whether a new step of this run may start before the transaction that schedules it commits.

        It may when every input the run took and did not commit came from the inbox in the inbox's order and the
        workflow did not read the clock meanwhile: a new owner after a crash reads the same inputs in the same
        order and schedules the same step (the attempt then runs again, as any attempt in flight at a crash does,
        under the same idempotency key).
        """
        if self._early.waits(key):
            return False  # an outcome it took is not durable yet
        committing = self._committing
        return key not in self._open.held and (committing is None or key not in committing.held)

    def _emit(
        self, command: Command, state: RunState | None, events: list[Event], partition: int, pending: Pending
    ) -> None:
        key = command.key.encode()
        for event in events:
            pending.outputs.append(Out(self.topics.history, partition, key, EVENT.encode(event), EVENT.headers))
            body = event.body
            if isinstance(body, StepScheduled) and state is not None:
                task = StepTask.scheduled(state, body, event.at_ms)
                step = LocalStep(task)
                pending.outputs.append(Out(self.topics.tasks, partition, key, TASK.encode(task), TASK.headers, step))
                taking = self._taking
                if taking is not None and taking.command.key == command.key and self._may_start_now(command.key):
                    taking.steps.append(step)  # starts once the outcome it follows is durable
                    pending.started.append(step)
                elif self._may_start_now(command.key):
                    self._start(step)
                    pending.started.append(step)
                else:
                    pending.deferred.append(step)
            elif isinstance(body, TimerScheduled):
                record = TimerRecord(command.tenant, command.workflow_id, body.timer, event.at_ms)
                pending.outputs.append(
                    Out(self.topics.timers, partition, record.key.encode(), TIMER.encode(record), TIMER.headers)
                )
            elif isinstance(body, TimerCancelled):
                tombstone = timer_key(command.key, body.timer_id).encode()
                pending.outputs.append(Out(self.topics.timers, partition, tombstone, None, []))
            elif isinstance(body, WorkflowCompleted | WorkflowFailed | WorkflowCancelled) and state is not None:
                done = Completion.of(state, event.at_ms)
                pending.outputs.append(
                    Out(self.topics.completions, partition, key, COMPLETION.encode(done), COMPLETION.headers)
                )

    def _start(self, step: LocalStep) -> None:
        """Run a step this worker scheduled, without waiting to read its task back from the topic."""
        assert self._executor is not None
        if step.started:
            return
        step.started = True
        self._running_local[step.task.attempt_id] = step
        self._executor.submit(step.task, lambda: self._finished(step))

    def _finished(self, step: LocalStep) -> None:
        step.finished = True
        self._running_local.pop(step.task.attempt_id, None)
        self._work.set()
        if step.partition is not None and step.offset is not None:
            tracked = self._task_offsets.get(step.partition)
            if tracked is not None:
                tracked.running.discard(step.offset)

    def _dead_letter(self, record: ConsumerRecord, reason: str) -> Out:
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
        return Out(self.topics.dead_letter, partition, record.key, DEAD_LETTER.encode(letter), DEAD_LETTER.headers)

    # -- transactions --------------------------------------------------------------------------------------

    async def _flush(self, *, force: bool) -> None:
        async with self._lock:
            await self._commit_open(force=force)

    async def _commit_open(self, *, force: bool) -> None:
        """Commit the open :class:`Pending` in one transaction (the lock is held)."""
        pending = self._open
        for tp, tracked in self._task_offsets.items():
            nxt = tracked.committable()
            if nxt is not None:
                pending.offsets[tp] = nxt
        # Offsets alone (step tasks read back, records applied when written) wait for a transaction with effects
        # or for a quiet second: reading them again after a crash changes nothing.
        idle = time.monotonic() - self._last_commit > IDLE_COMMIT_S
        full = pending.inputs >= self.settings.max_batch  # the reader waits for this one to be taken
        if not pending.has_effects and not (pending.offsets and (idle or force or full)):
            return
        if not pending.offsets:
            # Only inputs taken before they were written (step outcomes, firings): the transaction still commits
            # an offset, the one it would have committed, because the broker refuses the offsets of a member the
            # group dropped and the whole transaction with them. Without that fence, a worker whose session
            # expired could commit after the partitions' next owner restored them.
            for tp, position in self._consumed.items():
                pending.offsets[tp] = position  # every input before it is committed already, or in this one
                break
        self._open = Pending()
        self._room.set()
        self._committing = pending
        limit = self.settings.transaction_timeout_ms / 1000
        try:
            # A transaction open longer than this is aborted by the broker anyway; a commit still waiting then (its
            # records retried without end, say) is rolled back here rather than holding every later input.
            async with asyncio.timeout(limit):
                await self._commit(pending)
        except TimeoutError:
            await self._roll_back()
            raise TimeoutError(f"the commit did not end within the transaction timeout ({limit:.0f}s)") from None
        except BaseException:
            await self._roll_back()
            raise
        finally:
            self._committing = None
        self._last_commit = time.monotonic()

    async def _commit(self, pending: Pending) -> None:
        producer = await self._ensure_producer()
        encoded = [(key, partition, STATE.encode(state)) for key, (partition, state) in pending.states.items()]
        records: list[Writable] = list(pending.outputs)  # an output has what a record to write has
        records += [Record(self.topics.state, p, key.encode(), value, STATE.headers) for key, p, value in encoded]
        await batches.begin(producer)
        placed = await batches.write(producer, records)
        # aiokafka ends a transaction even when one of its batches failed: it must hold all of them, or none.
        for batch in {id(p.batch): p.batch for p in placed}.values():
            await batch  # raises if it failed; no wait at all once it is delivered
        if pending.offsets:
            # Only once the records are written: Kafka adds partitions to a transaction as their first records
            # arrive, and the offsets' partition as the offsets do, and its broker keeps one addition per
            # transaction waiting to be checked. Sent together, one displaces the other, which is answered
            # NETWORK_EXCEPTION and retried.
            # Named with this member's generation, so that a commit after the group dropped it is refused.
            assert self._consumer is not None
            member = fencing.group_member(self._consumer, self.settings.group)
            await fencing.send_offsets(producer, pending.offsets, member)
        await producer.commit_transaction()
        pending.committed = True
        self.transactions += 1
        # Committed: the local copy follows, with the changelog position it now reflects.
        states = placed[len(pending.outputs) :]
        by_partition: dict[int, tuple[list[tuple[str, bytes | None]], int]] = {}
        for (key, partition, value), where in zip(encoded, states, strict=True):
            writes, nxt = by_partition.get(partition, ([], 0))
            writes.append((key, value))
            by_partition[partition] = (writes, max(nxt, where.offset + 1))
        for partition, (writes, nxt) in by_partition.items():
            self._store.write(partition, writes, nxt)
        for key, (_, state) in pending.states.items():
            self._remember(key, state)
        for tp, offset in pending.offsets.items():
            if tp in self._task_offsets:
                self._task_offsets[tp].committed = offset
        for out, where in zip(pending.outputs, placed, strict=False):
            if out.step is None:
                continue
            step = out.step
            step.partition, step.offset = TopicPartition(out.topic, out.partition), where.offset
            self._local[(step.partition, step.offset)] = step
            if not step.finished:
                self._task_offsets.setdefault(step.partition, TaskOffsets()).running.add(step.offset)
        for step in pending.deferred:
            self._start(step)
        for early in pending.early:
            if early.release is not None:
                early.release()  # the commit recorded the outcome: the task's attempt is done
            if not early.settled:  # its report is still on its way; the commit made the outcome durable
                self._early.settle(early)
                for step in early.steps:
                    self._start(step)
        pending.let_go()

    def _unsync(self) -> None:
        """Drop what was applied and not committed, and apply nothing more until :meth:`_resync` reloads."""
        self._restored.clear()  # inputs are neither applied nor offered until the resync
        self._drop_open()
        self._out_of_sync = True

    async def _roll_back(self) -> None:
        """Abort the transaction, forget everything not committed, and stop applying until :meth:`_resync`.

        Whether a transaction whose commit failed did commit may be unknown (the broker may have written its
        decision and then died): the truth is on the changelog and in the group's offsets, once it settled. One
        known to have committed is not aborted; the resync still follows, since the local copy may be partly written.
        """
        self._unsync()
        if self._committing is not None:
            self._drop_early(self._committing)
            self._unoffer(self._committing)
        if self._producer is None or self._stopping.is_set():
            return  # stopping: close() closes the producer, and its successor fences the open transaction
        if not batches.transaction_open(self._producer):
            return  # it committed (what failed came after: the local store's write, say) or never began
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self._producer.abort_transaction()
        except Exception:
            logger.warning("could not abort the transaction; the producer is replaced", exc_info=True)
            await bounded(CLOSE_TIMEOUT_S, self._producer.stop())
            self._producer = None  # a new one (same transactional id) fences it and aborts what it left open

    async def _resync(self) -> None:
        """After a failed commit: reload the owned partitions' state and read on from the committed offsets.

        The restore waits until the changelog has no transaction pending, so a commit whose outcome was unknown
        is either in the state and the offsets, or in neither. Inputs read again that the state already took
        are dropped by the actor (a duplicate start, outcome or firing changes nothing).

        Owned means as the rebalance listener last heard: between a revoke and the next assignment, aiokafka
        still names the revoked partitions as assigned, and a resync then must not mark them restored.
        """
        assert self._consumer is not None
        async with self._lock:
            await self._ensure_producer()
            assigned = {tp for tp in self._consumer.assignment() if tp.partition in self._owned}
            partitions = sorted(tp.partition for tp in assigned if tp.topic == self.topics.inbox)
            await self._restore(partitions)
            positions = await committed_positions(self._consumer, assigned)
            for tp, offset in positions.items():
                self._consumer.seek(tp, offset)
            self._forget(assigned)
            self._consumed.update((tp, o) for tp, o in positions.items() if tp.topic == self.topics.inbox)
            await self._catch_up({tp for tp in assigned if tp.topic == self.topics.inbox})
            self._cache.clear()
            self._restored = set(partitions)
            self._out_of_sync = False
        logger.info("resynchronised partitions %s from the changelog and committed offsets", partitions)
        if partitions:
            self.ready.set()
