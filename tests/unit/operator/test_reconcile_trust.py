"""How the operator tells a pool's workers to trust it, from its own TLS settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kopf
import pytest

from jobqueue.config import load_settings
from jobqueue.operator.reconcile import _operator_trust

BODY: Any = {"metadata": {"name": "mail", "namespace": "team-a", "uid": "1"}}


def settings(**environ: str) -> Any:
    return load_settings(None, environ=environ)


def test_a_named_config_map_wins_and_the_operator_writes_none(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("CA")
    trust, manifest = _operator_trust(
        settings(JQ_OPERATOR_WORKER_CA_CONFIGMAP="jobqueue-ca", JQ_OPERATOR_TLS_CA_FILE=str(ca)),
        BODY,
    )
    assert (trust.ca_config_map, trust.plaintext, manifest) == ("jobqueue-ca", False, None)


def test_a_ca_file_is_copied_beside_the_pool(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    trust, manifest = _operator_trust(settings(JQ_OPERATOR_TLS_CA_FILE=str(ca)), BODY)
    assert trust.ca_config_map == "mail-operator-ca"
    assert manifest is not None
    assert manifest["data"]["ca.crt"] == "-----BEGIN CERTIFICATE-----\n"


def test_plaintext_and_system_roots() -> None:
    plain, _ = _operator_trust(settings(JQ_OPERATOR_TLS_INSECURE_PLAINTEXT="true"), BODY)
    roots, manifest = _operator_trust(settings(), BODY)
    assert plain.plaintext
    assert (roots.plaintext, roots.ca_config_map, manifest) == (False, None, None)


def test_an_unreadable_ca_file_is_a_temporary_error(tmp_path: Path) -> None:
    with pytest.raises(kopf.TemporaryError, match=r"operator\.tls\.ca_file"):
        _operator_trust(settings(JQ_OPERATOR_TLS_CA_FILE=str(tmp_path / "missing")), BODY)
