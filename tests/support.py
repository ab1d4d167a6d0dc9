"""Helpers shared by the integration and chaos tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from actors.events import Event, StepCompleted, StepScheduled
from actors.workflow import Registry
from streams.records import COMPLETION, EVENT, Completion
from streams.settings import Settings
from streams.topics import read_topic
from streams.worker import Worker

ROOT = Path(__file__).resolve().parents[1]

_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "if sys.platform.startswith('linux'):\n"
    "    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit('the test process ended before its worker started')\n"
    "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])\n"
)
"""Run as ``python -c _DIE_WITH_PARENT <parent pid> <args>``: ``python <args>``, killed when the test process dies.

The death signal is asked for in a process of its own, which then becomes the worker (it survives ``exec``):
``preexec_fn`` is not safe in a process with threads, as the test process is. A worker outliving a killed test
run would hold its partitions and ports. Linux sends the signal when the thread that started the process ends:
start workers from the event loop's thread.
"""


async def histories(bootstrap: str, prefix: str) -> dict[str, list[Event]]:
    """Every run's history events by run key, in order."""
    runs: dict[str, list[Event]] = {}
    for record in await read_topic(bootstrap, f"{prefix}history"):
        event = EVENT.decode(record.value)
        runs.setdefault(event.key, []).append(event)
    return runs


async def completions(bootstrap: str, prefix: str) -> list[Completion]:
    """Every terminal record."""
    return [COMPLETION.decode(r.value) for r in await read_topic(bootstrap, f"{prefix}completions")]


async def steps_recorded_ms(settings: Settings) -> dict[str, int]:
    """When each step's outcome was first written: idempotency key -> its history record's timestamp (ms).

    The timestamp is taken when the transaction writes the record, a few milliseconds before it commits.
    """
    names: dict[tuple[str, int], str] = {}
    recorded: dict[str, int] = {}
    for record in await read_topic(settings.bootstrap, f"{settings.prefix}history"):
        event = EVENT.decode(record.value)
        body = event.body
        if isinstance(body, StepScheduled):
            names[(event.key, body.seq)] = f"{event.key}/{body.name}/{body.occurrence}"
        elif isinstance(body, StepCompleted):
            key = names[(event.key, body.seq)]
            recorded[key] = min(recorded.get(key, record.timestamp), record.timestamp)
    return recorded


async def eventually(check: Callable[[], Any], timeout: float = 60.0, interval: float = 0.5) -> Any:
    """Await ``check()`` (sync or async) until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value {value!r})")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def running_worker(registry: Registry, settings: Settings) -> AsyncIterator[Worker]:
    """A worker in this process, ready (partitions assigned and restored) when the block starts."""
    worker = Worker(registry, settings)
    task = asyncio.create_task(worker.run())
    try:
        ready = asyncio.create_task(worker.ready.wait())
        await asyncio.wait({task, ready}, timeout=90, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
        assert worker.ready.is_set(), "worker did not get its partitions"
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, 60)


class WorkerProcess:
    """``steady worker`` in a subprocess, for tests that kill it."""

    def __init__(self, settings: Settings, app: str, log: Path, env: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.app = app
        self.log = log
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        s = self.settings
        cmd = [
            sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()),
            "-m", "streams.cli", "worker", "--app", self.app,
            "--bootstrap", s.bootstrap, "--prefix", s.prefix,
            "--worker-id", s.worker_id, "--state-dir", str(s.state_dir),
        ]  # fmt: skip
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
