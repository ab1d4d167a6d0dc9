"""Running the peers (Restate, DBOS) through ``bench/peers/<name>.py``, which another module provides.

The contract of a peer module:

- it runs as ``python -m bench.peers.<name> <workload> --out FILE [--quick] [variant options]`` from the
  repository root, for workload ``W1`` or ``W3``, starts and stops everything it needs, and exits 0 on
  success; :data:`PEERS` lists each peer's variants (DBOS runs once with ``--backend sqlite`` and once with
  ``--backend postgres``);
- it writes to ``FILE`` one JSON object (or a list of them, one per back end, e.g. DBOS on SQLite and on
  PostgreSQL)::

      {"system": "restate", "workload": "W1", "setting": "optional label",
       "metrics": {...}, "versions": {...}, "durability": "fsync of every journal append"}

- its ``metrics`` use Steady's names so the report can show them side by side: for W1
  ``workflows_per_s`` and ``steps_per_s`` (a number, or ``{"median", "min", "max", "values"}``; a number may
  come with ``workflows_per_s_spread: [min, max]`` and ``workflows_per_s_runs: [...]``) and the closed-loop
  ``p50_ms``, ``p90_ms``, ``p99_ms`` (at the top, or under ``latency``); for W3 ``runs``, ``start_s`` (until
  the start calls were acknowledged), ``parked_s`` (until every run parked; a peer that reports only
  ``start_calls_s`` and ``start_s`` means start_s as parked), ``rss_mb`` and ``idle_cpu_pct`` (the last two
  ``{process name: value}``).

A peer whose module is missing, fails, times out or writes something else is skipped with a message.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.procs import ROOT

PEERS: dict[str, list[tuple[str, ...]]] = {
    "restate": [()],
    "dbos": [("--backend", "sqlite"), ("--backend", "postgres")],
}
"""Each peer and the extra options of each of its variants (one invocation per variant)."""
PEER_WORKLOADS = ("W1", "W3")
REQUIRED = ("system", "workload", "metrics", "versions", "durability")


def module_file(name: str) -> Path | None:
    """The peer's module, if it exists."""
    for candidate in (ROOT / "bench" / "peers" / f"{name}.py", ROOT / "bench" / "peers" / name / "__main__.py"):
        if candidate.exists():
            return candidate
    return None


def _validate(data: Any, workload: str) -> list[dict[str, Any]]:
    entries = data if isinstance(data, list) else [data]
    for entry in entries:
        if not isinstance(entry, dict):
            raise ValueError("not a JSON object")
        missing = [k for k in REQUIRED if k not in entry]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        if entry["workload"] != workload:
            raise ValueError(f"workload {entry['workload']!r}, expected {workload!r}")
        if not isinstance(entry["metrics"], dict):
            raise ValueError("metrics is not an object")
    return [normalized(entry) for entry in entries]


def normalized(entry: dict[str, Any]) -> dict[str, Any]:
    """``entry`` with its W1 metrics also in Steady's shape (``workflows_per_s`` as a spread, ``latency``)."""
    metrics = dict(entry["metrics"])
    rate = metrics.get("workflows_per_s")
    spread = metrics.get("workflows_per_s_spread")
    if isinstance(rate, int | float) and isinstance(spread, list) and len(spread) == 2:
        values = metrics.get("workflows_per_s_runs", [rate])
        metrics["workflows_per_s"] = {"median": rate, "min": spread[0], "max": spread[1], "values": values}
    if entry["workload"] == "W3" and "parked_s" not in metrics and "start_calls_s" in metrics:
        # Peers report the time until every run parked as start_s, and the start calls as start_calls_s.
        metrics["parked_s"], metrics["start_s"] = metrics["start_s"], metrics["start_calls_s"]
    quantiles = ("p50_ms", "p90_ms", "p99_ms")
    if "latency" not in metrics and any(q in metrics for q in quantiles):
        metrics["latency"] = {q: metrics[q] for q in quantiles if q in metrics}
    return {**entry, "metrics": metrics}


def run_peer(
    name: str, workload: str, out_dir: Path, *, variant: tuple[str, ...] = (), quick: bool, timeout: float
) -> list[dict[str, Any]]:
    """Run one peer (variant) on one workload; its result entries (``RuntimeError`` with the reason if not)."""
    if module_file(name) is None:
        raise RuntimeError(f"bench/peers/{name}.py does not exist")
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "-".join([name, *(v.lstrip("-") for v in variant), workload])
    out = out_dir / f"{stem}.json"
    log = out_dir / f"{stem}.log"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", f"bench.peers.{name}", workload, "--out", str(out), *(["--quick"] if quick else [])]
    cmd += variant
    with log.open("wb") as sink:
        try:
            done = subprocess.run(cmd, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"timed out after {timeout:.0f}s (log: {log})") from exc
    if done.returncode != 0:
        raise RuntimeError(f"exited with code {done.returncode} (log: {log})")
    try:
        entries = _validate(json.loads(out.read_text()), workload)
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"wrote no valid result to {out}: {exc} (log: {log})") from exc
    return [{**entry, "command": cmd, "source": f"bench.peers.{name}"} for entry in entries]


def run_peers(workloads: list[str], out_dir: Path, *, quick: bool) -> tuple[list[dict[str, Any]], list[str]]:
    """Every available peer on the peer workloads among ``workloads``: result entries, and skip messages."""
    entries: list[dict[str, Any]] = []
    skipped: list[str] = []
    for name, variants in PEERS.items():
        for variant in variants:
            for workload in (w for w in PEER_WORKLOADS if w in workloads):
                label = " ".join(["peer", name, *variant, workload])
                print(f"[{label}] running", flush=True)
                try:
                    found = run_peer(
                        name, workload, out_dir, variant=variant, quick=quick, timeout=900 if quick else 3600
                    )
                except RuntimeError as exc:
                    print(f"[{label}] skipped: {exc}", flush=True)
                    skipped.append(f"{label} skipped: {exc}")
                    continue
                entries.extend(found)
                print(f"[{label}] done", flush=True)
    return entries, skipped
