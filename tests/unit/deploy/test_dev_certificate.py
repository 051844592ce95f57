"""``scripts/dev-certificate.sh``, the kind path's certificate without cert-manager.

The script runs for real (openssl is a prerequisite of the kind path, and of this machine),
and its output is judged by the code that will use it: the operator's own loader, and a
real TLS handshake between a gRPC server serving the pair and a client that trusts only
the script's ``ca.crt`` and dials the operator's Service name.
"""

from __future__ import annotations

import ipaddress
import queue
import shutil
import subprocess
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from jobqueue.config import ServerTLSSettings
from jobqueue.operator.tls import load_pair, server_credentials
from tests.deploy_helpers import REPOSITORY

SCRIPT = REPOSITORY / "scripts" / "dev-certificate.sh"
SERVICE = "jobqueue.jobqueue-system.svc"
SCRIPT_TIMEOUT_S = 30
HANDSHAKE_TIMEOUT_S = 5


def _mint(directory: Path, *names: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [shutil.which("bash") or "bash", str(SCRIPT), str(directory), *names],
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_S,
        check=False,
    )


@pytest.fixture(scope="module")
def minted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("dev-certificate")
    result = _mint(directory, SERVICE, "localhost", "127.0.0.1")
    assert result.returncode == 0, result.stderr
    return directory


def test_files_have_cert_managers_names_and_a_private_key(minted: Path) -> None:
    assert sorted(path.name for path in minted.iterdir()) == ["ca.crt", "tls.crt", "tls.key"]
    assert (minted / "tls.key").stat().st_mode & 0o077 == 0
    # The operator loads the pair as it would from the mounted Secret.
    pair = load_pair(minted / "tls.crt", minted / "tls.key")
    assert pair.fingerprint


def test_certificate_is_a_server_certificate_for_the_names_given(minted: Path) -> None:
    ca = x509.load_pem_x509_certificate((minted / "ca.crt").read_bytes())
    leaf = x509.load_pem_x509_certificate((minted / "tls.crt").read_bytes())

    leaf.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.SERVER_AUTH]
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [SERVICE, "localhost"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]


@pytest.fixture
def serving(minted: Path) -> Iterator[int]:
    """A gRPC server with no services, serving the minted pair as the operator does."""
    settings = ServerTLSSettings(
        cert_file=str(minted / "tls.crt"), key_file=str(minted / "tls.key")
    )
    credentials = server_credentials(settings)
    assert credentials is not None
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    yield port
    # Waited for, so no server thread outlives the test (later tests fork subprocesses).
    server.stop(grace=None).wait()


def _handshake(port: int, ca_file: Path, name: str) -> bool:
    """Whether a client trusting ``ca_file`` and dialling ``name`` completes the handshake.

    The channel's first verdict decides: READY, or TRANSIENT_FAILURE for a refused
    certificate (gRPC would retry it, to the same end).
    """
    credentials = grpc.ssl_channel_credentials(root_certificates=ca_file.read_bytes())
    options = [("grpc.ssl_target_name_override", name)]
    verdicts: queue.Queue[grpc.ChannelConnectivity] = queue.Queue()
    final = (grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.TRANSIENT_FAILURE)

    def seen(state: grpc.ChannelConnectivity) -> None:
        if state in final:
            verdicts.put(state)

    with grpc.secure_channel(f"127.0.0.1:{port}", credentials, options) as channel:
        channel.subscribe(seen, try_to_connect=True)
        verdict = verdicts.get(timeout=HANDSHAKE_TIMEOUT_S)
        channel.unsubscribe(seen)
    return verdict is grpc.ChannelConnectivity.READY


def test_client_trusting_ca_crt_reaches_the_service_name(serving: int, minted: Path) -> None:
    assert _handshake(serving, minted / "ca.crt", SERVICE)


def test_each_run_mints_a_new_ca(serving: int, tmp_path: Path) -> None:
    result = _mint(tmp_path, SERVICE)

    assert result.returncode == 0, result.stderr
    # A client given the new CA does not trust the certificate of the old one.
    assert not _handshake(serving, tmp_path / "ca.crt", SERVICE)


def test_script_wants_a_directory_and_a_name(tmp_path: Path) -> None:
    result = _mint(tmp_path)

    assert result.returncode == 2
    assert "usage:" in result.stderr
