"""A test's worker subprocess dies with the test process (tests/support.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from streams.broker import _pid_alive
from tests.support import _DIE_WITH_PARENT


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_process_started_through_the_guard_is_killed_when_its_parent_is() -> None:
    # The parent starts a long sleep through the guard, prints its pid, then waits; the test kills the parent.
    parent_code = (
        "import os, subprocess, sys, time\n"
        f"guard = {_DIE_WITH_PARENT!r}\n"
        "command = [sys.executable, '-c', guard, str(os.getpid()), '-c', 'import time; time.sleep(60)']\n"
        "child = subprocess.Popen(command)\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        deadline = time.monotonic() + 10
        while _command_of(child) != "sleep" and time.monotonic() < deadline:
            time.sleep(0.02)  # until the guard has become the sleeping process
        assert _command_of(child) == "sleep"
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _pid_alive(child) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _pid_alive(child)
    finally:
        parent.kill()
        parent.wait(timeout=10)


def _command_of(pid: int) -> str:
    """``sleep`` once ``pid`` runs the exec'd command, ``guard`` before."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except FileNotFoundError:
        return "gone"
    return "sleep" if len(args) > 2 and args[2] == b"import time; time.sleep(60)" else "guard"
