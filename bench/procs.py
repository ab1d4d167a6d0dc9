"""The processes a benchmark runs: a fresh local broker, worker subprocesses, and their resource use.

Every broker gets its own home under ``bench/.work/`` and every worker its own subprocess, so that the RSS
and CPU measured for a process are its own. Brokers are started embedded (tied to this process with
``PR_SET_PDEATHSIG``) and workers are tied the same way, so nothing outlives the harness, even on ``kill -9``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from streams.broker import BrokerConfig, BrokerError, LocalBroker

ROOT = Path(__file__).resolve().parent.parent
"""The repository; workers run from here so that ``bench.apps`` imports."""
WORK = ROOT / "bench" / ".work"
"""Scratch space (git-ignored): broker homes, worker state, logs."""
APP = "bench.apps:app"


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    os.setsid()


@contextlib.contextmanager
def fresh_broker(home: Path, extra: dict[str, str], *, keep: bool = False) -> Iterator[LocalBroker]:
    """A new single-node broker in ``home`` (wiped first), stopped and its data removed afterwards."""
    broker = _start(home, extra)
    try:
        yield broker
    finally:
        broker.stop()
        if not keep:
            shutil.rmtree(home / "data", ignore_errors=True)


def _start(home: Path, extra: dict[str, str], attempts: int = 3) -> LocalBroker:
    """Start a broker in a wiped ``home``, trying again when formatting fails.

    ``streams.broker`` draws a random cluster id in URL-safe base64; one in 64 starts with ``-``, which
    Kafka's storage tool reads as an option and refuses. A new id fixes it.
    """
    for attempt in range(1, attempts + 1):
        shutil.rmtree(home, ignore_errors=True)
        broker = LocalBroker(BrokerConfig(home=home, extra=dict(extra)))
        try:
            broker.start(embedded=True)
        except BrokerError as exc:
            if attempt == attempts or "formatting KRaft storage failed" not in str(exc):
                raise
            continue
        return broker
    raise AssertionError("unreachable")


def broker_pid(broker: LocalBroker) -> int:
    """The pid of the broker's JVM."""
    running = broker.status()
    if running is None:
        raise RuntimeError(f"the broker in {broker.home} is not running")
    return running["pid"]


@dataclass
class WorkerProcess:
    """``python -m streams.cli worker`` serving ``bench.apps:app`` in its own subprocess."""

    bootstrap: str
    prefix: str
    worker_id: str
    state_dir: Path
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    _log_start: int = field(default=0, init=False, repr=False)

    @property
    def pid(self) -> int:
        """The worker's pid."""
        assert self.proc is not None, "worker not started"
        return self.proc.pid

    def start(self) -> None:
        """Start the worker (its output goes to ``log``)."""
        cmd = [
            sys.executable, "-m", "streams.cli", "worker", "--app", APP,
            "--bootstrap", self.bootstrap, "--prefix", self.prefix,
            "--worker-id", self.worker_id, "--state-dir", str(self.state_dir),
        ]  # fmt: skip
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env={**os.environ, **self.env},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - the harness starts no threads of its own
            )
        self._log_start = self.log.stat().st_size

    async def ready(self, timeout: float = 120.0) -> None:
        """Wait until the worker owns its inbox and timer partitions (log lines of ``streams``)."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.log.read_bytes()[self._log_start :]
            if b"assigned partitions [" in text and b"timer partitions [" in text:
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with code {self.proc.returncode}; see {self.log}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker not ready within {timeout:.0f}s; see {self.log}")
            await asyncio.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.kill()


@dataclass(frozen=True, slots=True)
class Usage:
    """CPU seconds (user + system, children included) and resident memory of a process at one moment."""

    cpu_s: float
    rss_bytes: int
    at: float


def usage(pid: int) -> Usage:
    """The current CPU time and RSS of ``pid``."""
    proc = psutil.Process(pid)
    with proc.oneshot():
        t = proc.cpu_times()
        rss = proc.memory_info().rss
    return Usage(t.user + t.system + t.children_user + t.children_system, rss, time.monotonic())


def cpu_share(before: Usage, after: Usage) -> float:
    """Average CPU use between two samples, in percent of one core."""
    elapsed = after.at - before.at
    return 100.0 * (after.cpu_s - before.cpu_s) / elapsed if elapsed > 0 else 0.0


class UsageMeter:
    """CPU used by named processes between :meth:`start` and :meth:`stop` (seconds and % of a core)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._before: dict[str, Usage] = {}

    def start(self) -> None:
        """Take the first sample."""
        self._before = {name: usage(pid) for name, pid in self.pids.items()}

    def stop(self) -> dict[str, dict[str, float]]:
        """CPU seconds, % of a core and RSS (MB) of each process since :meth:`start`."""
        out: dict[str, dict[str, float]] = {}
        for name, pid in self.pids.items():
            after = usage(pid)
            before = self._before[name]
            out[name] = {
                "cpu_s": round(after.cpu_s - before.cpu_s, 2),
                "cpu_pct": round(cpu_share(before, after), 1),
                "rss_mb": round(after.rss_bytes / 2**20, 1),
            }
        return out
