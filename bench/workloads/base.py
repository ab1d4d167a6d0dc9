"""What every workload gets: its broker, its sizes, fresh topic prefixes and worker subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actors import Workflow
from bench.procs import WorkerProcess, broker_pid
from streams.broker import LocalBroker
from streams.client import Client, RunHandle
from streams.settings import Settings, env_name


@dataclass(frozen=True, slots=True)
class Setting:
    """A durability setting of the broker that every Steady workload runs under."""

    name: str
    broker_extra: dict[str, str]
    flush: str

    def describe(self) -> str:
        """One line for tables: what is durable when a write is acknowledged."""
        return f"acks=all, idempotent producers, one transaction per worker batch, read_committed; {self.flush}"


DEFAULTS = Setting("kafka-defaults", {}, "Kafka flush defaults (no fsync per write; page cache, replication 1)")
FLUSH_EACH = Setting(
    "flush-per-message",
    {"log.flush.interval.messages": "1"},
    "log.flush.interval.messages=1 (fsync of the partition log after every append)",
)
SETTINGS = {"defaults": DEFAULTS, "flush": FLUSH_EACH}


@dataclass(frozen=True, slots=True)
class Sizes:
    """How big each workload is (``--quick`` uses smaller ones)."""

    w1_runs: int = 2_000
    w1_repeats: int = 3
    w1_warmup: int = 30
    w1_latency_runs: int = 300
    w2_runs: int = 50
    w2_width: int = 100
    w3_runs: int = 100_000
    w3_settle_s: float = 30.0
    w3_cpu_window_s: float = 10.0
    w4_runs: int = 10_000
    w4_min_ms: int = 1_000
    w4_max_ms: int = 10_000
    w5_runs: int = 1_000
    w5_kill_fraction: float = 0.4
    w5_step_sleep_s: float = 0.02
    limit_repeats: int = 3
    start_window: int = 500

    @classmethod
    def quick(cls) -> Sizes:
        """A few minutes in total."""
        return cls(
            w1_runs=500,
            w1_repeats=1,
            w1_warmup=20,
            w1_latency_runs=150,
            w2_runs=15,
            w3_runs=5_000,
            w4_runs=1_000,
            w5_runs=200,
            limit_repeats=1,
        )


@dataclass
class Env:
    """One workload's world: a fresh broker under one setting, a work folder, and results shared between them."""

    broker: LocalBroker
    setting: Setting
    sizes: Sizes
    work: Path
    shared: dict[str, Any] = field(default_factory=dict)
    worker_env: dict[str, str] = field(default_factory=dict)

    @property
    def bootstrap(self) -> str:
        """The broker's address."""
        return self.broker.bootstrap

    @property
    def broker_pid(self) -> int:
        """The broker JVM's pid."""
        return broker_pid(self.broker)

    def worker_settings(self) -> dict[str, Any]:
        """The settings workers run with (``STEADY_*`` of this process and ``worker_env``, else defaults)."""
        values = {
            name: value
            for name in Settings.model_fields
            if (value := self.worker_env.get(env_name(name)) or os.environ.get(env_name(name)))
        }
        settings = Settings.model_validate({"worker_id": "bench", **values})
        return settings.model_dump(mode="json", exclude={"bootstrap", "prefix", "state_dir", "worker_id"})

    def prefix(self, label: str) -> str:
        """A topic prefix nothing else uses."""
        return f"bench.{label}.{uuid.uuid4().hex[:6]}."

    def worker(self, prefix: str, *, worker_id: str = "bench-1", env: dict[str, str] | None = None) -> WorkerProcess:
        """A worker subprocess (not started) on ``prefix``, with its own state folder and log."""
        name = prefix.strip(".").replace(".", "-")
        return WorkerProcess(
            bootstrap=self.bootstrap,
            prefix=prefix,
            worker_id=worker_id,
            state_dir=self.work / "state" / name,
            log=self.work / "logs" / f"{name}-{worker_id}.log",
            env={**self.worker_env, **(env or {})},
        )

    @contextlib.asynccontextmanager
    async def serving(self, prefix: str, **kwargs: Any) -> AsyncIterator[WorkerProcess]:
        """A started, ready worker on ``prefix``, stopped when the block ends."""
        worker = self.worker(prefix, **kwargs)
        worker.start()
        try:
            await worker.ready()
            yield worker
        finally:
            worker.stop()


async def start_all(
    client: Client, workflow: Workflow, inputs: Iterable[tuple[str, Any]], *, window: int
) -> list[RunHandle]:
    """Start one run per ``(id, input)`` as fast as the client can, with at most ``window`` starts in flight."""
    slots = asyncio.Semaphore(window)

    async def one(run_id: str, value: Any) -> RunHandle:
        async with slots:
            return await client.start(workflow, value, id=run_id)

    return list(await asyncio.gather(*(one(run_id, value) for run_id, value in inputs)))


async def results(handles: list[RunHandle], *, timeout: float) -> list[Any]:
    """Every run's result (raises if one failed or does not finish within ``timeout`` seconds overall)."""
    return list(await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), timeout))


async def timed(action: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    """Seconds ``action()`` took, and what it returned."""
    began = time.perf_counter()
    value = await action()
    return time.perf_counter() - began, value
