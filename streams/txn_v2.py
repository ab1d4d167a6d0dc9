"""Kafka's second transaction protocol (KIP-890, ``transaction.version=2``) for aiokafka's producer.

With the first protocol a transaction costs the producer four round trips to coordinators, one after the
other: ``AddPartitionsToTxn`` before its records may be written, ``AddOffsetsToTxn`` and ``TxnOffsetCommit``
for the consumed offsets, then ``EndTxn``. With the second the broker adds a partition to the transaction
itself when the first records for it arrive (``Produce`` v12) and the group coordinator adds the offsets
(``TxnOffsetCommit`` v5); ``EndTxn`` (v5) then bumps the producer's epoch, so that a late write of an ended
transaction is refused. A commit is the records, the offsets and the end: two round trips fewer.

aiokafka speaks only the first protocol. :func:`enable` switches a started transactional producer to the
second when every broker of the cluster has it finalised (Kafka 4.0 and later format new clusters with it),
and leaves it alone otherwise. The producer's own state machine stays in charge: this module replaces the
requests it sends and what it does with their answers.
"""

from __future__ import annotations

import collections
import logging
from io import BytesIO
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import ConcurrentTransactions, InvalidProducerEpoch, KafkaError
from aiokafka.producer import sender
from aiokafka.producer.transaction_manager import PidAndEpoch, TransactionManager
from aiokafka.protocol.api import Request, RequestStruct, Response, ResponseHeader_v0
from aiokafka.protocol.types import (
    Boolean,
    CompactArray,
    CompactBytes,
    CompactString,
    Int16,
    Int32,
    Int64,
    Schema,
    TaggedFields,
    UnsignedVarInt32,
)

from streams import fencing

logger = logging.getLogger(__name__)

PRODUCE_V2 = 12
END_TXN_V2 = 5
TXN_OFFSET_COMMIT_V2 = 5


# -- requests --------------------------------------------------------------------------------------------------


