"""Restate peer benchmark: `python -m bench.peers.restate <W1|W3> --out FILE.json [--quick]`.

Runs with any python: it re-execs itself into bench/.work/venv-peers (see _common.reexec_into_venv).
Starts a private single-node restate-server (npm @restatedev/restate-server) on free loopback ports with a
fresh data dir, serves bench.peers.restate_service with hypercorn (defaults: 1 worker, asyncio, h2c),
registers the deployment through the admin API (POST /deployments), drives workflows through the HTTP
ingress, then stops both and checks that no process is left.
"""

from __future__ import annotations

from bench.peers import _common as C

if __name__ == "__main__":
    C.reexec_into_venv("bench.peers.restate")

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import time
from typing import Any

DURABILITY = (
    "Restate server defaults (single node, replicated loglet on the local log-server, replication 1): "
    "every journal append is written to the log-server's RocksDB WAL and fsynced before it is acknowledged "
    "(log-server rocksdb-disable-wal-fsync=false, bifrost.local rocksdb-disable-wal-fsync=false); partition "
    "store RocksDB WAL on (not fsynced per write, recovered from the log). Only change from defaults: "
    "telemetry disabled, loopback ports, tcp listen mode."
)


def _http(method: str, url: str, body: Any = None, timeout: float = 60) -> tuple[int, bytes]:
    """Tiny blocking HTTP helper for setup calls (status, body); status 0 when the connection fails."""
    import json
    import urllib.error
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""


class RestateSystem:
    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir
        self.ingress_port = C.free_port()
        self.admin_port = C.free_port()
        self.node_port = C.free_port()
        self.svc_port = C.free_port()
        self.server: subprocess.Popen[bytes] | None = None
        self.service: subprocess.Popen[bytes] | None = None
        self.pids: list[int] = []

    @property
    def ingress(self) -> str:
        return f"http://127.0.0.1:{self.ingress_port}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self) -> None:
        os.makedirs(self.run_dir, exist_ok=True)
        env = dict(os.environ)
        env.update(
            RESTATE_DISABLE_TELEMETRY="true",
            RESTATE_INGRESS__BIND_ADDRESS=f"127.0.0.1:{self.ingress_port}",
            RESTATE_ADMIN__BIND_ADDRESS=f"127.0.0.1:{self.admin_port}",
            RESTATE_LOG_DISABLE_ANSI_CODES="true",
        )
        cmd = [
            str(C.RESTATE_BIN),
            "--no-logo",
            "--base-dir",
            os.path.join(self.run_dir, "data"),
            "--node-name",
            "bench",
            "--listen-mode",
            "tcp",
            "--bind-address",
            f"127.0.0.1:{self.node_port}",
        ]
        # the child keeps its own copy of the log fd, so the parent's handle can be closed right away
        with open(os.path.join(self.run_dir, "server.log"), "wb") as server_log:
            self.server = subprocess.Popen(
                cmd,
                env=env,
                cwd=self.run_dir,
                start_new_session=True,
                stdout=server_log,
                stderr=subprocess.STDOUT,
            )
        senv = dict(os.environ)
        senv["PYTHONPATH"] = str(C.ROOT)
        scmd = [
            str(C.VENV / "bin" / "hypercorn"),
            "--bind",
            f"127.0.0.1:{self.svc_port}",
            "bench.peers.restate_service:app",
        ]
        with open(os.path.join(self.run_dir, "service.log"), "wb") as service_log:
            self.service = subprocess.Popen(
                scmd,
                env=senv,
                cwd=str(C.ROOT),
                start_new_session=True,
                stdout=service_log,
                stderr=subprocess.STDOUT,
            )
        C.wait_port(self.admin_port, 120, self.server)
        C.wait_port(self.ingress_port, 120, self.server)
        C.wait_port(self.svc_port, 60, self.service)
        # admin health, then register the deployment
        deadline = time.monotonic() + 120
        while _http("GET", f"{self.admin}/health")[0] != 200:
            if time.monotonic() > deadline:
                raise TimeoutError("restate admin not healthy")
            time.sleep(0.2)
        st, body = _http("POST", f"{self.admin}/deployments", {"uri": f"http://127.0.0.1:{self.svc_port}"})
        if st >= 300:
            raise RuntimeError(f"deployment registration failed: {st} {body[:500]!r}")
        C.log(f"restate up: ingress {self.ingress}, admin {self.admin}, service :{self.svc_port} registered")
        # the ingress may need a moment to see the new deployment
        deadline = time.monotonic() + 60
        while True:
            st, body = _http("POST", f"{self.ingress}/Chain/probe/run", C.work_input(0, "probe"))
            if st == 200:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"ingress probe failed: {st} {body[:300]!r}")
            time.sleep(0.2)
        self.pids = C.all_pids([self.server.pid, self.service.pid])

    def groups(self) -> dict[str, list[int]]:
        assert self.server
        assert self.service
        return {"restate-server": [self.server.pid], "service (hypercorn)": [self.service.pid]}

    def stop(self) -> list[str]:
        pids = set(self.pids)
        for p in (self.server, self.service):
            if p is not None:
                pids.update(C.all_pids([p.pid]))
        C.stop_group(self.service, timeout=30)
        C.stop_group(self.server, timeout=70)
        time.sleep(0.5)
        left = C.leftover_processes(pids, [self.run_dir, str(C.RESTATE_BIN), f"127.0.0.1:{self.svc_port}"])
        shutil.rmtree(os.path.join(self.run_dir, "data"), ignore_errors=True)
        return left

    async def query(self, client: Any, sql: str) -> list[dict[str, Any]]:
        async with client.post(f"{self.admin}/query", json={"query": sql}, headers={"accept": "application/json"}) as r:
            r.raise_for_status()
            rows: list[dict[str, Any]] = (await r.json())["rows"]
            return rows


