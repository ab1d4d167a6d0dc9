"""The timer service: fires durable timers (sleeps, retry backoffs, step and workflow timeouts).

Actors write a :class:`~streams.records.TimerRecord` to the compacted ``timers`` topic, on their run's
partition, in the same transaction as the event that set it; cancelling writes a tombstone. The timer
service owns the partitions of that topic through its own consumer group, keeps the live timers in RocksDB
ordered by due time (key = partition, big-endian due milliseconds, timer key) and, when the earliest is due,
sends ``FireTimer`` to the run's inbox and tombstones the timer.

The topic is the service's changelog: a new owner of a partition reads it from its local checkpoint (or from
the start) and has every live timer. Work follows due timers only: the service reads each partition's ordered
store on from the last timer it handed out (from the head after a release), never scans pending timers, and holds
none of them in memory. Firing is at least once: a timer fired twice (a crash between firing and its tombstone)
changes nothing the second time, because the actor keeps the ids of its pending timers and ignores the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import RecordMetadata
from rocksdict import Rdict, WriteBatch

from actors.commands import Command, FireTimer
from schemas.codec import CodecError
from streams.clock import Clock
from streams.loop import CLOSE_TIMEOUT_S, bounded
from streams.pending import EarlyInput
from streams.records import COMMAND, TIMER
from streams.settings import Settings
from streams.store import rocksdb_options
from streams.topics import Topics, group_consumer

logger = logging.getLogger(__name__)

RETRY_FIRST_S = 0.1
RETRY_LAST_S = 5.0
"""Firings that could not be written are sent again after RETRY_FIRST_S, doubling up to RETRY_LAST_S."""

HAND_OVER_CHUNK = 4
"""Firings handed to the worker between two chances for other tasks (a commit, the reader) to run (as
``streams.worker.APPLY_CHUNK``, and for the same reason: each one runs its workflow)."""

_DUE = b"d"
_INDEX = b"i"
_CHECKPOINT = b"c"
_NONE_DUE = 2**64 - 1
"""The floor of a partition without timers."""


def _p(partition: int) -> bytes:
    return struct.pack(">I", partition)


class TimerStore:
    """Live timers per partition, ordered by due time, with the topic offset each partition reflects."""

    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self._db = Rdict(str(path), rocksdb_options())
        self._floor: dict[int, int] = {}
        """Per partition: no live timer is due before this. Reads from the head seek to it, past the deletions of
        fired timers, which RocksDB keeps (and a seek from the partition's first key would step over) until it
        compacts; and nothing is read while it is still ahead. Such reads move it to the head; while timers are
        handed out, reads start after the last one instead, and it stays where it was (still a lower bound)."""
        self._exact: set[int] = set()
        """Partitions whose floor is their earliest timer's due time (or says that they have none)."""
        self._handed: dict[int, bytes] = {}
        """Per partition: the last timer :meth:`due` handed out or passed over (in its ``skip``); the next call
        reads on from after it. Those up to it are out (their firings in flight) until forgotten, or handed out
        again after :meth:`release`."""
        self._ahead: dict[int, int] = {}
        """Per partition: no timer after the last one handed out is due before this (set by the last read, lowered
        by an earlier timer set since, dropped when the timer it names is deleted). While it is ahead of now,
        :meth:`due` reads nothing."""

    def apply(self, partition: int, records: list[tuple[str, int | None, bytes | None]], next_offset: int) -> None:
        """Put (key, due, value) or delete (key, None, None) timers, and move the partition's checkpoint."""
        batch = WriteBatch(raw_mode=True)
        seen: dict[str, int | None] = {}
        for key, due, value in records:
            index = _INDEX + _p(partition) + key.encode()
            old = seen[key] if key in seen else self._due_of(index)
            floor = self._floor.get(partition)
            if old is not None:
                batch.delete(_DUE + _p(partition) + struct.pack(">Q", old) + key.encode())
                if old == floor:
                    self._exact.discard(partition)  # it may have been the earliest
                if old == self._ahead.get(partition):
                    del self._ahead[partition]  # it may have been the first not handed out
            if due is None or value is None:
                batch.delete(index)
            else:
                at = _DUE + _p(partition) + struct.pack(">Q", due) + key.encode()
                batch.put(at, value)
                batch.put(index, struct.pack(">Q", due))
                if floor is not None and due < floor:
                    self._floor[partition] = due
                    self._exact.add(partition)  # the new earliest
                handed = self._handed.get(partition)
                if handed is not None and at <= handed:
                    self.release(partition)  # among those handed out already: read from the floor again
                elif partition in self._ahead and due < self._ahead[partition]:
                    self._ahead[partition] = due
            seen[key] = due
        batch.put(_CHECKPOINT + _p(partition), struct.pack(">Q", next_offset))
        self._db.write(batch)

    def _due_of(self, index: bytes) -> int | None:
        raw = self._db.get(index)
        return None if raw is None else int(struct.unpack(">Q", raw)[0])

    def forget(self, partition: int, keys: list[str]) -> None:
        """Remove fired timers at once (their tombstones arrive later through the topic)."""
        self.apply(partition, [(k, None, None) for k in keys], self.next_offset(partition))

    def next_offset(self, partition: int) -> int:
        """The first topic offset of ``partition`` not yet applied."""
        raw = self._db.get(_CHECKPOINT + _p(partition))
        return 0 if raw is None else int(struct.unpack(">Q", raw)[0])

    def due(self, partition: int, now_ms: int, limit: int, *, skip: Collection[str] = ()) -> list[tuple[str, bytes]]:
        """Hand out up to ``limit`` timers of ``partition`` due at ``now_ms``, earliest first, but those in ``skip``.

        A timer handed out is not handed out again until it is forgotten (it fired) or the partition is released
        (a firing failed, the partition was taken over, or a timer was set before the last one handed out). A
        release hands out again every timer of the partition not forgotten, those still in flight too: callers
        pass those in ``skip``, which are passed over.
        """
        out: list[tuple[str, bytes]] = []
        if self._floor.get(partition, 0) > now_ms or self._ahead.get(partition, 0) > now_ms:
            return out  # nothing due yet: no read at all
        for due, key, at, value in self._live(partition, after=self._handed.get(partition)):
            if due > now_ms or len(out) >= limit:
                self._ahead[partition] = due
                return out
            self._handed[partition] = at
            if key not in skip:
                out.append((key, value))
        self._ahead[partition] = _NONE_DUE
        return out

    def release(self, partition: int) -> None:
        """Hand out again, from the earliest, every timer of ``partition`` not forgotten (see :meth:`due`)."""
        self._handed.pop(partition, None)
        self._ahead.pop(partition, None)

    def next_due(self, partition: int, *, skip: Collection[str] = ()) -> int | None:
        """When the earliest timer of ``partition`` not handed out (nor in ``skip``) is due.

        After a release, the timers of ``skip`` that the last read stopped at may make this earlier than that: a
        sweep then wakes for nothing, never late.
        """
        if partition in self._ahead:
            ahead = self._ahead[partition]
            return None if ahead == _NONE_DUE else ahead
        if partition in self._exact and partition not in self._handed and not skip:
            floor = self._floor[partition]
            return None if floor == _NONE_DUE else floor
        for due, key, _, _ in self._live(partition, after=self._handed.get(partition)):
            if key not in skip:
                return due
        return None

    def _live(self, partition: int, *, after: bytes | None) -> Iterator[tuple[int, str, bytes, bytes]]:
        """(due, key, store key, value) of the partition's timers, earliest first.

        From the floor on (which then moves to the head), or from after the store key ``after``.
        """
        head = _DUE + _p(partition)
        first = after is None
        start = head + struct.pack(">Q", self._floor.get(partition, 0)) if after is None else after
        for raw_key, value in self._db.items(from_key=start):
            at = bytes(raw_key)  # type: ignore[arg-type]  # raw mode: bytes
            if at == after:
                continue
            if not at.startswith(head):
                break
            due = int(struct.unpack(">Q", at[len(head) : len(head) + 8])[0])
            if first:
                self._floor[partition] = due
                self._exact.add(partition)
                first = False
            yield due, at[len(head) + 8 :].decode(), at, bytes(value)
        if first:
            self._floor[partition] = _NONE_DUE
            self._exact.add(partition)

    def count(self, partition: int) -> int:
        """How many live timers ``partition`` holds (scans the partition: for tools and tests)."""
        head = _INDEX + _p(partition)
        total = 0
        for raw_key in self._db.keys(from_key=head):
            if not bytes(raw_key).startswith(head):  # type: ignore[arg-type]
                break
            total += 1
        return total

    def close(self) -> None:
        """Close the database."""
        self._db.close()


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, service: TimerService) -> None:
        self._service = service

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self._service.owned -= {tp.partition for tp in revoked}

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._service.assigned(assigned)


