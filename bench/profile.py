"""Profile the worker under load: the worker runs in a subprocess under cProfile.

    .venv/bin/python -m bench.profile [RUNS] [WORKLOAD]   # starts its own broker; prints the top functions

WORKLOAD is ``W1`` (default: saturated chains of three steps) or ``W4`` (runs sleeping a random 1-10 s, started
as fast as the client can: the start burst, then the firings).

The profile goes to ``bench/.work/worker.prof`` (open it with ``python -m pstats``).
"""

from __future__ import annotations

import asyncio
import io
import os
import pstats
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from bench.apps import chain, chain_input, timer
from streams.broker import BrokerConfig, LocalBroker
from streams.client import Client

WORK = Path(__file__).resolve().parent / ".work"


async def _drive(bootstrap: str, runs: int, workload: str) -> float:
    prefix = f"prof{uuid.uuid4().hex[:6]}."
    async with Client(bootstrap, prefix=prefix):
        pass  # creates the topics
    log = WORK / "profile-worker.log"
    worker = subprocess.Popen(  # noqa: ASYNC220 - started once, before any load
        [sys.executable, "-m", "cProfile", "-o", str(WORK / "worker.prof"), "-m", "streams.cli", "worker",
         "--app", "bench.apps:app", "--bootstrap", bootstrap, "--prefix", prefix, "--worker-id", "profile",
         "--state-dir", str(WORK / "profile-state")],
        stdout=log.open("w"), stderr=subprocess.STDOUT, env={**os.environ},
    )  # fmt: skip
    try:
        while b"assigned partitions" not in log.read_bytes():  # noqa: ASYNC110 - another process writes the log
            await asyncio.sleep(0.2)
        async with Client(bootstrap, prefix=prefix) as client:
            slots = asyncio.Semaphore(200)

            rng = random.Random(4)

            async def one(i: int) -> object:
                async with slots:
                    if workload == "W4":
                        return await client.start(timer, rng.randint(1_000, 10_000), id=f"t{i}")
                    return await client.start(chain, chain_input(i), id=f"r{i}")

            began = time.monotonic()
            handles = await asyncio.gather(*(one(i) for i in range(runs)))
            await asyncio.gather(*(h.result(timeout=600) for h in handles))  # type: ignore[attr-defined]
            return time.monotonic() - began
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 1500
    workload = sys.argv[2].upper() if len(sys.argv) > 2 else "W1"
    if workload not in ("W1", "W4"):
        raise SystemExit(f"unknown workload {workload!r}: W1 or W4")
    WORK.mkdir(exist_ok=True)
    broker = LocalBroker(BrokerConfig(home=WORK / "profile-broker"))
    broker.start(embedded=True)
    try:
        seconds = asyncio.run(_drive(broker.bootstrap, runs, workload))
    finally:
        broker.stop()
    out = io.StringIO()
    stats = pstats.Stats(str(WORK / "worker.prof"), stream=out)
    stats.sort_stats("tottime").print_stats(25)
    print(f"{runs} {workload} runs in {seconds:.1f} s ({runs / seconds:.0f} workflows/s under cProfile)")
    print(out.getvalue())


if __name__ == "__main__":
    main()
