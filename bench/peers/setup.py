"""Install the peer systems idempotently: `python -m bench.peers.setup` (any python 3.10+).

1. bench/.work/venv-peers: `python3 -m venv`, then `pip install -r bench/peers/requirements.txt`
   (skipped when every pin is already installed there).
2. Restate server: `npm install --prefix bench/.work/restate @restatedev/restate-server@<RESTATE_SERVER_VERSION>`
   (skipped when that version is already there).
3. PostgreSQL 15 from Debian (`apt-get update`, `apt-get install -y postgresql`), skipped when
   /usr/lib/postgresql/15/bin/initdb exists. No cluster is created here: bench.peers.dbos makes a private one
   per run.
Nothing outside bench/.work is written except by apt.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "bench" / ".work"
VENV = WORK / "venv-peers"
REQS = Path(__file__).resolve().parent / "requirements.txt"
RESTATE_DIR = WORK / "restate"
RESTATE_SERVER_VERSION = "1.7.12"
PG_INITDB = Path("/usr/lib/postgresql/15/bin/initdb")


def run(cmd: list[str | Path], **kw: Any) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, **kw)


def pins() -> dict[str, str]:
    out: dict[str, str] = {}
    for raw in REQS.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if "==" in line:
            name, ver = line.split("==", 1)
            out[name.split("[", 1)[0].strip().lower()] = ver.strip()
    return out


def venv() -> None:
    py = VENV / "bin" / "python"
    if not py.exists():
        WORK.mkdir(parents=True, exist_ok=True)
        run([sys.executable, "-m", "venv", VENV])
    code = (
        "import json,sys\nfrom importlib import metadata as m\nout={}\n"
        "for n in json.loads(sys.argv[1]):\n"
        "    try: out[n]=m.version(n)\n    except m.PackageNotFoundError: out[n]=None\n"
        "print(json.dumps(out))"
    )
    want = pins()
    have = json.loads(
        subprocess.run([py, "-c", code, json.dumps(list(want))], check=True, capture_output=True, text=True).stdout
    )
    if all((have.get(n) or "").lower() == v.lower() for n, v in want.items()):
        print(f"venv-peers: all {len(want)} pins already installed")
        return
    run([py, "-m", "pip", "install", "-q", "-r", REQS])


def restate() -> None:
    pkg = RESTATE_DIR / "node_modules" / "@restatedev" / "restate-server" / "package.json"
    if pkg.exists() and json.loads(pkg.read_text()).get("version") == RESTATE_SERVER_VERSION:
        print(f"restate-server {RESTATE_SERVER_VERSION}: already installed")
        return
    if not shutil.which("npm"):
        sys.exit("npm not found: install Node.js (Debian: apt-get install -y nodejs npm)")
    RESTATE_DIR.mkdir(parents=True, exist_ok=True)
    run(
        [
            "npm",
            "install",
            "--no-fund",
            "--no-audit",
            "--prefix",
            RESTATE_DIR,
            f"@restatedev/restate-server@{RESTATE_SERVER_VERSION}",
        ]
    )


def postgres() -> None:
    if PG_INITDB.exists():
        print(f"PostgreSQL 15: {PG_INITDB} present")
        return
    if os.geteuid() != 0:
        sys.exit("PostgreSQL 15 missing and not root: run apt-get update && apt-get install -y postgresql")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update"], env=env)
    run(["apt-get", "install", "-y", "postgresql"], env=env)
    if not PG_INITDB.exists():
        sys.exit(f"apt installed PostgreSQL but {PG_INITDB} is missing (not version 15?)")


def main() -> None:
    venv()
    restate()
    postgres()
    print("peers ready")


if __name__ == "__main__":
    main()
