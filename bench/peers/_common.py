"""Shared helpers for the peer benchmarks (Restate, DBOS).

Everything here runs inside the peers' own virtualenv (bench/.work/venv-peers); `reexec_into_venv`
moves a process started with any other python into it, so the peers' packages never enter Steady's
environment.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]  # the repository root (…/main)
WORK = ROOT / "bench" / ".work"
VENV = WORK / "venv-peers"
VENV_PY = VENV / "bin" / "python"
RESTATE_NPM_DIR = WORK / "restate"
RESTATE_BIN = RESTATE_NPM_DIR / "node_modules" / "@restatedev" / "restate-server-linux-x64" / "bin" / "restate-server"
RUNS = WORK / "peer-runs"

# Workload sizes (bench/../shared/BENCHMARKS.md); quick mode is only a smoke test.
W1_SAT_N = {"full": 2000, "quick": 500}
W1_SAT_REPEATS = {"full": 3, "quick": 1}
W1_WARMUP = 30
W1_CLOSED_N = {"full": 300, "quick": 100}
W3_N = {"full": 10000, "quick": 2000}
W3_SETTLE_S = 30.0  # measure this long after the last run parked
CPU_WINDOW_S = 10.0  # idle CPU is averaged over this window
START_CONCURRENCY = 64  # start calls in flight at once from the client, for every system


def mode(quick: bool) -> str:
    return "quick" if quick else "full"


def reexec_into_venv(module: str) -> None:
    """Re-exec `python -m module argv…` with the peers venv's python unless already inside it."""
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    if not VENV_PY.exists():
        sys.exit(f"{VENV_PY} is missing: run `python -m bench.peers.setup` first")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("VIRTUAL_ENV", None)
    os.execve(str(VENV_PY), [str(VENV_PY), "-m", module, *sys.argv[1:]], env)


def command_line(module: str) -> str:
    return f"cd {shlex.quote(str(ROOT))} && python -m {module} " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def work_input(i: int, tag: str) -> dict[str, Any]:
    """~100-byte JSON workflow input."""
    d = {"id": f"{tag}-{i:06d}", "customer": "c-0042", "amount": 1234, "currency": "EUR", "note": ""}
    pad = 100 - len(json.dumps(d, separators=(",", ":")))
    d["note"] = "n" * max(pad, 0)
    return d


def expected_chain_output(ref: str) -> dict[str, Any]:
    return {"step": 3, "ok": True, "ref": ref[:12], "pad": "x" * 8}


def percentile(sorted_vals: list[float], p: float) -> float:
    """Linear-interpolated percentile of an already sorted list (p in 0..100)."""
    if not sorted_vals:
        return float("nan")
    k = (len(sorted_vals) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (k - lo)


def w1_metrics(rates: list[float], latencies_s: list[float], steps_per_workflow: int = 3) -> dict[str, Any]:
    med = statistics.median(rates)
    lat = sorted(x * 1000.0 for x in latencies_s)
    return {
        "workflows_per_s": round(med, 1),
        "workflows_per_s_runs": [round(r, 1) for r in rates],
        "workflows_per_s_spread": [round(min(rates), 1), round(max(rates), 1)],
        "steps_per_s": round(med * steps_per_workflow, 1),
        "p50_ms": round(percentile(lat, 50), 2),
        "p90_ms": round(percentile(lat, 90), 2),
        "p99_ms": round(percentile(lat, 99), 2),
        "closed_loop_runs": len(lat),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(port: int, timeout: float = 60.0, proc: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.pid} exited with {proc.returncode} before port {port} opened")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"port {port} did not open within {timeout}s")


# ---------------------------------------------------------------- process measurement (psutil)


def process_tree(pid: int) -> list[Any]:
    import psutil

    try:
        p = psutil.Process(pid)
        return [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def measure_processes(groups: dict[str, list[int]], window_s: float = CPU_WINDOW_S) -> dict[str, Any]:
    """RSS (MB, summed over each group's process trees) and CPU % of one core averaged over window_s."""
    import psutil

    procs: dict[str, list[Any]] = {}
    for name, roots in groups.items():
        seen: dict[int, Any] = {}
        for r in roots:
            for p in process_tree(r):
                seen[p.pid] = p
        procs[name] = list(seen.values())

    def cpu(ps: Iterable[Any]) -> float:
        tot = 0.0
        for p in ps:
            try:
                t = p.cpu_times()
                tot += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return tot

    c0 = {n: cpu(ps) for n, ps in procs.items()}
    t0 = time.monotonic()
    time.sleep(window_s)
    dt = time.monotonic() - t0
    c1 = {n: cpu(ps) for n, ps in procs.items()}
    rss: dict[str, float] = {}
    pss: dict[str, float] = {}
    for n, ps in procs.items():
        tot = totp = 0
        for p in ps:
            try:
                mi = p.memory_full_info()
                tot += mi.rss
                totp += getattr(mi, "pss", mi.rss)
            except psutil.NoSuchProcess:
                pass
        rss[n] = round(tot / 2**20, 1)
        pss[n] = round(totp / 2**20, 1)
    return {
        "rss_mb": rss,
        "pss_mb": pss,
        "memory_note": (
            "rss_mb sums each process's RSS over the group's process tree, so memory shared between "
            "processes (e.g. PostgreSQL shared_buffers) is counted once per process; pss_mb splits "
            "shared pages among their users and is the group's real footprint"
        ),
        "idle_cpu_pct": {n: round(100.0 * (c1[n] - c0[n]) / dt, 2) for n in procs},
        "process_count": {n: len(ps) for n, ps in procs.items()},
        "cpu_window_s": round(dt, 1),
    }


def stop_group(proc: Any, sig: int = signal.SIGTERM, timeout: float = 70.0) -> None:
    """Signal the process group that `proc` leads (started with start_new_session=True); escalate to SIGKILL."""
    if proc is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    # the group's other members (hypercorn workers, …) must be gone too
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and group_alive(proc.pid):
        time.sleep(0.2)
    if group_alive(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def group_alive(pgid: int) -> bool:
    import psutil

    for p in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.NoSuchProcess, PermissionError):
            pass
    return False


def leftover_processes(pids: Iterable[int], markers: Iterable[str]) -> list[str]:
    """Processes still alive from `pids`, or whose command line contains one of `markers` (e.g. a run dir)."""
    import psutil

    out = []
    me = os.getpid()
    pidset = set(pids)
    markers = [m for m in markers if m]
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if p.pid == me or p.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            cmd = " ".join(p.info["cmdline"] or [])
            if p.pid in pidset or any(m in cmd for m in markers):
                out.append(f"{p.pid} {cmd[:200]}")
        except psutil.NoSuchProcess:
            pass
    return out


def all_pids(roots: Iterable[int]) -> list[int]:
    out: list[int] = []
    for r in roots:
        out.extend(p.pid for p in process_tree(r))
    return out


def machine_info() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def pkg_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def write_result(
    out: str,
    system: str,
    workload: str,
    *,
    metrics: dict[str, Any],
    versions: dict[str, Any],
    durability: str,
    command: str,
    extra: dict[str, Any] | None = None,
) -> None:
    doc: dict[str, Any] = {
        "system": system,
        "workload": workload,
        "metrics": metrics,
        "versions": versions,
        "durability": durability,
        "command": command,
    }
    if extra:
        doc.update(extra)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
