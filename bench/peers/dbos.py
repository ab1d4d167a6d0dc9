"""DBOS peer benchmark: `python -m bench.peers.dbos <W1|W3> --backend sqlite|postgres --out FILE.json [--quick]`.

Runs with any python: it re-execs itself into bench/.work/venv-peers (see _common.reexec_into_venv).
The DBOS application (bench.peers.dbos_app) runs in a child process so that it can be measured and
stopped like a server. With --backend postgres a private PostgreSQL 15 cluster (Debian package) is
created fresh with initdb under bench/.work/pg/, started with pg_ctl on a free loopback port (fsync on,
synchronous_commit on: the defaults), and stopped and deleted at the end. With --backend sqlite the system
database is a fresh file (DBOS's defaults: rollback journal; PRAGMA synchronous=FULL set explicitly).
"""

from __future__ import annotations

from bench.peers import _common as C

if __name__ == "__main__":
    C.reexec_into_venv("bench.peers.dbos")

import argparse
import glob
import json
import os
import pwd
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PG_USER = "postgres"  # initdb/postgres refuse to run as root; the Debian package creates this user

DURABILITY = {
    "sqlite": (
        "DBOS system database in SQLite (DBOS defaults: rollback journal, journal_mode=delete), "
        "PRAGMA synchronous=FULL: every commit is fsynced (journal and database file)."
    ),
    "postgres": (
        "DBOS system database in a private PostgreSQL 15 cluster with its defaults: fsync=on, "
        "synchronous_commit=on, full_page_writes=on, wal_sync_method=fdatasync: every commit is "
        "fsynced to the WAL before it returns."
    ),
}


def pg_bindir() -> Path:
    cands = sorted(glob.glob("/usr/lib/postgresql/15/bin")) or sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if not cands:
        sys.exit("PostgreSQL binaries not found under /usr/lib/postgresql: run python -m bench.peers.setup")
    return Path(cands[-1])


