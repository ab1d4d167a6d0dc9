"""A local single-node Apache Kafka broker, started from Kafka's own jars.

Steady's development mode and its test suite need a real broker on machines that have no Docker engine.
Kafka's jars are fetched once from Maven Central by ``compose/pom.xml`` into a cache folder; after that a
start needs no network. The broker runs in KRaft mode as one combined broker + controller bound to
127.0.0.1, with the single-node settings that make transactions and log compaction work.

Layout of a broker's home folder (default ``.steady/broker`` under the current directory)::

    server.properties   generated on every start
    data/               KRaft metadata and topic logs (kept across restarts)
    logs/server.log     the broker's own log (Log4j 2)
    logs/launcher.log   start, readiness and shutdown as seen by the launcher
    broker.json         pid and ports of the running broker

The JVM is started in its own session. An embedded broker (tests, ``steady dev``) is also tied to its
parent with ``PR_SET_PDEATHSIG`` so that it cannot outlive the Python process, even one killed with -9.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaClient

from streams.topics import INDEX_INTERVAL_BYTES

logger = logging.getLogger(__name__)

KAFKA_VERSION = "4.1.2"
"""The Kafka release that ``compose/pom.xml`` resolves."""

_REPO_ROOT = Path(__file__).resolve().parent.parent
_LOG4J2 = """\
status = warn
shutdownHook = disable
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = {logs}/server.log
appender.file.filePattern = {logs}/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 50MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = INFO
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""


