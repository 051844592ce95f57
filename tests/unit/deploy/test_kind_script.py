"""``scripts/kind-e2e.sh`` refuses to start, naming every missing tool, before it touches
anything. The tools are made absent or broken with a PATH of the test's own: a ``docker``
that cannot reach an engine is a two-line script, which is all the check looks at.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.deploy_helpers import REPOSITORY

SCRIPT = REPOSITORY / "scripts" / "kind-e2e.sh"
SCRIPT_TIMEOUT_S = 30


def _path_with(tmp_path: Path, *programs: str) -> Path:
    """A bin directory holding only the named programs (links to the real ones)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for program in programs:
        found = shutil.which(program)
        assert found, program
        (bin_dir / program).symlink_to(found)
    return bin_dir


def _run(bin_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [shutil.which("bash") or "bash", str(SCRIPT)],
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_S,
        env={"HOME": os.environ.get("HOME", "/root"), "PATH": str(bin_dir)},
        check=False,
    )


def test_script_names_every_missing_tool(tmp_path: Path) -> None:
    result = _run(_path_with(tmp_path, "dirname", "sed"))

    assert result.returncode == 1
    assert "make kind-e2e cannot run here" in result.stderr
    assert "docker is not installed" in result.stderr
    assert "go is not installed" in result.stderr
    assert "openssl is not installed" in result.stderr


def test_script_says_when_the_docker_engine_is_down(tmp_path: Path) -> None:
    bin_dir = _path_with(tmp_path, "dirname", "sed", "go")
    docker = bin_dir / "docker"
    docker.write_text("#!/bin/sh\necho 'Cannot connect to the Docker daemon' >&2\nexit 1\n")
    docker.chmod(0o755)

    result = _run(bin_dir)

    assert result.returncode == 1
    assert "docker cannot reach an engine" in result.stderr
    assert "go is not installed" not in result.stderr
    # Nothing was started: the cluster step never ran.
    assert "creating the kind cluster" not in result.stderr