class TimerService:
    """Owns partitions of the timers topic and fires their timers into the inbox when due.

    A firing is handed to ``take`` as soon as it is sent (the worker of the same process applies it at once when
    it owns the run), and a sweep does not wait for the broker's acknowledgement of the one before. Once a
    firing is in the inbox, ``on_early_fired`` hears of it if it was taken, else ``on_fired``; if it cannot be
    written, ``on_lost`` hears of a taken one, and the timer stays due and fires again.
    """

    def __init__(
        self,
        settings: Settings,
        clock: Clock,
        *,
        max_batch: int = 500,
        take: Callable[[Command], EarlyInput | None] | None = None,
        on_fired: Callable[[Command, RecordMetadata], None] | None = None,
        on_early_fired: Callable[[EarlyInput, RecordMetadata], None] | None = None,
        on_lost: Callable[[EarlyInput], None] | None = None,
    ) -> None:
        self.settings = settings
        self.topics = Topics.named(settings.prefix)
        self.clock = clock
        self.max_batch = max_batch
        """How many firings may be sent and not acknowledged yet."""
        self.owned: set[int] = set()
        self.fired = 0
        self._take = take
        self._on_fired = on_fired
        self._on_early_fired = on_early_fired
        self._on_lost = on_lost
        self.store = TimerStore(settings.state_dir / settings.prefix.rstrip(".") / f"{settings.worker_id}-timers")
        self._wake = asyncio.Event()
        self._in_flight: dict[int, set[str]] = {}
        """Per partition: timers whose firings were sent and not acknowledged (they stay in the store till then)."""
        self._acks: set[asyncio.Task[None]] = set()
        self._refused: BaseException | None = None
        """Why the latest firing could not be written: the sweeps back off."""
        self._backoff = RETRY_FIRST_S
        self._broken: BaseException | None = None
        """What an acknowledgement task failed with, beyond the broker's refusals."""
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        """Join the timer services' group."""
        s = self.settings
        self._producer = AIOKafkaProducer(
            bootstrap_servers=s.bootstrap, enable_idempotence=True, acks="all", linger_ms=1
        )
        await self._producer.start()
        self._consumer = group_consumer(s, f"{s.prefix}timers", f"steady-timers-{s.worker_id}")
        await self._consumer.start()
        self._consumer.subscribe([self.topics.timers], listener=_Rebalance(self))

    def assigned(self, assigned: set[TopicPartition]) -> None:
        """Resume each new partition from the local checkpoint: the topic is the store's changelog."""
        assert self._consumer is not None
        for tp in assigned:
            self._consumer.seek(tp, self.store.next_offset(tp.partition))
            self.store.release(tp.partition)
        self.owned |= {tp.partition for tp in assigned}
        self._wake.set()
        logger.info("timer partitions %s", sorted(self.owned))

    def poke(self) -> None:
        """Look at the due timers now (a test clock moved)."""
        self._wake.set()

    async def run(self) -> None:
        """Ingest timers and fire the due ones until cancelled."""
        parts = [asyncio.create_task(self._ingest()), asyncio.create_task(self._fire_due())]
        try:
            await asyncio.gather(*parts)
        finally:
            tasks = parts + list(self._acks)  # when one part fails, the other must not run on
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _ingest(self) -> None:
        assert self._consumer is not None
        while True:
            batch = await self._consumer.getmany(timeout_ms=500, max_records=5_000)
            earliest: int | None = None
            for tp, records in batch.items():
                changes: list[tuple[str, int | None, bytes | None]] = []
                for record in records:
                    if record.key is None:
                        continue
                    key = record.key.decode()
                    if record.value is None:
                        changes.append((key, None, None))
                        continue
                    try:
                        due = TIMER.decode(record.value).timer.due_ms
                    except CodecError:
                        logger.warning("ignoring undecodable timer %s at %s@%d", key, tp, record.offset)
                        continue
                    changes.append((key, due, record.value))
                    earliest = due if earliest is None else min(earliest, due)
                self.store.apply(tp.partition, changes, records[-1].offset + 1)
            if earliest is not None and earliest <= self.clock.now_ms() + 1_000:
                self._wake.set()

    async def _fire_due(self) -> None:
        while True:
            if self._broken is not None:
                raise self._broken
            if self._refused is not None:
                # The due timers stay in the store and fire when the broker is back.
                logger.warning("firing timers failed (%s); retrying in %.1fs", self._refused, self._backoff)
                self._refused = None
                await asyncio.sleep(self._backoff)
                self._backoff = min(RETRY_LAST_S, self._backoff * 2)
                continue
            try:
                sent = await self._sweep()
            except (KafkaError, TimeoutError, OSError) as exc:
                self._refused = exc
                continue
            if sent:
                continue
            heads = [
                d for p in self.owned if (d := self.store.next_due(p, skip=self._in_flight.get(p, ()))) is not None
            ]
            if self._flying() >= self.max_batch or not heads:
                delay = 1.0  # an acknowledgement wakes the sweep
            else:
                delay = min(1.0, max(0.0, (min(heads) - self.clock.now_ms()) / 1000))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):  # not wait_for, which can swallow a cancellation in 3.11
                    await self._wake.wait()

    async def _sweep(self) -> int:
        """Send the firings of the due timers not in flight, every partition at once; how many were sent."""
        now = self.clock.now_ms()
        room = self.max_batch - self._flying()
        sent = 0
        for partition in sorted(self.owned):
            if room - sent <= 0:
                break
            flying = self._in_flight.setdefault(partition, set())
            due = self.store.due(partition, now, room - sent, skip=flying)
            if due:
                await self._fire(partition, due, before=sent)
                sent += len(due)
        return sent

    def _flying(self) -> int:
        """Firings sent and not acknowledged yet."""
        return sum(len(keys) for keys in self._in_flight.values())

    async def _fire(self, partition: int, due: list[tuple[str, bytes]], *, before: int) -> None:
        """Send the firings of ``due``, hand each to ``take``, and leave their acknowledgement to a task.

        ``before``: firings the sweep handed over already, so that it yields every :data:`HAND_OVER_CHUNK` firings
        across partitions, not within each.
        """
        assert self._producer is not None
        flying = self._in_flight[partition]
        keys = [key for key, _ in due]
        flying.update(keys)
        sent: list[asyncio.Future[RecordMetadata]] = []
        taken: list[EarlyInput | None] = []
        commands: list[Command] = []
        try:
            for n, (key, value) in enumerate(due, before + 1):
                record = TIMER.decode(value)
                command = Command(
                    id=f"fire/{key}",
                    tenant=record.tenant,
                    workflow_id=record.workflow_id,
                    at_ms=self.clock.now_ms(),
                    body=FireTimer(record.timer.id, record.timer.due_ms),
                )
                future = await self._producer.send(
                    self.topics.inbox,
                    COMMAND.encode(command),
                    key=record.run_key.encode(),
                    partition=partition,
                    headers=COMMAND.headers,
                )
                early = self._take(command) if self._take is not None else None
                sent.append(future)
                commands.append(command)
                taken.append(early)
                if n % HAND_OVER_CHUNK == 0:
                    await asyncio.sleep(0)  # applying a firing runs its workflow: let commits and readers in between
        finally:
            if len(sent) < len(keys):
                flying.difference_update(keys[len(sent) :])  # not sent (the send failed): due again
                self.store.release(partition)
            if sent:
                self._acknowledge(partition, keys[: len(sent)], commands, sent, taken)

    def _acknowledge(
        self,
        partition: int,
        keys: list[str],
        commands: list[Command],
        sent: list[asyncio.Future[RecordMetadata]],
        taken: list[EarlyInput | None],
    ) -> None:
        task = asyncio.create_task(self._acknowledged(partition, keys, commands, sent, taken))
        self._acks.add(task)
        task.add_done_callback(self._acknowledgement_ended)

    def _acknowledgement_ended(self, task: asyncio.Task[None]) -> None:
        self._acks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._broken = task.exception()  # the sweeps raise it: the service stops, and its worker with it
            self._wake.set()

    async def _acknowledged(
        self,
        partition: int,
        keys: list[str],
        commands: list[Command],
        sent: list[asyncio.Future[RecordMetadata]],
        taken: list[EarlyInput | None],
    ) -> None:
        """Once the firings are in the inbox: forget their timers, tombstone them, and tell who took them.

        A firing that could not be written leaves its timer in the store, due again after the back-off.
        """
        assert self._producer is not None
        flying = self._in_flight.setdefault(partition, set())
        outcomes = await asyncio.gather(*sent, return_exceptions=True)
        landed: list[tuple[str, Command, RecordMetadata, EarlyInput | None]] = []
        for key, command, outcome, early in zip(keys, commands, outcomes, taken, strict=True):
            if not isinstance(outcome, BaseException):
                landed.append((key, command, outcome, early))
                continue
            self._refused = outcome
            if early is not None and self._on_lost is not None:
                self._on_lost(early)
        fired = [key for key, _, _, _ in landed]
        if len(fired) < len(keys):
            self.store.release(partition)  # the firings not written are due again
        if fired:
            self.store.forget(partition, fired)
            self.fired += len(fired)
        if len(fired) == len(keys):
            self._backoff = RETRY_FIRST_S
        flying.difference_update(keys)
        self._wake.set()
        for n, (_, command, meta, early) in enumerate(landed, 1):
            if early is not None:
                if self._on_early_fired is not None:
                    self._on_early_fired(early, meta)
            elif self._on_fired is not None:
                self._on_fired(command, meta)
            if n % HAND_OVER_CHUNK == 0:
                await asyncio.sleep(0)  # an offered firing runs its workflow too
        # Only now that the firings are in the inbox: a timer whose tombstone landed without its firing would be lost
        # to the next owner. A tombstone that does not land leaves a timer the next owner fires again, for nothing.
        try:
            tombstones = [
                await self._producer.send(self.topics.timers, None, key=key.encode(), partition=partition)
                for key in fired
            ]
            await asyncio.gather(*tombstones)
        except (KafkaError, TimeoutError, OSError) as exc:
            logger.warning(
                "fired timers of partition %d not tombstoned (%s): a next owner fires them again", partition, exc
            )

    async def close(self) -> None:
        """Leave the group and close the store (the clients are given :data:`~streams.loop.CLOSE_TIMEOUT_S`)."""
        await bounded(
            CLOSE_TIMEOUT_S, *(client.stop() for client in (self._consumer, self._producer) if client is not None)
        )
        self.store.close()