async def _w1(sysm: RestateSystem, quick: bool) -> dict[str, Any]:
    import aiohttp

    m = C.mode(quick)
    conn = aiohttp.TCPConnector(limit=0)  # no client-side cap on connections (attach calls each hold one)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=600)) as client:

        async def call_sync(key: str, inp: dict[str, Any]) -> dict[str, Any]:
            async with client.post(f"{sysm.ingress}/Chain/{key}/run", json=inp) as r:
                r.raise_for_status()
                result: dict[str, Any] = await r.json()
                return result

        # closed-loop warm-up
        for i in range(C.W1_WARMUP):
            inp = C.work_input(i, "warm")
            await call_sync(inp["id"], inp)

        rates: list[float] = []
        sem = asyncio.Semaphore(C.START_CONCURRENCY)
        for rep in range(C.W1_SAT_REPEATS[m]):
            n = C.W1_SAT_N[m]

            async def one(i: int, tag: str) -> None:
                inp = C.work_input(i, tag)
                key = inp["id"]
                # start call: returns once the ingress has accepted the invocation
                async with sem, client.post(f"{sysm.ingress}/Chain/{key}/run/send", json=inp) as r:
                    r.raise_for_status()
                    await r.read()
                async with client.get(f"{sysm.ingress}/restate/workflow/Chain/{key}/attach") as r:
                    r.raise_for_status()
                    out = await r.json()
                if out != C.expected_chain_output(key):
                    raise RuntimeError(f"bad result for {key}: {out}")

            t0 = time.perf_counter()
            await asyncio.gather(*(one(i, f"sat{rep}") for i in range(n)))
            dt = time.perf_counter() - t0
            rates.append(n / dt)
            C.log(f"W1 saturated rep {rep}: {n} runs in {dt:.2f}s = {n / dt:.1f} wf/s")

        for i in range(C.W1_WARMUP):
            inp = C.work_input(i, "warm2")
            await call_sync(inp["id"], inp)
        lats: list[float] = []
        for i in range(C.W1_CLOSED_N[m]):
            inp = C.work_input(i, "cl")
            t0 = time.perf_counter()
            out = await call_sync(inp["id"], inp)
            lats.append(time.perf_counter() - t0)
            if out != C.expected_chain_output(inp["id"]):
                raise RuntimeError(f"bad result {out}")
        met = C.w1_metrics(rates, lats)
        met["saturated_runs_per_repeat"] = C.W1_SAT_N[m]
        met["start_concurrency"] = C.START_CONCURRENCY
        met["client"] = (
            "aiohttp in a separate process: POST /Chain/{key}/run/send (<=64 in flight), then "
            "GET /restate/workflow/Chain/{key}/attach; closed loop: POST /Chain/{key}/run"
        )
        return met


