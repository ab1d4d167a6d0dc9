"""Fencing a worker's transactions by its consumer group generation (Kafka's KIP-447).

A worker commits its input offsets inside the transaction that writes its state and history. If the group drops
the worker (a session timeout during a broker outage, a long pause) it learns so only at its next heartbeat;
meanwhile the partitions' new owner may already have read the committed offsets and state. A transaction the
dropped worker commits in that window would apply the same inputs twice.

Kafka fences such a "zombie" when the offset commit of the transaction names the member and its generation
(``TxnOffsetCommit`` v3+): the group coordinator refuses it with ``ILLEGAL_GENERATION`` or
``UNKNOWN_MEMBER_ID``, and the transaction can only be aborted. aiokafka sends the older request without the
member, so this module teaches it the newer one: :func:`send_offsets` passes the consumer's group metadata,
and the producer's offset-commit handler sends it (falling back to the old request on a broker older than 2.5).
A refused commit fails ``send_offsets`` with the broker's error; the transaction is then aborted (really: see
:func:`abortable`) as after any failed commit, and the producer stays usable.
"""

from __future__ import annotations

import collections
from typing import Any, TypeAlias

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    ConcurrentTransactions,
    IllegalGenerationError,
    KafkaError,
    ProducerFenced,
    RebalanceInProgressError,
    UnknownMemberIdError,
)
from aiokafka.producer import sender
from aiokafka.producer.transaction_manager import TransactionManager, TransactionState
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.transaction import TxnOffsetCommitRequest_v0
from aiokafka.protocol.types import CompactArray, CompactString, Int16, Int32, Int64, Schema, TaggedFields
from aiokafka.structs import OffsetAndMetadata

FENCED = (IllegalGenerationError, UnknownMemberIdError, RebalanceInProgressError)
"""The broker's answers to a commit from a member the group no longer knows in that generation."""

PRODUCER_FENCED = 90
"""Another producer took the transactional id (newer request versions; aiokafka knows only the older code)."""
TRANSACTION_ABORTABLE = 120
"""The transaction can only be aborted (KIP-890)."""


class GroupMember(str):
    """A consumer group's id that also carries the committing member and its generation.

    It is the ``group_id`` aiokafka passes along unchanged from ``send_offsets_to_transaction`` to the request.
    """

    generation_id: int
    member_id: str
    group_instance_id: str | None

    def __new__(
        cls, group_id: str, generation_id: int, member_id: str, group_instance_id: str | None = None
    ) -> GroupMember:
        """The group ``group_id`` as seen by ``member_id`` in ``generation_id``."""
        member = super().__new__(cls, group_id)
        member.generation_id = generation_id
        member.member_id = member_id
        member.group_instance_id = group_instance_id
        return member


def group_member(consumer: AIOKafkaConsumer, group_id: str) -> GroupMember:
    """The consumer's current membership of ``group_id`` (aiokafka keeps it on its private coordinator)."""
    coordinator = getattr(consumer, "_coordinator", None)
    generation = getattr(coordinator, "generation", -1)
    member_id = getattr(coordinator, "member_id", "")
    instance = getattr(coordinator, "_group_instance_id", None)
    return GroupMember(group_id, int(generation), str(member_id), instance)


async def send_offsets(producer: AIOKafkaProducer, offsets: dict[TopicPartition, int], member: GroupMember) -> None:
    """Add ``offsets`` to the producer's open transaction as committed by ``member``.

    A member without a generation is refused here, before anything is sent: aiokafka forgets the generation and
    the member id as soon as the group answers that it dropped the member, and the group coordinator checks neither
    on a transactional commit that names none (older clients name none), so it would take that commit from a
    worker whose partitions another one already owns.

    Raises:
        IllegalGenerationError, UnknownMemberIdError, RebalanceInProgressError: the group
            has moved on without this member; the transaction must be aborted.
    """
    if member.generation_id < 0 or not member.member_id:
        raise IllegalGenerationError(f"no generation of group {member} to commit in: the group dropped this member")
    await producer.send_offsets_to_transaction(offsets, member)


