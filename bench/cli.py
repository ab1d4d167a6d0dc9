"""The command line of the harness: choose workloads, settings and sizes, run them, write the results."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import logging
import os
import shlex
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench import machine, peer_runs, report
from bench.procs import ROOT, WORK, fresh_broker
from bench.workloads import SUMMARY, WORKLOADS, select
from bench.workloads.base import DEFAULTS, FLUSH_EACH, SETTINGS, Env, Setting, Sizes
from streams.broker import BrokerConfig

RESULTS = ROOT / "bench" / "results"


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m bench``."""
    parser = argparse.ArgumentParser(prog="python -m bench", description="Steady's benchmarks (BENCHMARKS.md).")
    parser.add_argument("--quick", action="store_true", help="small sizes, Kafka defaults only: a few minutes")
    parser.add_argument("--only", metavar="W1,W4", help=f"workloads to run, of {', '.join(WORKLOADS)} (default all)")
    parser.add_argument(
        "--settings",
        metavar="defaults,flush",
        help="broker settings: defaults (Kafka's), flush (log.flush.interval.messages=1); "
        "default both, or defaults only with --quick",
    )
    parser.add_argument("--peers", action="store_true", help="also run bench/peers/{restate,dbos}.py on W1 and W3")
    parser.add_argument(
        "--size",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override one size, e.g. --size w3_runs=20000 (see bench/workloads/base.py: Sizes)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (default bench/results)")
    parser.add_argument("--keep-work", action="store_true", help="keep broker data and worker state in bench/.work")
    return parser


def _sizes(args: argparse.Namespace) -> Sizes:
    sizes = Sizes.quick() if args.quick else Sizes()
    changes: dict[str, Any] = {}
    types = {f.name: f.type for f in dataclasses.fields(Sizes)}
    for item in args.size:
        name, _, value = item.partition("=")
        if name not in types:
            raise SystemExit(f"unknown size {name!r}; choose from {', '.join(types)}")
        changes[name] = float(value) if types[name] in (float, "float") else int(value)
    return dataclasses.replace(sizes, **changes)


def _settings(args: argparse.Namespace) -> list[Setting]:
    if not args.settings:
        return [DEFAULTS] if args.quick else [DEFAULTS, FLUSH_EACH]
    try:
        return [SETTINGS[name.strip()] for name in args.settings.split(",") if name.strip()]
    except KeyError as exc:
        raise SystemExit(f"unknown setting {exc}; choose from {', '.join(SETTINGS)}") from exc


def _headline(name: str, metrics: dict[str, Any]) -> str:
    """A one-line summary printed after each workload."""
    match name:
        case "W1":
            lat = metrics["latency"]
            return (
                f"{metrics['workflows_per_s']['median']:.0f} wf/s ({metrics['steps_per_s']['median']:.0f} steps/s); "
                f"closed loop p50/p90/p99 {lat['p50_ms']}/{lat['p90_ms']}/{lat['p99_ms']} ms"
            )
        case "limit":
            share = metrics.get("steady_w1_share")
            return f"raw Kafka {metrics['runs_per_s']['median']:.0f} runs/s" + (
                f"; Steady's W1 is {100 * share:.1f}% of it" if share is not None else ""
            )
        case "W2":
            return f"{metrics['per_run']['p50_ms']} ms per run p50 ({metrics['steps_per_s']} steps/s)"
        case "W3":
            return (
                f"{metrics['runs']} started in {metrics['start_s']} s, parked after {metrics['parked_s']} s; "
                f"RSS {metrics['rss_mb']} MB; idle CPU {metrics['idle_cpu_pct']} %"
            )
        case "W4":
            late = metrics["lateness"]
            return f"lateness p50 {late['p50_ms']} ms, p99 {late['p99_ms']} ms"
        case "W5":
            return (
                f"recovered in {metrics['recovery_s']} s; finished steps re-executed "
                f"{metrics['finished_steps_reexecuted']}; runs with one terminal record "
                f"{metrics['runs_with_one_terminal_record']}/{metrics['runs']}"
            )
    return ""


def run_workload(
    name: str, setting: Setting, sizes: Sizes, work: Path, *, shared: dict[str, Any], keep: bool
) -> dict[str, Any]:
    """One workload under one setting on a fresh broker; its result entry (with ``error`` if it failed)."""
    label = f"[{name} {setting.name}]"
    print(f"{label} {SUMMARY[name]}", flush=True)
    folder = work / f"{setting.name}-{name}"
    entry: dict[str, Any] = {"system": "steady", "setting": setting.name, "workload": name}
    # The previous workload's broker ran and was deleted just now: flush what the kernel still has to write for it
    # (metadata, logs) before this one starts, so that its disk work does not land inside this measurement.
    os.sync()
    began = time.monotonic()
    try:
        with fresh_broker(folder / "broker", setting.broker_extra, keep=keep) as broker:
            env = Env(broker=broker, setting=setting, sizes=sizes, work=folder, shared=shared)
            entry["worker_settings"] = env.worker_settings()
            entry["metrics"] = asyncio.run(WORKLOADS[name](env))
        print(f"{label} {_headline(name, entry['metrics'])}", flush=True)
    except Exception as exc:  # noqa: BLE001 - one failed workload must not stop the others
        entry["error"] = f"{type(exc).__name__}: {exc}"
        entry["traceback"] = traceback.format_exc()
        print(f"{label} FAILED: {entry['error']} (logs in {folder})", flush=True)
    if not keep:
        shutil.rmtree(folder / "state", ignore_errors=True)
    entry["elapsed_s"] = round(time.monotonic() - began, 1)
    entry["durability"] = setting.describe()
    return entry


def _durability(setting: Setting) -> dict[str, Any]:
    return {
        "summary": setting.describe(),
        "broker_extra": setting.broker_extra,
        "broker_jvm_options": list(BrokerConfig().jvm_options),
        "producer_acks": "all",
        "idempotence": True,
        "transactions": "one per worker batch (state, events, tasks, completions, consumed offsets)",
        "isolation": "read_committed",
        "replication_factor": 1,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the chosen workloads under each setting, then the peers; write the results."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        workloads = select(args.only)
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc
    sizes, settings = _sizes(args), _settings(args)
    now = dt.datetime.now(dt.UTC)
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    work = WORK / stamp
    session: dict[str, Any] = {
        "started_at": now.isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "command": shlex.join(getattr(sys, "orig_argv", [sys.executable, "-m", "bench", *sys.argv[1:]])),
        "cwd": os.getcwd(),
        "workloads": workloads,
        "sizes": dataclasses.asdict(sizes),
        "machine": machine.machine(),
        "versions": machine.versions(),
        "durability": {s.name: _durability(s) for s in settings},
        "results": [],
        "skipped": [],
    }
    began = time.monotonic()
    try:
        for setting in settings:
            shared: dict[str, Any] = {}
            for name in workloads:
                session["results"].append(run_workload(name, setting, sizes, work, shared=shared, keep=args.keep_work))
        if args.peers:
            entries, skipped = peer_runs.run_peers(workloads, work / "peers", quick=args.quick)
            session["results"] += entries
            session["skipped"] += skipped
    finally:
        session["finished_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        session["duration_s"] = round(time.monotonic() - began, 1)
        path = report.write(session, args.out, stamp)
        print(f"results: {path}, {args.out / 'latest.md'}, {args.out / 'latest.png'}", flush=True)
    return 1 if any(e.get("error") for e in session["results"]) else 0
