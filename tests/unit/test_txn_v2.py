"""Reading what the cluster offers for Kafka's second transaction protocol, and its requests' wire format."""

from __future__ import annotations

from io import BytesIO

from aiokafka.protocol.types import CompactString, Int16, UnsignedVarInt32

from streams import txn_v2


def _features(*levels: tuple[str, int, int]) -> bytes:
    """The FinalizedFeatures tagged field of an ApiVersions v3 answer."""
    out: bytes = UnsignedVarInt32.encode(len(levels) + 1)
    for name, high, low in levels:
        out += CompactString("utf-8").encode(name) + Int16.encode(high) + Int16.encode(low) + b"\x00"
    return out


class _Answer:
    def __init__(self, tags: dict[int, bytes]) -> None:
        self.tags = tags


def test_the_finalized_feature_levels_are_read_from_the_tagged_field() -> None:
    tags = {1: b"\x00" * 8, 2: _features(("metadata.version", 27, 27), ("transaction.version", 2, 2))}

    assert {"metadata.version": 27, "transaction.version": 2} == txn_v2.finalized_features(_Answer(tags))


def test_an_answer_without_finalized_features_offers_none() -> None:
    assert {} == txn_v2.finalized_features(_Answer({}))


def test_a_produce_request_carries_the_transaction_and_each_partitions_records() -> None:
    request = txn_v2._ProduceRequest("worker-1", -1, 30_000, {"inbox": [(3, b"batch")]})

    struct = request.prepare({0: (3, 12)})
    sent = txn_v2._ProduceRequest_v12.decode(BytesIO(struct.encode()))

    assert 12 == struct.API_VERSION
    assert ("worker-1", -1, 30_000) == (sent.transactional_id, sent.acks, sent.timeout_ms)
    assert [("inbox", [(3, b"batch", {})], {})] == sent.topics


def test_an_end_answer_gives_the_producer_its_next_epoch() -> None:
    answer = txn_v2._EndTxnResponse_v5.decode(
        BytesIO(b"\x00\x00\x00\x00" + b"\x00\x00" + (7).to_bytes(8, "big") + (3).to_bytes(2, "big") + b"\x00")
    )

    assert (0, 7, 3) == (answer.error_code, answer.producer_id, answer.producer_epoch)