def as_pg(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[Any]:
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", PG_USER, "--", *cmd]
    return subprocess.run(cmd, check=True, **kw)


class Postgres:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.port = C.free_port()
        self.bindir = pg_bindir()
        self.postmaster_pid: int | None = None

    def start(self) -> None:
        if self.root.exists():
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True)
        if os.geteuid() == 0:
            pw = pwd.getpwnam(PG_USER)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        as_pg(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-locale",
            ],
            stdout=subprocess.DEVNULL,
        )
        opts = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            f"-c fsync=on -c synchronous_commit=on -c full_page_writes=on"
        )
        as_pg(
            [
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.root / "postgres.log"),
                "-o",
                opts,
                "-w",
                "-t",
                "60",
                "start",
            ],
            stdout=subprocess.DEVNULL,
        )
        self.postmaster_pid = int((self.data / "postmaster.pid").read_text().split()[0])
        C.log(f"postgres up on 127.0.0.1:{self.port} (pid {self.postmaster_pid}, data {self.data})")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/dbos_bench"

    def settings(self) -> dict[str, str]:
        import psycopg

        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres") as con:
            out = {}
            for k in (
                "server_version",
                "fsync",
                "synchronous_commit",
                "full_page_writes",
                "wal_sync_method",
                "shared_buffers",
                "max_connections",
            ):
                out[k] = con.execute(f"SHOW {k}").fetchone()[0]
            return out

    def stop(self) -> None:
        if self.data.exists():
            try:
                as_pg(
                    [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop"],
                    stdout=subprocess.DEVNULL,
                )
            except subprocess.CalledProcessError as e:
                C.log(f"pg_ctl stop failed: {e}")

    def cleanup(self) -> None:
        shutil.rmtree(self.data, ignore_errors=True)


def read_event(proc: subprocess.Popen[str], want: str, timeout: float) -> dict[str, Any]:
    import selectors

    assert proc.stdout is not None  # started with stdout=PIPE
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not sel.select(timeout=1.0):
            if proc.poll() is not None:
                raise RuntimeError(f"dbos app exited with {proc.returncode} before '{want}'")
            continue
        line = proc.stdout.readline()
        if not line:
            proc.wait()
            raise RuntimeError(f"dbos app exited with {proc.returncode} before '{want}'")
        try:
            ev: dict[str, Any] = json.loads(line)
        except ValueError:
            C.log(f"app: {line.rstrip()}")
            continue
        if ev.get("event") == want:
            return ev
        C.log(f"app event: {ev}")
    raise TimeoutError(f"no '{want}' from the dbos app within {timeout}s")


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.peers.dbos")
    ap.add_argument("workload", choices=["W1", "W3"])
    ap.add_argument("--backend", choices=["sqlite", "postgres"], required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    cmd = C.command_line("bench.peers.dbos")
    system = f"dbos-{args.backend}"
    run_dir = C.RUNS / f"{system}-{args.workload}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True, exist_ok=True)
    versions: dict[str, Any] = {
        "dbos": C.pkg_version("dbos"),
        "sqlalchemy": C.pkg_version("sqlalchemy"),
        "python": sys.version.split()[0],
    }
    machine = C.machine_info()
    pg: Postgres | None = None
    app: subprocess.Popen[str] | None = None
    pids: list[int] = []
    metrics: dict[str, Any] = {}
    settings: dict[str, Any] = {}
    try:
        if args.backend == "postgres":
            pg = Postgres(C.WORK / "pg" / f"{args.workload}-{os.getpid()}")
            pg.start()
            url = pg.url
            settings = pg.settings()
            versions["postgresql"] = settings["server_version"]
            versions["psycopg"] = C.pkg_version("psycopg")
        else:
            url = f"sqlite:///{run_dir / 'dbos_sys.sqlite'}"
            import sqlite3

            versions["sqlite"] = sqlite3.sqlite_version
        env = dict(os.environ)
        env["PYTHONPATH"] = str(C.ROOT)
        acmd = [str(C.VENV_PY), "-m", "bench.peers.dbos_app", args.workload, "--db-url", url]
        if args.quick:
            acmd.append("--quick")
        # the child keeps its own copy of the log fd, so the parent's handle can be closed right away
        with open(run_dir / "app.log", "wb") as app_log:
            app = subprocess.Popen(
                acmd,
                env=env,
                cwd=str(run_dir),
                start_new_session=True,
                stdout=subprocess.PIPE,
                stderr=app_log,
                text=True,
            )
        launched = read_event(app, "launched", 300)
        settings.update({k: v for k, v in launched.items() if k.startswith("sqlite_")})
        groups: dict[str, list[int]] = {"dbos app (python)": [app.pid]}
        if pg is not None and pg.postmaster_pid:
            groups["postgres"] = [pg.postmaster_pid]
        if args.workload == "W1":
            metrics = read_event(app, "result", 7200)["metrics"]
            app.wait(timeout=60)
        else:
            ev = read_event(app, "parked", 7200)
            t_parked = time.monotonic()
            metrics = {
                "runs": ev["runs"],
                "start_s": ev["start_s"],
                "start_calls_s": ev["start_calls_s"],
                "start_concurrency": C.START_CONCURRENCY,
                "parked_means": "every run has checkpointed its DBOS.sleep row in operation_outputs "
                "(polled every 0.25 s)",
            }
            C.log(f"W3: all {ev['runs']} parked after {ev['start_s']}s; measuring in {C.W3_SETTLE_S:.0f}s")
            time.sleep(max(0.0, t_parked + C.W3_SETTLE_S - time.monotonic()))
            pids = C.all_pids([p for g in groups.values() for p in g])
            metrics.update(C.measure_processes(groups))
            metrics["measured_after_park_s"] = C.W3_SETTLE_S
            metrics["client"] = (
                "in-process DBOS.start_workflow_async (<=64 in flight); async workflow, DBOS.sleep_async"
            )
    finally:
        if app is not None:
            pids += C.all_pids([app.pid])
            C.stop_group(app, timeout=30)
        if pg is not None:
            if pg.postmaster_pid:
                pids += C.all_pids([pg.postmaster_pid])
            pg.stop()
        time.sleep(0.5)
        markers = [str(run_dir)] + ([str(pg.root)] if pg is not None else [])
        left = C.leftover_processes(pids, markers)
        if left:
            C.log(f"LEFTOVER PROCESSES: {left}")
        if pg is not None:
            pg.cleanup()
        for f in run_dir.glob("dbos_sys.sqlite*"):
            f.unlink()
    C.write_result(
        out,
        system,
        args.workload,
        metrics=metrics,
        versions=versions,
        durability=DURABILITY[args.backend],
        command=cmd,
        extra={"settings": settings, "machine": machine, "leftover_processes": left, "logs": str(run_dir)},
    )


if __name__ == "__main__":
    main()
