from __future__ import annotations

from collections.abc import Callable

import pytest

from jobqueue import __version__
from jobqueue.cli.main import main as jqctl
from jobqueue.operator.main import main as operator_main
from jobqueue.worker.main import main as worker_main


def test_jqctl_version_prints_the_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert jqctl(["version"]) == 0
    assert capsys.readouterr().out.strip() == f"jqctl {__version__}"


def test_jqctl_refuses_an_unknown_command_with_exit_code_2() -> None:
    with pytest.raises(SystemExit) as exited:
        jqctl(["frobnicate"])
    assert exited.value.code == 2


@pytest.mark.parametrize("entry_point", [operator_main, worker_main])
def test_process_commands_print_their_help(
    entry_point: Callable[[list[str]], int], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        entry_point(["--help"])
    assert exited.value.code == 0
    assert "usage:" in capsys.readouterr().out