class BrokerError(RuntimeError):
    """The local broker could not be provisioned, started or stopped."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _runs_from(pid: int, properties: Path) -> bool:
    """Whether process ``pid`` is a broker started with ``properties`` (pids are reused once a process ends)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc to ask: trust the pid
    return str(properties).encode() in args


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); read its state to tell.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _tie_to_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to SIGKILL this process when its parent dies (prctl PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # 1 == PR_SET_PDEATHSIG
    os.setsid()


QUICK_JIT = ("-XX:TieredStopAtLevel=1",)
"""Compile the broker's hot code with the JVM's quick compiler (C1) and never with its optimizing one (C2).

The broker shares two cores with the worker, and a fresh JVM's optimizing compiler is its largest consumer of
CPU for minutes: a third of a core and more while a benchmark runs, more than the broker spends on requests.
With the quick compiler alone the broker used about half the CPU per workflow and W1 was faster in every pair
measured side by side (``bench/results/broker-jit``). A broker that runs for weeks may prefer the JVM's own tiers
(``jvm_options=()``)."""


@dataclass(slots=True)
class BrokerConfig:
    """Where and how the local broker runs.

    Attributes:
        home: folder that holds the broker's data, logs and pid file.
        port: client port on 127.0.0.1; 0 picks a free one.
        jars: folder with Kafka's jars; fetched with Maven when missing.
        heap: JVM heap, sized for a 2-core / 24 GiB machine by default.
        partitions: default partition count of auto-created topics.
        extra: further ``server.properties`` settings, e.g. ``{"log.flush.interval.messages": "1"}``.
        jvm_options: further JVM options. By default the JIT compiles with its quick compiler only
            (:data:`QUICK_JIT`); ``()`` gives the JVM's own tiers.
    """

    home: Path = field(default_factory=lambda: Path(os.environ.get("STEADY_BROKER_HOME", ".steady/broker")))
    port: int = 0
    jars: Path = field(
        default_factory=lambda: Path(os.environ.get("STEADY_KAFKA_JARS", _REPO_ROOT / "compose" / ".kafka" / "lib"))
    )
    heap: str = "768m"
    partitions: int = 8
    extra: dict[str, str] = field(default_factory=dict)
    jvm_options: tuple[str, ...] = QUICK_JIT


def ensure_jars(jars: Path) -> Path:
    """Return the folder of Kafka's jars, fetching them with Maven the first time.

    A marker file records a complete download, so later starts never touch the network.
    """
    marker = jars / f".complete-{KAFKA_VERSION}"
    if marker.exists():
        return jars
    pom = Path(os.environ.get("STEADY_KAFKA_POM", _REPO_ROOT / "compose" / "pom.xml"))
    if not pom.exists():
        raise BrokerError(f"Kafka's jars are not in {jars} and the Maven descriptor {pom} is missing")
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError("Maven (mvn) is needed once to fetch Kafka's jars; install it or set STEADY_KAFKA_JARS")
    logger.info("fetching Kafka %s jars into %s", KAFKA_VERSION, jars)
    cmd = [mvn, "-B", "-q", "-f", str(pom), "dependency:copy-dependencies", f"-Dkafka.lib.dir={jars.resolve()}"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BrokerError(f"mvn could not fetch Kafka's jars:\n{done.stdout}\n{done.stderr}")
    marker.touch()
    return jars


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java:
        raise BrokerError("Java 17+ is needed to run the local broker; install it or set JAVA_HOME")
    return java


class LocalBroker:
    """A single-node KRaft broker owned by this process (embedded) or left running (detached).

    Example:
        >>> broker = LocalBroker(BrokerConfig(port=0))  # doctest: +SKIP
        >>> broker.start()                               # doctest: +SKIP
        >>> broker.bootstrap                             # doctest: +SKIP
        '127.0.0.1:40123'
        >>> broker.stop()                                # doctest: +SKIP
    """

    def __init__(self, config: BrokerConfig | None = None) -> None:
        self.config = config or BrokerConfig()
        self.home = self.config.home.resolve()
        self.port = self.config.port
        self.controller_port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """The ``host:port`` clients connect to."""
        return f"127.0.0.1:{self.port}"

    @property
    def state_file(self) -> Path:
        """Pid and ports of the running broker."""
        return self.home / "broker.json"

    @property
    def log_file(self) -> Path:
        """The broker's own log."""
        return self.home / "logs" / "server.log"

    def _log(self, message: str) -> None:
        logger.info(message)
        (self.home / "logs").mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        with (self.home / "logs" / "launcher.log").open("a") as f:
            f.write(f"[{stamp}] {message}\n")

    def _write_config(self) -> Path:
        data = self.home / "data"
        logs = self.home / "logs"
        data.mkdir(parents=True, exist_ok=True)
        logs.mkdir(parents=True, exist_ok=True)
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(data),
            "num.partitions": str(self.config.partitions),
            # One node: every internal topic has one replica, and transactions need min ISR 1.
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "8",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "8",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            # No reason to wait for more members to join a group on a development broker.
            "group.initial.rebalance.delay.ms": "0",
            # Compacted topics are compacted promptly so that tests and development see it happen.
            "log.cleaner.enable": "true",
            "log.cleaner.backoff.ms": "1000",
            "log.cleaner.threads": "1",
            "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
            # Few request threads: the broker shares two cores with the worker (bench/results/broker-threads: with
            # 1 and 2 instead of 2 and 4, W1 was no slower and its closed loop no later; one I/O thread was worse).
            "num.network.threads": "1",
            "num.io.threads": "2",
            "auto.create.topics.enable": "true",
            # Steady's topics set their own interval at creation (streams.topics); this covers the internal topics,
            # which take every transaction's offsets and markers.
            "log.index.interval.bytes": str(INDEX_INTERVAL_BYTES),
        }
        settings.update(self.config.extra)
        path = self.home / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        (self.home / "log4j2.properties").write_text(_LOG4J2.format(logs=logs))
        return path

    def _java_cmd(self, main: str, *args: str) -> list[str]:
        jars = ensure_jars(self.config.jars)
        return [
            _java(),
            f"-Xms{self.config.heap}",
            f"-Xmx{self.config.heap}",
            # G1: ZGC and Shenandoah were no better in the closed loop, and Parallel, a few ms better at its p99,
            # stops ~150 ms for each old-generation collection (bench/results/broker-gc).
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            *self.config.jvm_options,
            f"-Dlog4j2.configurationFile={self.home / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.home / 'logs'}",
            "-cp",
            f"{jars.resolve()}/*",
            main,
            *args,
        ]

    def _format(self, properties: Path) -> None:
        if (self.home / "data" / "meta.properties").exists():
            return
        cluster_id = _cluster_id()
        cmd = self._java_cmd("kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(properties))
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise BrokerError(f"formatting KRaft storage failed:\n{done.stdout}\n{done.stderr}")
        self._log(f"formatted KRaft storage in {self.home / 'data'} (cluster {cluster_id})")

    def start(self, *, embedded: bool = True, timeout: float = 90.0) -> None:
        """Start the broker and wait until it answers metadata requests.

        Args:
            embedded: tie the JVM to this process so it dies with it; ``False`` leaves it running
                detached (``steady broker start``).
            timeout: seconds to wait for readiness before giving up and stopping it.
        """
        running = self.status()
        if running is not None:
            raise BrokerError(f"a broker already runs from {self.home} (pid {running['pid']}, port {running['port']})")
        previous = self._previous_ports()
        self.port = self.config.port or previous.get("port") or _free_port()
        self.controller_port = previous.get("controller_port") or _free_port()
        properties = self._write_config()
        self._format(properties)
        cmd = self._java_cmd("kafka.Kafka", str(properties))
        began = time.monotonic()
        with (self.home / "logs" / "stdout.log").open("ab") as out:
            self._proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.home,
                preexec_fn=_tie_to_parent if embedded else os.setsid,  # noqa: PLW1509 - no threads yet
            )
        self.state_file.write_text(
            json.dumps({"pid": self._proc.pid, "port": self.port, "controller_port": self.controller_port})
        )
        self._log(f"starting Kafka {KAFKA_VERSION} pid {self._proc.pid} on {self.bootstrap}")
        try:
            _run_blocking(self._wait_ready(timeout))
        except BaseException:
            self._log("broker did not become ready; stopping it")
            self.stop()
            raise
        self._log(f"broker ready on {self.bootstrap} after {time.monotonic() - began:.1f}s")

    def _previous_ports(self) -> dict[str, int]:
        # Reuse the last ports so that a restarted broker keeps its address (clients reconnect).
        with contextlib.suppress(OSError, ValueError):
            state = json.loads(self.state_file.read_text())
            return {k: int(state[k]) for k in ("port", "controller_port") if _port_free(int(state[k]))}
        return {}

    async def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                raise BrokerError(f"the broker exited with code {self._proc.returncode}; see {self.log_file}")
            if await probe(self.bootstrap):
                return
            if time.monotonic() > deadline:
                raise BrokerError(f"the broker did not answer within {timeout:.0f}s; see {self.log_file}")
            await asyncio.sleep(0.25)

    def status(self) -> dict[str, int] | None:
        """Pid and ports of a broker running from this home folder, or ``None``."""
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None
        pid = int(state["pid"])
        if not _pid_alive(pid) or not _runs_from(pid, self.home / "server.properties"):
            return None  # gone, or its pid now belongs to another process
        return {k: int(v) for k, v in state.items()}

    def stop(self, grace: float = 20.0) -> None:
        """Stop the broker: SIGTERM for a clean shutdown, SIGKILL after ``grace`` seconds."""
        running = self.status()
        pid = self._proc.pid if self._proc is not None else (running["pid"] if running else None)
        if pid is None:
            return
        self._log(f"stopping broker pid {pid} (SIGTERM)")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not self._wait_exit(pid, grace):
            self._log(f"broker pid {pid} ignored SIGTERM for {grace:.0f}s; SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self._wait_exit(pid, 10.0)
        self._log(f"broker pid {pid} stopped")
        self._proc = None

    def kill(self) -> None:
        """SIGKILL the broker, as a crash would (for chaos tests)."""
        running = self.status()
        if running is None:
            return
        os.kill(running["pid"], signal.SIGKILL)
        self._wait_exit(running["pid"], 10.0)
        self._log(f"broker pid {running['pid']} killed (SIGKILL)")
        self._proc = None

    def _wait_exit(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.pid == pid:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._proc.wait(timeout=0.1)
                if self._proc.poll() is not None:
                    return True
            elif not _pid_alive(pid):
                return True
            else:
                time.sleep(0.1)
        return False


def _run_blocking(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` to the end from sync code, even when this thread already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(coro)
        return
    failure: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(coro)
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=target, name="steady-broker-wait")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Kafka binds with SO_REUSEADDR, so a port whose old connections linger in TIME_WAIT is still usable.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _cluster_id() -> str:
    # Like Kafka's own Uuid.randomUuid(): an id starting with "-" would be read as an option by the storage tool.
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


async def probe(bootstrap: str, timeout: float = 2.0) -> bool:
    """Whether a broker at ``bootstrap`` answers a metadata request."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
    quiet = logging.getLogger("aiokafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # "connection refused" is the expected answer while it boots
    try:
        await asyncio.wait_for(client.bootstrap(), timeout)
        return bool(client.cluster.brokers())
    except Exception:  # noqa: BLE001 - any failure means "not ready yet"
        return False
    finally:
        quiet.setLevel(level)
        with contextlib.suppress(Exception):
            await client.close()