async def _w3(sysm: RestateSystem, quick: bool) -> tuple[dict[str, Any], float]:
    import aiohttp

    n = C.W3_N[C.mode(quick)]
    conn = aiohttp.TCPConnector(limit=C.START_CONCURRENCY + 4)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=600)) as client:
        sem = asyncio.Semaphore(C.START_CONCURRENCY)

        async def one(i: int) -> None:
            inp = C.work_input(i, "sl")
            async with sem, client.post(f"{sysm.ingress}/Sleeper/{inp['id']}/run/send", json=inp) as r:
                r.raise_for_status()
                await r.read()

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        t_sent = time.perf_counter() - t0
        C.log(f"W3: {n} start calls accepted in {t_sent:.2f}s; waiting until all are parked")
        deadline = time.monotonic() + 1800
        while True:
            rows = await sysm.query(client, "SELECT count(*) AS n FROM sys_journal WHERE entry_type = 'Command: Sleep'")
            parked = int(rows[0]["n"])
            if parked >= n:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {parked}/{n} parked")
            await asyncio.sleep(0.25)
        t_parked = time.perf_counter() - t0
        rows = await sysm.query(
            client,
            "SELECT status, count(*) AS n FROM sys_invocation WHERE target_service_name = 'Sleeper' GROUP BY status",
        )
        C.log(f"W3: all {n} parked after {t_parked:.2f}s; invocation states {rows}")
        met = {
            "runs": n,
            "start_s": round(t_parked, 2),
            "start_calls_s": round(t_sent, 2),
            "start_concurrency": C.START_CONCURRENCY,
            "parked_means": (
                "the Sleep command is in the journal of every run (admin SQL sys_journal, polled every 0.25 s)"
            ),
            "states_at_park": rows,
        }
        return met, time.monotonic()


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.peers.restate")
    ap.add_argument("workload", choices=["W1", "W3"])
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    cmd = C.command_line("bench.peers.restate")
    if not C.RESTATE_BIN.exists():
        sys.exit(f"{C.RESTATE_BIN} missing: run python -m bench.peers.setup")
    run_dir = str(C.RUNS / f"restate-{args.workload}-{time.strftime('%Y%m%d-%H%M%S')}")
    versions = {
        "restate-server": subprocess.run(
            [str(C.RESTATE_BIN), "--version"], capture_output=True, text=True, check=False
        ).stdout.strip(),
        "restate-sdk": C.pkg_version("restate-sdk"),
        "hypercorn": C.pkg_version("hypercorn"),
        "aiohttp (client)": C.pkg_version("aiohttp"),
        "python": sys.version.split()[0],
    }
    machine = C.machine_info()
    sysm = RestateSystem(run_dir)
    left: list[str] = []
    try:
        sysm.start()
        if args.workload == "W1":
            metrics = asyncio.run(_w1(sysm, args.quick))
        else:
            metrics, t_parked = asyncio.run(_w3(sysm, args.quick))
            time.sleep(max(0.0, t_parked + C.W3_SETTLE_S - time.monotonic()))
            metrics.update(C.measure_processes(sysm.groups()))
            metrics["measured_after_park_s"] = C.W3_SETTLE_S
            metrics["note"] = (
                "invoker inactivity-timeout default 1m: runs parked less than 1 min earlier still hold "
                "their HTTP/2 stream to the service (state 'running'), later ones are 'suspended'"
            )
    finally:
        left = sysm.stop()
    if left:
        C.log(f"LEFTOVER PROCESSES: {left}")
    C.write_result(
        out,
        "restate",
        args.workload,
        metrics=metrics,
        versions=versions,
        durability=DURABILITY,
        command=cmd,
        extra={"machine": machine, "leftover_processes": left, "logs": run_dir},
    )


if __name__ == "__main__":
    main()
