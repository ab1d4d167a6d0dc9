"""A worker's commit is taken by the broker at the first try: its requests do not displace one another.

Kafka adds a partition to a transaction when the first records for it arrive, and the offsets' partition when the
offsets do. Its broker keeps one such addition per transaction waiting to be checked: a second that arrives before the
first was sent on displaces it, answered NETWORK_EXCEPTION, and the client retries. The worker therefore sends the
consumed offsets only once the transaction's records are written.
"""

from __future__ import annotations

import logging

import pytest

from streams.client import Client
from streams.worker import Worker
from tests.workflows import Greeting, chain

pytestmark = pytest.mark.integration

RUNS = 20


async def test_a_commit_sends_its_offsets_after_its_records_so_the_broker_takes_both_at_once(
    worker: Worker, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="aiokafka")
    committed = worker.transactions

    for i in range(RUNS):  # one at a time: each run's commit holds its records and the offsets of its inputs
        handle = await client.start(chain, Greeting(name=f"n{i}"), id=f"one-{i}")
        assert {"text": f"HELLO N{i}", "chars": len(f"hello n{i}")} == await handle.result(timeout=30)

    assert worker.transactions - committed >= RUNS
    retried = [r.getMessage() for r in caplog.records if "NETWORK_EXCEPTION" in r.getMessage()]
    assert [] == retried
