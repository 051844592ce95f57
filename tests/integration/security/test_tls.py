"""TLS on the gRPC API: plaintext refused, the server verified, certificates rotated live."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from jobqueue import errors
from jobqueue.client import AsyncClient
from jobqueue.devenv.certificates import ServingCertificate, mint_serving_certificate
from tests.integration.security.cluster import Cluster
from tests.integration.security.conftest import QUEUE_A, SecureOperator

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def status_reader(cluster: Cluster) -> str:
    account = cluster.service_account("reader")
    cluster.grant(account, ["status"], [QUEUE_A])
    return cluster.token(account)


async def answers(operator: SecureOperator, token: str, ca_file: Path) -> bool:
    """Whether a new connection that trusts only ``ca_file`` gets an answer."""
    async with operator.client(token, ca_file=ca_file) as client:
        try:
            await client.queue_stats(QUEUE_A)
        except errors.UnavailableError:
            return False
    return True


async def test_plaintext_is_refused_when_tls_is_configured(
    operator: SecureOperator, cluster: Cluster
) -> None:
    token = status_reader(cluster)

    async with AsyncClient(operator.address, plaintext=True, token=token, timeout_s=5) as client:
        with pytest.raises(errors.UnavailableError):
            await client.queue_stats(QUEUE_A)
    assert await answers(operator, token, operator.ca_file)


async def test_a_client_verifies_the_server_and_refuses_an_unknown_ca(
    operator: SecureOperator, cluster: Cluster, tmp_path: Path
) -> None:
    stranger = mint_serving_certificate(tmp_path / "stranger", authority="stranger-ca")

    assert not await answers(operator, status_reader(cluster), stranger.ca_path)


async def test_a_rotated_certificate_reaches_new_connections_without_a_restart(
    operator: SecureOperator,
    cluster: Cluster,
    certificate: ServingCertificate,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    token = status_reader(cluster)
    first_ca = tmp_path / "first-ca.crt"
    first_ca.write_bytes(certificate.ca_path.read_bytes())
    async with operator.client(token, ca_file=first_ca) as before:
        await before.queue_stats(QUEUE_A)  # a connection made before the rotation
        renewed = mint_serving_certificate(tmp_path / "renewed", authority="second-ca")

        # Caught between the two files: the new certificate, the old key. The old pair
        # goes on serving rather than a pair that would fail every handshake.
        os.replace(renewed.cert_path, certificate.cert_path)
        with caplog.at_level(logging.WARNING, logger="jobqueue.operator.tls"):
            assert await answers(operator, token, first_ca)
        assert "does not belong to the certificate" in caplog.text

        os.replace(renewed.key_path, certificate.key_path)
        assert await answers(operator, token, renewed.ca_path)
        assert not await answers(operator, token, first_ca)
        # TLS cannot change a connection's certificate: the one made before carries on.
        await before.queue_stats(QUEUE_A)
