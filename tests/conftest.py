"""Test-session wiring: one real Kafka broker per session and a fresh topic prefix per test.

The broker is chosen in this order:

1. ``STEADY_KAFKA_BOOTSTRAP``: an existing cluster (``host:port[,host:port]``);
2. a testcontainers Kafka (the official ``apache/kafka`` image), if a Docker engine answers;
3. otherwise a local KRaft broker started from Kafka's own jars (``streams.broker``).

Integration tests never run against a mocked broker. The broker is only started when a test asks for it,
so ``pytest tests/unit`` needs neither Java nor Kafka.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from testcontainers.kafka import KafkaContainer

from streams.broker import KAFKA_VERSION, BrokerConfig, LocalBroker

logger = logging.getLogger(__name__)


def _docker_engine_answers() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        done = subprocess.run([docker, "info"], capture_output=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The bootstrap address of a real Kafka broker shared by the whole session."""
    configured = os.environ.get("STEADY_KAFKA_BOOTSTRAP")
    if configured:
        yield configured
        return
    if _docker_engine_answers():
        with KafkaContainer(image=f"apache/kafka:{KAFKA_VERSION}") as container:
            yield container.get_bootstrap_server()
        return
    home = Path(tmp_path_factory.mktemp("broker"))
    broker = LocalBroker(BrokerConfig(home=home))
    broker.start(embedded=True)
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture
def topic_prefix() -> str:
    """A topic prefix no other test uses, so tests never see each other's records."""
    return f"t{uuid.uuid4().hex[:10]}."
