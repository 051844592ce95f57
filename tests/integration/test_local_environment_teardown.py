"""Nothing the local environment starts outlives it: not after a clean exit, not after
SIGTERM, not even after SIGKILL of the process that owns it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobqueue.devenv.environment import sweep_stale_directories

pytestmark = pytest.mark.integration

# Starts PostgreSQL (which forks backends) and Redis, reports their leaders' process ids
# and the directory on one JSON line, then waits to be signalled.
_OWNER_PROGRAM = """
import json, signal, sys
import psycopg
from jobqueue.devenv import Environment
environment = Environment(["postgres", "redis"])
environment.__enter__()
connection = psycopg.connect(environment.postgres.dsn)  # a backend process, too
leaders = [environment.postgres.process.pid, environment.redis.process.pid]
print(json.dumps({"leaders": leaders, "root": str(environment.root)}), flush=True)
try:
    signal.pause()
finally:
    environment.stop()
"""


def _live_processes() -> dict[int, int]:
    """Every live (not zombie) process id, mapped to its parent's."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The fields after the parenthesised command start with: state, ppid.
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if state != "Z":
            parents[int(entry.name)] = int(ppid)
    return parents


def _with_children(leaders: list[int]) -> set[int]:
    # PostgreSQL's backends leave the postmaster's process group (setsid), so they are
    # found as its children rather than as members of its group.
    processes = _live_processes()
    return set(leaders) | {pid for pid, parent in processes.items() if parent in leaders}


def _wait_until_gone(pids: set[int], timeout_s: float = 30) -> set[int]:
    deadline = time.monotonic() + timeout_s
    while True:
        alive = pids & _live_processes().keys()
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def _start_owner() -> tuple[subprocess.Popen[str], set[int], Path]:
    owner = subprocess.Popen(
        [sys.executable, "-c", _OWNER_PROGRAM],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert owner.stdout is not None
    report = json.loads(owner.stdout.readline())
    servers, root = _with_children(report["leaders"]), Path(report["root"])
    assert set(report["leaders"]) <= _live_processes().keys(), "servers should be running"
    assert len(servers) > 3, "PostgreSQL should have forked its helpers and a backend"
    return owner, servers, root


def test_sigterm_stops_every_server_and_removes_the_directory() -> None:
    owner, servers, root = _start_owner()

    owner.send_signal(signal.SIGTERM)
    owner.wait(timeout=60)

    assert _wait_until_gone(servers) == set()
    assert not root.exists()


def test_sigkill_of_the_owner_still_takes_every_server_down() -> None:
    owner, servers, root = _start_owner()

    os.kill(owner.pid, signal.SIGKILL)
    owner.wait(timeout=10)

    assert _wait_until_gone(servers) == set()
    # The directory of a killed run is swept by the next environment that starts.
    assert root in sweep_stale_directories(root.parent)
    assert not root.exists()