class _TxnOffsetCommitResponse_v3(Response):  # type: ignore[misc]
    API_KEY = 28
    API_VERSION = 3
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")),
                ("partitions", CompactArray(("partition_index", Int32), ("error_code", Int16), ("tags", TaggedFields))),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class _TxnOffsetCommitRequest_v3(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 28
    API_VERSION = 3
    RESPONSE_TYPE = _TxnOffsetCommitResponse_v3
    SCHEMA = Schema(
        ("transactional_id", CompactString("utf-8")),
        ("group_id", CompactString("utf-8")),
        ("producer_id", Int64),
        ("producer_epoch", Int16),
        ("generation_id", Int32),
        ("member_id", CompactString("utf-8")),
        ("group_instance_id", CompactString("utf-8")),
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")),
                (
                    "partitions",
                    CompactArray(
                        ("partition_index", Int32),
                        ("committed_offset", Int64),
                        ("committed_leader_epoch", Int32),
                        ("committed_metadata", CompactString("utf-8")),
                        ("tags", TaggedFields),
                    ),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class _TxnOffsetCommitResponse_v5(_TxnOffsetCommitResponse_v3):
    API_VERSION = 5


class _TxnOffsetCommitRequest_v5(_TxnOffsetCommitRequest_v3):
    """v3's fields; the version tells the group coordinator to add its partition to the transaction itself.

    Sent by producers speaking the second transaction protocol (:mod:`streams.txn_v2`).
    """

    API_VERSION = 5
    RESPONSE_TYPE = _TxnOffsetCommitResponse_v5


_Struct: TypeAlias = TxnOffsetCommitRequest_v0 | _TxnOffsetCommitRequest_v3


class _TxnOffsetCommitRequest(Request[_Struct]):  # type: ignore[misc]
    API_KEY = 28

    def __init__(
        self,
        transactional_id: str,
        member: GroupMember,
        producer_id: int,
        producer_epoch: int,
        topics: dict[str, list[tuple[int, int, str]]],
    ) -> None:
        self._transactional_id = transactional_id
        self._member = member
        self._producer_id = producer_id
        self._producer_epoch = producer_epoch
        self._topics = topics

    def build(self, request_struct_class: type[_Struct]) -> _Struct:
        head = (self._transactional_id, str(self._member), self._producer_id, self._producer_epoch)
        if request_struct_class is TxnOffsetCommitRequest_v0:
            return TxnOffsetCommitRequest_v0(*head, list(self._topics.items()))
        m = self._member
        topics: list[tuple[str, list[tuple[int, int, int, str, dict[int, bytes]]], dict[int, bytes]]] = [
            (topic, [(partition, offset, -1, metadata, {}) for partition, offset, metadata in partitions], {})
            for topic, partitions in self._topics.items()
        ]
        return request_struct_class(*head, m.generation_id, m.member_id, m.group_instance_id, topics, {})


class _TxnOffsetCommitRequestV2(_TxnOffsetCommitRequest):
    """The offset commit of a producer speaking the second transaction protocol (v5 only)."""


_TxnOffsetCommitRequestV2._CLASSES = (_TxnOffsetCommitRequest_v5,)


class _FencedTxnOffsetCommitHandler(sender.TxnOffsetCommitHandler):  # type: ignore[misc]
    """aiokafka's offset-commit handler, sending the member and generation when it has them."""

    def create_request(self) -> Any:
        if not isinstance(self._group_id, GroupMember):
            return super().create_request()
        txn = self._sender._txn_manager
        topics: dict[str, list[tuple[int, int, str]]] = collections.defaultdict(list)
        offset: OffsetAndMetadata
        for tp, offset in sorted(self._offsets.items()):
            topics[tp.topic].append((tp.partition, offset.offset, offset.metadata))
        request = _TxnOffsetCommitRequestV2 if getattr(txn, "IMPLICIT_OFFSETS", False) else _TxnOffsetCommitRequest
        return request(txn.transactional_id, self._group_id, txn.producer_id, txn.producer_epoch, topics)

    def handle_response(self, resp: Any) -> Any:
        if isinstance(resp, _TxnOffsetCommitResponse_v3):
            errors = [(topic, [(p, code) for p, code, _ in partitions]) for topic, partitions, _ in resp.topics]
        else:
            errors = resp.errors
        codes = {code for _, partitions in errors for _, code in partitions}
        if ConcurrentTransactions.errno in codes:
            return self._default_backoff  # the coordinator still writes the transaction's previous step: again
        if PRODUCER_FENCED in codes:  # v3+ answers this where v0 answered INVALID_PRODUCER_EPOCH
            raise ProducerFenced()
        if TRANSACTION_ABORTABLE in codes:
            abortable(self._sender._txn_manager, KafkaError("the coordinator can only abort this transaction"))
            return None
        for _, partitions in errors:
            for _, code in partitions:
                for fenced in FENCED:
                    if code == fenced.errno:
                        abortable(self._sender._txn_manager, fenced())
                        return None
        return super().handle_response(_V0Errors(errors))


def abortable(txn: TransactionManager, exc: Exception) -> None:
    """Fail the transaction's offset commit so that it can only be aborted, and the abort reaches the broker.

    aiokafka's own ``error_transaction`` also forgets the partitions the transaction wrote to, after which an
    abort looks empty and is never sent: the records written so far would stay pending, and the producer's
    next commit would commit them. Here they stay known, so the abort ends them.
    """
    txn._transition_to(TransactionState.ABORTABLE_ERROR)
    for _, _, done in txn._pending_txn_offsets:
        done.set_exception(exc)
    txn._pending_txn_offsets.clear()
    txn._transaction_waiter.set_exception(exc)
    txn._transaction_waiter.exception()  # raised again by a commit attempt; never an unretrieved exception


class _V0Errors:
    """A response in the shape aiokafka's handler reads (``errors``: topic, [(partition, error code)])."""

    def __init__(self, errors: list[tuple[str, list[tuple[int, int]]]]) -> None:
        self.errors = errors


def install() -> None:
    """Make every aiokafka producer of this process send the member with transactional offset commits."""
    sender.TxnOffsetCommitHandler = _FencedTxnOffsetCommitHandler
