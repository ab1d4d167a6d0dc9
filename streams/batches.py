"""Writing a transaction's records as a few record batches per partition instead of one send per record.

A worker's transaction holds thousands of records under load. ``AIOKafkaProducer.send`` costs a future, a
partition lookup and an accumulator append per record; a :class:`~aiokafka.producer.BatchBuilder` per
partition appends a record for a fraction of that. Records keep their order within each partition.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.producer.transaction_manager import TransactionState
from aiokafka.structs import RecordMetadata


class Writable(Protocol):
    """What a record to write has: :class:`Record`, or any object with these attributes."""

    @property
    def topic(self) -> str:
        """The topic it goes to."""

    @property
    def partition(self) -> int:
        """Its partition of that topic."""

    @property
    def key(self) -> bytes | None:
        """Its key."""

    @property
    def value(self) -> bytes | None:
        """Its value (``None``: a tombstone)."""

    @property
    def headers(self) -> list[tuple[str, bytes]]:
        """Its headers."""


@dataclass(frozen=True, slots=True)
class Record:
    """One record to write."""

    topic: str
    partition: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class Placed:
    """Where a record went: its batch's delivery, and its position in that batch."""

    batch: asyncio.Future[RecordMetadata]
    index: int

    @property
    def offset(self) -> int:
        """The record's offset, once its batch was delivered."""
        return int(self.batch.result().offset) + self.index


async def begin(producer: AIOKafkaProducer) -> None:
    """Begin a transaction, without waiting for a turn of the event loop when the producer has its id already.

    ``AIOKafkaProducer.begin_transaction`` always waits for one (it shields its wait for the producer id in a
    task), and under load a turn is several milliseconds on the path of every commit.
    """
    manager = producer._txn_manager
    if manager is not None and manager.transactional_id is not None and manager.has_pid():
        manager.begin_transaction()  # what begin_transaction does once the id is there; it checks the state
        return
    await producer.begin_transaction()


def transaction_open(producer: AIOKafkaProducer) -> bool:
    """Whether a transactional producer may have a transaction open: anything but one known to have ended.

    Ready means none was begun since the last one ended (committed or aborted); in any other state (in progress,
    ending, failed) the transaction may be open on the broker.
    """
    manager = producer._txn_manager
    return manager is not None and manager.state is not TransactionState.READY


async def write(producer: AIOKafkaProducer, records: Sequence[Writable]) -> list[Placed]:
    """Queue ``records`` for the producer's open transaction; their places, in the same order.

    Raises:
        ValueError: a record alone is larger than a batch may be.
    """
    placed: list[Placed | None] = [None] * len(records)
    building: dict[tuple[str, int], tuple[Any, list[int]]] = {}

    async def send(where: tuple[str, int]) -> None:
        builder, members = building.pop(where)
        batch = await producer.send_batch(builder, where[0], partition=where[1])
        for index, n in enumerate(members):
            placed[n] = Placed(batch, index)

    for n, record in enumerate(records):
        where = (record.topic, record.partition)
        current = building.get(where)
        if current is not None and _append(current[0], record):
            current[1].append(n)
            continue
        if current is not None:
            await send(where)  # full: send it and start the next one
        builder = producer.create_batch()
        if not _append(builder, record):
            raise ValueError(f"a record of {len(record.value or b'')} bytes does not fit in a batch for {where}")
        building[where] = (builder, [n])
    for where in list(building):
        await send(where)
    return [p for p in placed if p is not None]


def _append(builder: Any, record: Writable) -> bool:
    return builder.append(key=record.key, value=record.value, timestamp=None, headers=record.headers) is not None
