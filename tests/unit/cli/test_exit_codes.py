"""The exit codes scripts rely on, derived from the project's error hierarchy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from jobqueue import errors
from jobqueue.cli.command import exit_code_for


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.JobQueueError("internal"), 1),
        (errors.TemporaryError("busy"), 1),
        (errors.NotFoundError("no job"), 3),
        (errors.InvalidInputError("bad"), 4),
        (errors.LimitExceededError("too big"), 4),
        (errors.ConflictError("already succeeded"), 4),
        (errors.UnavailableError("down"), 5),
        (errors.UnauthenticatedError("no token"), 6),
        (errors.PermissionDeniedError("not yours"), 6),
    ],
)
def test_each_error_maps_to_its_documented_exit_code(
    error: errors.JobQueueError, code: int
) -> None:
    assert exit_code_for(error) == code


def test_the_installed_console_script_lists_every_command_group_and_the_exit_codes() -> None:
    script = Path(sys.executable).parent / "jqctl"

    finished = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, timeout=60, check=False
    )

    assert finished.returncode == 0, finished.stderr
    for group in ("job", "queue", "worker", "system", "version"):
        assert f"\n    {group} " in finished.stdout
    assert "exit codes:" in finished.stdout
    assert "3  not found" in finished.stdout
