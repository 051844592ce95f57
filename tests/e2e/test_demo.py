"""The README's main command, run as a person would: ``python -m jobqueue.devenv demo``.

It starts its own environment, operator and workers, so this is the slowest test; it
proves the tour still drains its queue and leaves no process behind.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def _processes_mentioning(*needles: str) -> list[str]:
    listing = subprocess.run(["ps", "-eo", "args="], capture_output=True, text=True, check=True)
    return [line for line in listing.stdout.splitlines() if any(n in line for n in needles)]


def test_demo_drains_its_queue_and_cleans_up(tmp_path: Path) -> None:
    demo = subprocess.Popen(
        [sys.executable, "-m", "jobqueue.devenv", "demo", "--env-file", str(tmp_path / "env")],
        cwd=REPOSITORY,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output, _ = demo.communicate(timeout=280)

    assert demo.returncode == 0, output
    assert "Applied JobQueue emails and QueueWorkerPool emails-workers" in output
    assert "Started 2 workers" in output
    assert "The queue has drained." in output
    # The last table: nothing pending, running or waiting for a retry; all good jobs done.
    last = [
        line for line in output.splitlines() if line.startswith("jobqueue.jobqueue.dev/emails")
    ][-1]
    _, pending, running, failed, dead = last.split()[:5]
    assert (pending, running, failed) == ("0", "0", "0")
    assert dead == "6"  # 4 bouncing e-mails and 2 failing commands, after 3 attempts each
    assert not (tmp_path / "env").exists()
    # Every server runs from the environment's directory; the workers carry their ids.
    (root,) = re.findall(r'Local environment ready in [0-9.]+ s at (/[^\s"]+)', output)
    assert not Path(root).exists()
    assert _processes_mentioning(root, "--worker-id emails-workers-") == []
