"""What the numbers were measured on: the machine, the versions, the code."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from bench.procs import ROOT
from streams.broker import KAFKA_VERSION


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """CPU count and model, memory, kernel, and how busy the machine was when the session started."""
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "os": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _package(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _java() -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30, check=False)
        lines = (done.stderr or done.stdout).splitlines()
        return lines[0].strip() if lines else None
    return None


def _git_head() -> str | None:
    """The commit checked out (read from ``.git``; the working tree may hold uncommitted changes)."""
    git = ROOT / ".git"
    with contextlib.suppress(OSError):
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head.removeprefix("ref: ")
        if (git / ref).exists():
            return (git / ref).read_text().strip()
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0]
    return None


def versions() -> dict[str, Any]:
    """Python, Kafka, Java and the client libraries, Steady itself."""
    return {
        "python": sys.version.split()[0],
        "kafka": KAFKA_VERSION,
        "java": _java(),
        "aiokafka": _package("aiokafka"),
        "fastavro": _package("fastavro"),
        "steady": _package("steady"),
        "steady_git_head": _git_head(),
        "psutil": _package("psutil"),
        "matplotlib": _package("matplotlib"),
    }