class _ProduceResponse_v12(Response):  # type: ignore[misc]
    API_KEY = 0
    API_VERSION = PRODUCE_V2
    SCHEMA = Schema(
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")),
                (
                    "partitions",
                    CompactArray(
                        ("index", Int32),
                        ("error_code", Int16),
                        ("base_offset", Int64),
                        ("log_append_time_ms", Int64),
                        ("log_start_offset", Int64),
                        (
                            "record_errors",
                            CompactArray(
                                ("batch_index", Int32),
                                ("batch_index_error_message", CompactString("utf-8")),
                                ("tags", TaggedFields),
                            ),
                        ),
                        ("error_message", CompactString("utf-8")),
                        ("tags", TaggedFields),
                    ),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("throttle_time_ms", Int32),
        ("tags", TaggedFields),
    )


class _ProduceRequest_v12(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 0
    API_VERSION = PRODUCE_V2
    RESPONSE_TYPE = _ProduceResponse_v12
    SCHEMA = Schema(
        ("transactional_id", CompactString("utf-8")),
        ("acks", Int16),
        ("timeout_ms", Int32),
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")),
                ("partitions", CompactArray(("index", Int32), ("records", CompactBytes), ("tags", TaggedFields))),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class _ProduceRequest(Request[_ProduceRequest_v12]):  # type: ignore[misc]
    API_KEY = 0

    def __init__(self, transactional_id: str, acks: int, timeout_ms: int, topics: dict[str, list[Any]]) -> None:
        self.required_acks = acks
        self._head = (transactional_id, acks, timeout_ms)
        self._topics = topics

    def build(self, request_struct_class: type[_ProduceRequest_v12]) -> _ProduceRequest_v12:
        topics: list[Any] = [(name, [(p, data, {}) for p, data in parts], {}) for name, parts in self._topics.items()]
        return request_struct_class(*self._head, topics, {})


class _EndTxnResponse_v5(Response):  # type: ignore[misc]
    API_KEY = 26
    API_VERSION = END_TXN_V2
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("error_code", Int16),
        ("producer_id", Int64),
        ("producer_epoch", Int16),
        ("tags", TaggedFields),
    )


class _EndTxnRequest_v5(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 26
    API_VERSION = END_TXN_V2
    RESPONSE_TYPE = _EndTxnResponse_v5
    SCHEMA = Schema(
        ("transactional_id", CompactString("utf-8")),
        ("producer_id", Int64),
        ("producer_epoch", Int16),
        ("committed", Boolean),
        ("tags", TaggedFields),
    )


class _EndTxnRequest(Request[_EndTxnRequest_v5]):  # type: ignore[misc]
    API_KEY = 26

    def __init__(self, transactional_id: str, producer_id: int, producer_epoch: int, commit: bool) -> None:
        self._fields = (transactional_id, producer_id, producer_epoch, commit)

    def build(self, request_struct_class: type[_EndTxnRequest_v5]) -> _EndTxnRequest_v5:
        return request_struct_class(*self._fields, {})


class _ApiVersionsResponse_v3(Response):  # type: ignore[misc]
    API_KEY = 18
    API_VERSION = 3
    SCHEMA = Schema(
        ("error_code", Int16),
        (
            "api_keys",
            CompactArray(("api_key", Int16), ("min_version", Int16), ("max_version", Int16), ("tags", TaggedFields)),
        ),
        ("throttle_time_ms", Int32),
        ("tags", TaggedFields),
    )


class _ApiVersionsRequest_v3(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 18
    API_VERSION = 3
    RESPONSE_TYPE = _ApiVersionsResponse_v3
    SCHEMA = Schema(
        ("client_software_name", CompactString("utf-8")),
        ("client_software_version", CompactString("utf-8")),
        ("tags", TaggedFields),
    )

    def parse_response_header(self, read_buffer: BytesIO | bytes) -> ResponseHeader_v0:
        return ResponseHeader_v0.decode(read_buffer)  # ApiVersions answers with the old header at every version


class _ApiVersionsRequest(Request[_ApiVersionsRequest_v3]):  # type: ignore[misc]
    API_KEY = 18

    def build(self, request_struct_class: type[_ApiVersionsRequest_v3]) -> _ApiVersionsRequest_v3:
        return request_struct_class("steady", "1", {})


_FINALIZED_FEATURES_TAG = 2
"""ApiVersions v3+: the tagged field with the cluster's finalised features (name, max level, min level)."""


def finalized_features(response: Any) -> dict[str, int]:
    """The finalised feature levels an ApiVersions v3+ response carries (empty when it carries none)."""
    raw = response.tags.get(_FINALIZED_FEATURES_TAG)
    if raw is None:
        return {}
    data = BytesIO(raw)
    features = {}
    for _ in range(UnsignedVarInt32.decode(data) - 1):
        name = CompactString("utf-8").decode(data)
        level = Int16.decode(data)
        Int16.decode(data)  # min level
        TaggedFields.decode(data)
        if name is not None:
            features[name] = level
    return features


# -- the producer's transaction state ----------------------------------------------------------------------------


class V2TransactionManager(TransactionManager):  # type: ignore[misc]
    """aiokafka's transaction state, for a producer speaking the second protocol.

    Partitions and the consumer group join a transaction without a request of their own; the epoch moves on
    with every ended transaction, and with it the sequence numbers start again at zero.
    """

    IMPLICIT_OFFSETS = True
    """Its offsets go in ``TxnOffsetCommit`` v5, which adds them to the transaction (see :mod:`streams.fencing`)."""

    def maybe_add_partition_to_txn(self, tp: TopicPartition) -> None:
        """Count ``tp`` in the transaction: the broker adds it when the first records for it arrive."""
        if self.transactional_id is None:
            return
        assert self.is_in_transaction()
        self._txn_partitions.add(tp)

    def consumer_group_to_add(self) -> None:
        """Nothing: the group coordinator adds the group's offsets partition with the first offsets."""
        return

    def offsets_to_commit(self) -> tuple[Any, str] | None:
        """The next offsets to commit, without a request to add the group first.

        Once they are sent the transaction must be ended, even without records and even if the commit is refused:
        the group coordinator may have added its partition to the transaction before refusing them.
        """
        for group_id, offsets, _ in self._pending_txn_offsets:
            self._txn_consumer_group = group_id
            return offsets, group_id
        return None

    def ended(self, producer_id: int, producer_epoch: int) -> None:
        """The coordinator ended the transaction and gave the producer its next epoch."""
        self._pid_and_epoch = PidAndEpoch(producer_id, producer_epoch)
        self._sequence_numbers.clear()
        self.complete_transaction()


# -- the sender's handlers ------------------------------------------------------------------------------------


class _ProduceHandler(sender.SendProduceReqHandler):  # type: ignore[misc]
    """Writes a transaction's batches with Produce v12, which adds their partitions to it."""

    def create_request(self) -> Any:
        txn = self._sender._txn_manager
        if not isinstance(txn, V2TransactionManager) or txn.transactional_id is None:
            return super().create_request()
        topics: dict[str, list[Any]] = collections.defaultdict(list)
        for tp, batch in self._batches.items():
            topics[tp.topic].append((tp.partition, bytes(batch.get_data_buffer())))
        return _ProduceRequest(txn.transactional_id, self._sender._acks, self._sender._request_timeout_ms, topics)

    def _can_retry(self, error: Exception, batch: Any) -> bool:
        # The broker adds the partition to the transaction with the first batch: while the coordinator still
        # writes the producer's previous transaction's end, it answers CONCURRENT_TRANSACTIONS. Write again.
        return isinstance(error, ConcurrentTransactions) or bool(super()._can_retry(error, batch))

    def handle_response(self, response: Any) -> None:
        if not isinstance(response, _ProduceResponse_v12):
            super().handle_response(response)
            return
        topics = [(name, [_v8_fields(*fields) for fields in parts]) for name, parts, _ in response.topics]
        super().handle_response(_AsV8(topics))


def _v8_fields(partition: int, code: int, *rest: Any) -> tuple[Any, ...]:
    """A v12 partition answer as v8's fields (without the tags); PRODUCER_FENCED as v8's INVALID_PRODUCER_EPOCH."""
    return (partition, _fenced_as_v0(code), *rest[:-1])


def _fenced_as_v0(code: int) -> int:
    """PRODUCER_FENCED (unknown to aiokafka) as INVALID_PRODUCER_EPOCH, which it makes ``ProducerFenced``."""
    return InvalidProducerEpoch.errno if code == fencing.PRODUCER_FENCED else code


class _AsV8:
    """A Produce response in the shape aiokafka's handler reads (v8: the last one it knows)."""

    API_VERSION = 8

    def __init__(self, topics: list[Any]) -> None:
        self.topics = topics


class _EndTxnHandler(sender.EndTxnHandler):  # type: ignore[misc]
    """Ends a transaction with EndTxn v5, whose answer carries the producer's next epoch."""

    def create_request(self) -> Any:
        txn = self._sender._txn_manager
        if not isinstance(txn, V2TransactionManager):
            return super().create_request()
        return _EndTxnRequest(txn.transactional_id, txn.producer_id, txn.producer_epoch, bool(self._commit_result))

    def handle_response(self, resp: Any) -> Any:
        txn = self._sender._txn_manager
        if not isinstance(resp, _EndTxnResponse_v5) or not isinstance(txn, V2TransactionManager):
            return super().handle_response(resp)
        if resp.error_code == 0:
            txn.ended(resp.producer_id, resp.producer_epoch)
            return None
        if resp.error_code == fencing.TRANSACTION_ABORTABLE:
            fencing.abortable(txn, KafkaError("the coordinator can only abort this transaction"))
            return None
        return super().handle_response(_Code(_fenced_as_v0(resp.error_code)))


class _Code:
    """An answer carrying only its error code, in the shape aiokafka's handlers read."""

    def __init__(self, error_code: int) -> None:
        self.error_code = error_code


# -- switching ---------------------------------------------------------------------------------------------------


async def supported(producer: AIOKafkaProducer) -> bool:
    """Whether the cluster has the second protocol finalised, and a broker (any one) every request it needs.

    Finalised features are the cluster's, whichever broker answers.
    """
    client = producer.client
    node_id = client.get_random_node()
    if node_id is None:
        return False
    try:
        response = await client.send(node_id, _ApiVersionsRequest())
    except (KafkaError, NotImplementedError) as exc:  # a broker older than 2.4 has no ApiVersions v3
        logger.info("could not read the cluster's features (%r): transactions v1", exc)
        return False
    if response.error_code != 0:
        return False
    top = {key: high for key, _, high, _ in response.api_keys}
    return (
        finalized_features(response).get("transaction.version", 0) >= 2
        and top.get(0, 0) >= PRODUCE_V2
        and top.get(26, 0) >= END_TXN_V2
        and top.get(28, 0) >= TXN_OFFSET_COMMIT_V2
    )


async def enable(producer: AIOKafkaProducer) -> bool:
    """Switch a started transactional producer, before its first transaction, to the second protocol if it can.

    Returns whether it did.
    """
    txn = producer._txn_manager
    if txn is None or txn.transactional_id is None or isinstance(txn, V2TransactionManager):
        return isinstance(txn, V2TransactionManager)
    if not await supported(producer):
        return False
    txn.__class__ = V2TransactionManager
    return True


def install() -> None:
    """Let every aiokafka producer of this process send the second protocol's requests once enabled."""
    sender.SendProduceReqHandler = _ProduceHandler
    sender.EndTxnHandler = _EndTxnHandler
