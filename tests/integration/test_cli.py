"""The command line against a real broker: start and wait, status, history, signal, check, dead letters."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest

from streams.settings import Settings
from streams.worker import Worker

pytestmark = pytest.mark.integration


async def _steady(settings: Settings, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streams.cli", *args, "--bootstrap", settings.bootstrap, "--prefix", settings.prefix,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode()


async def test_the_command_line_starts_follows_and_checks_runs(worker: Worker, settings: Settings) -> None:
    code, out = await _steady(settings, "start", "chain", "--input", '{"name": "cli"}', "--id", "cli-1", "--wait", "60")
    assert 0 == code, out
    assert {"text": "HELLO CLI", "chars": 9} == json.loads(out.splitlines()[-1])

    code, out = await _steady(settings, "status", "cli-1")
    assert 0 == code, out
    assert "status    completed" in out

    code, out = await _steady(settings, "history", "cli-1")
    assert 0 == code, out
    assert ["WorkflowStarted", "StepScheduled", "StepCompleted"] == [line.split()[2] for line in out.splitlines()[1:4]]

    code, out = await _steady(settings, "start", "approval", "--input", "60", "--id", "cli-2")
    assert 0 == code, out
    code, out = await _steady(settings, "signal", "cli-2", "approval", "--payload", '{"approver": "cli", "ok": true}')
    assert 0 == code, out

    code, out = await _steady(settings, "signal", "nobody", "approval")  # a run that does not exist
    assert 0 == code, out
    await asyncio.sleep(2)
    code, out = await _steady(settings, "dead-letters")
    assert 0 == code, out
    assert "no run default/nobody exists for SendEvent" in out

    code, out = await _steady(settings, "check")
    assert 0 == code, out
    assert "no differences" in out


async def test_status_of_an_unknown_run_is_an_error(worker: Worker, settings: Settings) -> None:
    code, out = await _steady(settings, "status", "never-started")

    assert 1 == code
    assert "no run default/never-started" in out
