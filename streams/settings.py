"""Worker and client settings, from arguments or ``STEADY_*`` environment variables."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pydantic import BaseModel, Field

_ENV_NAMES = {"bootstrap": "STEADY_KAFKA_BOOTSTRAP", "prefix": "STEADY_TOPIC_PREFIX"}


def env_name(field: str) -> str:
    """The environment variable of a setting: ``STEADY_<FIELD>`` (bootstrap: ``STEADY_KAFKA_BOOTSTRAP``)."""
    return _ENV_NAMES.get(field, f"STEADY_{field.upper()}")


class Settings(BaseModel):
    """How a worker or client reaches Kafka, names its topics and runs.

    Every field can be set with an environment variable ``STEADY_<FIELD>`` (see :func:`env_name`).
    """

    bootstrap: str = Field("127.0.0.1:9092", description="host:port[,host:port]")
    prefix: str = Field("steady.", description="prefix of every topic name")
    partitions: int = Field(8, ge=1, description="partitions of topics Steady creates")
    replication: int = Field(1, ge=1, description="replication factor of topics Steady creates")
    state_dir: Path = Field(Path(".steady/state"), description="local RocksDB state")
    worker_id: str = Field(default_factory=socket.gethostname, description="stable per worker")
    step_concurrency: int = Field(64, ge=1, description="steps run at once")
    step_threads: int = Field(16, ge=1, description="threads for sync steps")
    max_batch: int = Field(
        100, ge=1, description="inbox records per transaction at most (larger: fewer commits; smaller: less wait)"
    )
    fetch_max_wait_ms: int = Field(
        100, ge=0, description="longest a fetch waits at the broker (latency against idle CPU)"
    )
    state_cache: int = Field(5_000, ge=0, description="committed states of recently active runs kept in memory")
    suspended_runs: int = Field(
        2_000, ge=0, description="coroutines of runs waiting on steps kept in memory, to resume without replay"
    )
    max_payload_bytes: int = Field(1024 * 1024, ge=1, description="larger inbox records go to the dead-letter topic")
    session_timeout_ms: int = Field(10_000, description="consumer group session timeout")
    heartbeat_interval_ms: int = Field(1_000, description="consumer group heartbeat")
    transaction_timeout_ms: int = Field(15_000, description="an open transaction of a dead worker aborts after this")
    shutdown_grace_ms: int = Field(
        10_000, ge=0, description="a stopping worker's longest wait to commit; the rest is left to the next owner"
    )

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Settings from ``STEADY_*`` variables, then ``overrides`` (``None`` values are ignored)."""
        values: dict[str, object] = {
            name: os.environ[env_name(name)] for name in cls.model_fields if os.environ.get(env_name(name))
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(values)

    @property
    def group(self) -> str:
        """The consumer group of the workers."""
        return f"{self.prefix}workers"
