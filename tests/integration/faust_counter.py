"""A minimal faust app for the broker smoke test: counts records per key in a rocksdict-backed Table.

Run as ``python -m tests.integration.faust_counter worker`` with ``COUNTER_BOOTSTRAP``, ``COUNTER_PREFIX`` and
``COUNTER_DATADIR`` set. Each record on ``<prefix>in`` bumps its key's count and the new count is written to
``<prefix>out``, so a test can see whether the count survived a restart (the Table rebuilt from its changelog).
"""

from __future__ import annotations

import os
from datetime import timedelta

import faust

PREFIX = os.environ["COUNTER_PREFIX"]

app = faust.App(
    f"{PREFIX}counter",
    broker=f"kafka://{os.environ['COUNTER_BOOTSTRAP']}",
    store="rocksdb://",
    datadir=os.environ["COUNTER_DATADIR"],
    web_enabled=False,
    topic_partitions=8,
    topic_replication_factor=1,
    consumer_auto_offset_reset="earliest",
    broker_session_timeout=6.0,
    broker_heartbeat_interval=1.0,
    broker_rebalance_timeout=10.0,
    broker_commit_every=1,
    broker_commit_interval=timedelta(milliseconds=200),
    table_standby_replicas=0,
    key_serializer="raw",
    value_serializer="raw",
)
counts = app.Table("counts", default=int, partitions=8, options={"driver": "rocksdict"})
source = app.topic(f"{PREFIX}in", partitions=8, key_type=bytes, value_type=bytes)
sink = app.topic(f"{PREFIX}out", partitions=8, key_type=bytes, value_type=bytes)


@app.agent(source)
async def count(stream: faust.StreamT[bytes]) -> None:
    """Count each key's records and publish the running count."""
    async for event in stream.events():
        key = event.key
        assert isinstance(key, bytes)
        counts[key.decode()] += 1
        await sink.send(key=key, value=str(counts[key.decode()]).encode())


if __name__ == "__main__":
    app.main()
