from __future__ import annotations

import pytest

from jobqueue.devenv import prerequisites
from jobqueue.errors import PrerequisiteMissingError


def test_missing_program_names_the_package_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")

    with pytest.raises(PrerequisiteMissingError) as missing:
        prerequisites.program("redis-server", package="redis-server")

    assert "apt-get install redis-server" in str(missing.value)
    assert "make bootstrap" in str(missing.value)


def test_environment_refuses_unknown_components() -> None:
    from jobqueue.devenv import Environment

    with pytest.raises(ValueError, match="unknown components"):
        Environment(["postgres", "mysql"])  # type: ignore[list-item]
