"""The worker's local copy of run state: RocksDB (rocksdict), rebuilt from the compacted state changelog.

Each write batch stores the states of a committed transaction together with the changelog offset they
reflect (Kafka Streams' "offsets next to data"), so a restarted worker knows exactly where in the changelog
to resume. Values are the same Avro bytes as on the changelog.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from pathlib import Path

from rocksdict import Options, Rdict, WriteBatch

from actors.model import RunState
from streams.records import STATE

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
