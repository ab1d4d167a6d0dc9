"""Test-session wiring: one real Kafka broker per session and a fresh topic prefix per test.

The broker is chosen in this order:

1. ``STEADY_KAFKA_BOOTSTRAP``: an existing cluster (``host:port[,host:port]``);
2. a testcontainers Kafka (Confluent's image, KRaft), if a Docker engine answers;
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
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from testcontainers.community.kafka import KafkaContainer

from streams.broker import BrokerConfig, LocalBroker
from streams.client import Client
from streams.settings import Settings
from streams.worker import Worker
from tests.support import running_worker
from tests.workflows import app

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
        # testcontainers' Kafka module drives Confluent's image; 7.9 is Kafka 3.9 in KRaft mode. (Not exercised
        # on machines without a Docker engine, where the local broker below runs Kafka 4.1 instead.)
        with KafkaContainer(image="confluentinc/cp-kafka:7.9.0").with_kraft() as container:
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


@pytest.fixture
def settings(kafka_bootstrap: str, topic_prefix: str, tmp_path: Path) -> Settings:
    """Worker and client settings on a fresh topic prefix and state folder."""
    return Settings(
        bootstrap=kafka_bootstrap,
        prefix=topic_prefix,
        state_dir=tmp_path / "state",
        worker_id="w1",
        session_timeout_ms=6_000,
    )


@pytest.fixture
async def worker(settings: Settings) -> AsyncIterator[Worker]:
    """A ready worker in this process serving the test workflows."""
    async with running_worker(app, settings) as running:
        yield running


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[Client]:
    """A client on the test's topics."""
    async with Client(settings.bootstrap, prefix=settings.prefix) as connected:
        yield connected
