"""The worker's local copy of run state: RocksDB (rocksdict), rebuilt from the compacted state changelog.

Each write batch stores the states of a committed transaction together with the changelog offset they
reflect (Kafka Streams' "offsets next to data"), so a restarted worker knows exactly where in the changelog
to resume (:func:`restore`). Values are the same Avro bytes as on the changelog.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from rocksdict import Options, Rdict, WriteBatch

from actors.model import RunState
from streams.records import STATE
from streams.topics import settled_ends

logger = logging.getLogger(__name__)

_STATE = b"s"
_CHECKPOINT = b"c"


def _checkpoint_key(partition: int) -> bytes:
    return _CHECKPOINT + struct.pack(">I", partition)


def _state_key(partition: int, key: str) -> bytes:
    return _STATE + struct.pack(">I", partition) + key.encode()


MEMTABLE_BYTES = 16 * 1024 * 1024
"""RocksDB's in-memory write buffer per store (its default, 64 MB, would hold a burst of snapshots in memory)."""


def rocksdb_options() -> Options:
    """Options of the worker's local RocksDB stores: raw bytes, created if missing, small write buffers."""
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    options.set_write_buffer_size(MEMTABLE_BYTES)
    return options


class RunStore:
    """Run states by partition and ``tenant/workflow_id``, with the changelog position of each partition."""

    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self._db = Rdict(str(path), rocksdb_options())

    def get(self, partition: int, key: str) -> RunState | None:
        """The state of run ``key`` (on ``partition``), or ``None``."""
        data = self._db.get(_state_key(partition, key))
        return None if data is None else STATE.decode(data)

    def next_offset(self, partition: int) -> int:
        """The first changelog offset of ``partition`` this store has not applied."""
        data = self._db.get(_checkpoint_key(partition))
        return 0 if data is None else int(struct.unpack(">Q", data)[0])

    def write(self, partition: int, states: Iterable[tuple[str, bytes | None]], next_offset: int) -> None:
        """Apply encoded states of ``partition`` (``None`` deletes) and move its changelog position, atomically."""
        batch = WriteBatch(raw_mode=True)
        for key, value in states:
            if value is None:
                batch.delete(_state_key(partition, key))
            else:
                batch.put(_state_key(partition, key), value)
        batch.put(_checkpoint_key(partition), struct.pack(">Q", next_offset))
        self._db.write(batch)

    def clear(self, partition: int) -> None:
        """Forget everything of ``partition`` (its changelog was recreated)."""
        start = _state_key(partition, "")
        end = _STATE + struct.pack(">I", partition + 1)
        self._db.delete_range(start, end)
        self._db.delete(_checkpoint_key(partition))

    def keys(self, partition: int) -> list[str]:
        """Every run key of ``partition`` (for tools; scans the partition)."""
        start = _state_key(partition, "")
        out = []
        for raw in self._db.keys(from_key=start):
            k = bytes(raw)  # type: ignore[arg-type]  # raw mode: keys are bytes
            if not k.startswith(start):
                break
            out.append(k[len(start) :].decode())
        return out

    def close(self) -> None:
        """Flush and close the database."""
        self._db.close()


async def restore(store: RunStore, bootstrap: str, changelog: str, partitions: list[int], *, settle_s: float) -> int:
    """Bring ``store`` up to date with ``partitions`` of the ``changelog`` topic; how many states were read.

    Each partition is read from where the store left it to the changelog's end, once the transactions open on it
    have ended (``settle_s`` seconds at most: a previous owner's last commit may have returned while its markers
    are still being written). A changelog that ends before the store's position was recreated: the store's copy
    of that partition is dropped and read again from the start.
    """
    if not partitions:
        return 0
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False, group_id=None
    )
    await consumer.start()
    restored = 0
    try:
        tps = [TopicPartition(changelog, p) for p in partitions]
        consumer.assign(tps)
        ends = await settled_ends(bootstrap, consumer, tps, timeout=settle_s)
        todo = {}
        for tp in tps:
            start = store.next_offset(tp.partition)
            if start > ends[tp]:
                logger.warning("changelog %s was recreated; dropping the local copy", tp)
                store.clear(tp.partition)
                start = 0
            if start < ends[tp]:
                consumer.seek(tp, start)
                todo[tp] = ends[tp]
        while todo:
            batch = await consumer.getmany(*todo, timeout_ms=500)
            for tp, records in batch.items():
                writes = [(r.key.decode(), r.value) for r in records if r.key is not None]
                store.write(tp.partition, writes, records[-1].offset + 1)
                restored += len(writes)
            for tp in list(todo):
                if await consumer.position(tp) >= todo[tp]:
                    store.write(tp.partition, [], todo.pop(tp))
    finally:
        await consumer.stop()
    return restored
