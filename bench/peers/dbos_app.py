"""DBOS application process for the peer benchmarks (spawned by bench.peers.dbos; not meant to be run by hand).

`python -m bench.peers.dbos_app <W1|W3> --db-url URL [--quick]` with the peers venv's python.
DBOS is a library, so the workflows run in this process and the client is this process too:
workflows are started with DBOS.start_workflow_async (<= 64 start calls in flight) and their results
awaited through the returned handles. Async workflows and steps throughout (DBOS's asyncio API).
Reports progress as JSON lines on stdout; for W3 it stays up (sleepers parked) until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

from bench.peers import _common as C


@event.listens_for(sa.engine.Engine, "connect")  # type: ignore[untyped-decorator]  # peer package, not in Steady's venv
def _sqlite_full_sync(dbapi_conn: Any, _rec: Any) -> None:
    # SQLite: make synchronous=FULL explicit (also SQLite's default with DBOS's rollback-journal mode).
    if type(dbapi_conn).__module__.startswith("sqlite3"):
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA synchronous=FULL")
        cur.close()


from dbos import DBOS  # noqa: E402


def emit(**kw: Any) -> None:
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()


def _step_out(i: int, ref: str) -> dict[str, Any]:
    return {"step": i, "ok": True, "ref": ref[:12], "pad": "x" * 8}


@DBOS.step()  # type: ignore[untyped-decorator]  # peer package, not in Steady's venv
async def noop_step(i: int, ref: str) -> dict[str, Any]:
    return _step_out(i, ref)


@DBOS.workflow()  # type: ignore[untyped-decorator]  # peer package, not in Steady's venv
async def chain(req: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i in (1, 2, 3):
        out = await noop_step(i, str(req["id"]))
    return out


@DBOS.workflow()  # type: ignore[untyped-decorator]  # peer package, not in Steady's venv
async def sleeper(req: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = await noop_step(1, str(req["id"]))
    await DBOS.sleep_async(3600)
    return out


async def w1(quick: bool) -> dict[str, Any]:
    m = C.mode(quick)

    async def call(inp: dict[str, Any]) -> dict[str, Any]:
        h = await DBOS.start_workflow_async(chain, inp)
        result: dict[str, Any] = await h.get_result()
        return result

    for i in range(C.W1_WARMUP):
        await call(C.work_input(i, "warm"))

    rates: list[float] = []
    sem = asyncio.Semaphore(C.START_CONCURRENCY)
    for rep in range(C.W1_SAT_REPEATS[m]):
        n = C.W1_SAT_N[m]

        async def one(i: int, tag: str) -> None:
            inp = C.work_input(i, tag)
            async with sem:
                h = await DBOS.start_workflow_async(chain, inp)
            out = await h.get_result()
            if out != C.expected_chain_output(inp["id"]):
                raise RuntimeError(f"bad result {out}")

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i, f"sat{rep}") for i in range(n)))
        dt = time.perf_counter() - t0
        rates.append(n / dt)
        C.log(f"W1 saturated rep {rep}: {n} runs in {dt:.2f}s = {n / dt:.1f} wf/s")

    for i in range(C.W1_WARMUP):
        await call(C.work_input(i, "warm2"))
    lats: list[float] = []
    for i in range(C.W1_CLOSED_N[m]):
        inp = C.work_input(i, "cl")
        t0 = time.perf_counter()
        out = await call(inp)
        lats.append(time.perf_counter() - t0)
        if out != C.expected_chain_output(inp["id"]):
            raise RuntimeError(f"bad result {out}")
    met = C.w1_metrics(rates, lats)
    met["saturated_runs_per_repeat"] = C.W1_SAT_N[m]
    met["start_concurrency"] = C.START_CONCURRENCY
    met["client"] = (
        "in-process (DBOS is a library): DBOS.start_workflow_async (<=64 in flight), "
        "then handle.get_result(); async workflow and steps"
    )
    return met


def _count_parked(url: str) -> int:
    # DBOS.sleep_async checkpoints a 'DBOS.sleep' row in operation_outputs before it starts waiting.
    if url.startswith("sqlite"):
        import sqlite3

        con = sqlite3.connect(url.split("sqlite:///", 1)[1], timeout=30)
        try:
            parked: int = con.execute(
                "SELECT count(*) FROM operation_outputs WHERE function_name='DBOS.sleep'"
            ).fetchone()[0]
            return parked
        finally:
            con.close()
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as con:
        count: int = con.execute(
            "SELECT count(*) FROM dbos.operation_outputs WHERE function_name='DBOS.sleep'"
        ).fetchone()[0]
        return count


async def w3(quick: bool, url: str) -> None:
    n = C.W3_N[C.mode(quick)]
    sem = asyncio.Semaphore(C.START_CONCURRENCY)
    handles: list[Any] = []

    async def one(i: int) -> None:
        async with sem:
            handles.append(await DBOS.start_workflow_async(sleeper, C.work_input(i, "sl")))

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    t_sent = time.perf_counter() - t0
    C.log(f"W3: {n} start calls returned in {t_sent:.2f}s; waiting until all are parked")
    deadline = time.monotonic() + 3600
    while True:
        parked = await asyncio.to_thread(_count_parked, url)
        if parked >= n:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {parked}/{n} parked")
        await asyncio.sleep(0.25)
    t_parked = time.perf_counter() - t0
    emit(event="parked", runs=n, start_s=round(t_parked, 2), start_calls_s=round(t_sent, 2))
    # stay up with the sleepers parked until the parent has measured; SIGTERM ends the process at once
    # (the pending runs stay in the database, which the parent deletes)
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, lambda: os._exit(0))
    await asyncio.Event().wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("workload", choices=["W1", "W3"])
    ap.add_argument("--db-url", required=True)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    DBOS(config={"name": "bench_peers", "system_database_url": args.db_url, "log_level": "WARNING"})
    DBOS.launch()
    info: dict[str, Any] = {}
    if args.db_url.startswith("sqlite"):
        import sqlite3

        con = sqlite3.connect(args.db_url.split("sqlite:///", 1)[1])
        info["sqlite_journal_mode"] = con.execute("PRAGMA journal_mode").fetchone()[0]
        con.close()
        eng = sa.create_engine(args.db_url)  # same connect hook as DBOS's engine
        with eng.connect() as c:
            info["sqlite_synchronous"] = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}[
                c.exec_driver_sql("PRAGMA synchronous").scalar()
            ]
        eng.dispose()
    emit(event="launched", pid=os.getpid(), **info)
    if args.workload == "W1":
        met = asyncio.run(w1(args.quick))
        emit(event="result", metrics=met)
    else:
        asyncio.run(w3(args.quick, args.db_url))
    # W3 leaves 1-hour sleepers pending in the database (deleted by the parent); exit without waiting.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
