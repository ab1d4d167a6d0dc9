"""Worker and client settings, from arguments or ``STEADY_*`` environment variables."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pydantic import BaseModel, Field

_ENV = {
    "bootstrap": "STEADY_KAFKA_BOOTSTRAP",
    "prefix": "STEADY_TOPIC_PREFIX",
    "partitions": "STEADY_PARTITIONS",
    "state_dir": "STEADY_STATE_DIR",
    "worker_id": "STEADY_WORKER_ID",
    "step_concurrency": "STEADY_STEP_CONCURRENCY",
}


class Settings(BaseModel):
    """How a worker or client reaches Kafka and names its topics.

    Every field can be set with the environment variable named in its description.
    """

    bootstrap: str = Field("127.0.0.1:9092", description="STEADY_KAFKA_BOOTSTRAP: host:port[,host:port]")
    prefix: str = Field("steady.", description="STEADY_TOPIC_PREFIX: prefix of every topic name")
    partitions: int = Field(8, ge=1, description="STEADY_PARTITIONS: partitions of topics Steady creates")
    replication: int = Field(1, ge=1, description="replication factor of topics Steady creates")
    state_dir: Path = Field(Path(".steady/state"), description="STEADY_STATE_DIR: local RocksDB state")
    worker_id: str = Field(default_factory=socket.gethostname, description="STEADY_WORKER_ID: stable per worker")
    step_concurrency: int = Field(64, ge=1, description="STEADY_STEP_CONCURRENCY: steps run at once")
    step_threads: int = Field(16, ge=1, description="threads for sync steps")
    max_batch: int = Field(500, ge=1, description="inbox records per transaction at most")
    session_timeout_ms: int = Field(10_000, description="consumer group session timeout")
    heartbeat_interval_ms: int = Field(1_000, description="consumer group heartbeat")
    transaction_timeout_ms: int = Field(15_000, description="an open transaction of a dead worker aborts after this")

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Settings from ``STEADY_*`` variables, then ``overrides`` (``None`` values are ignored)."""
        values: dict[str, object] = {k: os.environ[v] for k, v in _ENV.items() if os.environ.get(v)}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(values)

    @property
    def group(self) -> str:
        """The consumer group of the workers."""
        return f"{self.prefix}workers"
