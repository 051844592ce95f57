"""jqctl's token from a kubeconfig: a token user passes it on, a certificate user has none."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from jobqueue.credentials import kubeconfig_token
from jobqueue.errors import ConfigError


def write_kubeconfig(path: Path, users: dict[str, dict[str, str]], current: str) -> Path:
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443"}}],
        "users": [{"name": name, "user": user} for name, user in users.items()],
        "contexts": [{"name": name, "context": {"cluster": "c", "user": name}} for name in users],
        "current-context": current,
    }
    path.write_text(yaml.safe_dump(document))
    return path


def test_the_current_contexts_token_and_token_file_are_read(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("from-a-file")
    kubeconfig = write_kubeconfig(
        tmp_path / "config",
        {
            "alice": {"token": "alices-token"},
            "bob": {"tokenFile": str(tmp_path / "token")},
        },
        current="alice",
    )

    assert kubeconfig_token(kubeconfig) == "alices-token"
    assert kubeconfig_token(kubeconfig, context="bob") == "from-a-file"


def test_a_user_without_a_token_has_none_to_pass_on(tmp_path: Path) -> None:
    kubeconfig = write_kubeconfig(tmp_path / "config", {"anonymous": {}}, current="anonymous")

    assert kubeconfig_token(kubeconfig) is None


def test_an_unknown_context_is_a_clear_error(tmp_path: Path) -> None:
    kubeconfig = write_kubeconfig(tmp_path / "config", {"alice": {"token": "t"}}, current="alice")

    with pytest.raises(ConfigError, match="kubeconfig"):
        kubeconfig_token(kubeconfig, context="nowhere")
