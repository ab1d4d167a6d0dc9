"""Restate service for the peer benchmarks (served by hypercorn as `bench.peers.restate_service:app`).

W1 `Chain`: a workflow running 3 sequential `ctx.run` steps, each a no-op returning a ~50-byte dict.
W3 `Sleeper`: a workflow running one step, then `ctx.sleep(1 hour)`.
"""

from datetime import timedelta
from typing import Any

import restate

chain = restate.Workflow("Chain")


def _step(i: int, ref: str) -> dict[str, Any]:
    # no-op step: ~50 bytes as JSON
    return {"step": i, "ok": True, "ref": ref[:12], "pad": "x" * 8}


@chain.main()  # type: ignore[untyped-decorator]  # peer package, not in Steady's venv
async def run(ctx: restate.WorkflowContext, req: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    ref = str(req.get("id", ""))
    for i in (1, 2, 3):
        out = await ctx.run_typed(f"step{i}", _step, restate.RunOptions(), i, ref)
    return out


sleeper = restate.Workflow("Sleeper")


@sleeper.main(name="run")  # type: ignore[untyped-decorator]  # peer package, not in Steady's venv
async def sleep_run(ctx: restate.WorkflowContext, req: dict[str, Any]) -> dict[str, Any]:
    ref = str(req.get("id", ""))
    out: dict[str, Any] = await ctx.run_typed("step1", _step, restate.RunOptions(), 1, ref)
    await ctx.sleep(timedelta(hours=1))
    return out


app = restate.app(services=[chain, sleeper])
