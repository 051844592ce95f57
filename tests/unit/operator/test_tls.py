"""The operator's TLS: refused without a certificate, a pair checked, rotations seen."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jobqueue.config import ServerTLSSettings
from jobqueue.devenv.certificates import mint_serving_certificate
from jobqueue.errors import ConfigError
from jobqueue.operator.tls import CertificateFiles, load_pair, server_credentials


def test_without_a_certificate_the_operator_refuses_to_serve() -> None:
    with pytest.raises(ConfigError) as refused:
        server_credentials(ServerTLSSettings())

    message = str(refused.value)
    assert "operator.tls.cert_file" in message
    assert "operator.tls.insecure_plaintext: true" in message


def test_plaintext_only_when_asked_for_by_name() -> None:
    assert server_credentials(ServerTLSSettings(insecure_plaintext=True)) is None


def test_a_key_that_does_not_belong_to_the_certificate_is_refused(tmp_path: Path) -> None:
    first = mint_serving_certificate(tmp_path / "first")
    second = mint_serving_certificate(tmp_path / "second")

    with pytest.raises(ConfigError, match="does not belong"):
        load_pair(first.cert_path, second.key_path)
    with pytest.raises(ConfigError, match="not a PEM certificate"):
        load_pair(first.key_path, first.key_path)


def test_the_fetcher_answers_a_new_configuration_only_after_a_complete_rotation(
    tmp_path: Path,
) -> None:
    served = mint_serving_certificate(tmp_path / "served")
    files = CertificateFiles(served.cert_path, served.key_path)
    before = files.current.fingerprint
    assert files.fetch() is None

    renewed = mint_serving_certificate(tmp_path / "renewed")
    os.replace(renewed.cert_path, served.cert_path)
    assert files.fetch() is None  # the key is still the old one
    os.replace(renewed.key_path, served.key_path)

    assert files.fetch() is not None
    assert files.current.fingerprint != before
    assert files.fetch() is None
