"""TLS for the gRPC API: the certificate from files, served anew when the files change.

The certificate and key are files (a Secret mounted into the pod; cert-manager writes
``tls.crt`` and ``tls.key``). cert-manager renews well before expiry and the kubelet
updates the mounted files in place, so the operator must pick the new pair up without a
restart. gRPC asks ``CertificateFiles.fetch`` for the configuration at every TLS
handshake; it answers None (keep the current one) unless the files changed since the
last look, which a ``stat`` of each tells cheaply. A changed pair is loaded only when
the key matches the certificate: the kubelet swaps both files at once, but an operator
who copies them by hand may be caught between the two, and serving a mismatched pair
would fail every new connection. Connections already open keep the certificate they
were made with; TLS cannot change it under them.

Plaintext is possible only by asking for it (``operator.tls.insecure_plaintext``).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from jobqueue.config import ServerTLSSettings
from jobqueue.errors import ConfigError

logger = logging.getLogger(__name__)

# How many characters of a certificate's SHA-256 fingerprint the logs show.
_FINGERPRINT_CHARS = 16

_NO_TLS = (
    "the gRPC API has no TLS certificate: set operator.tls.cert_file and "
    "operator.tls.key_file (JQ_OPERATOR_TLS_CERT_FILE, JQ_OPERATOR_TLS_KEY_FILE), e.g. the "
    "tls.crt and tls.key of a mounted cert-manager Secret; or, for local development "
    "only, serve plaintext with operator.tls.insecure_plaintext: true"
)


@dataclass(frozen=True)
class CertificatePair:
    certificate_chain: bytes  # PEM
    private_key: bytes  # PEM
    fingerprint: str  # hex SHA-256 of the leaf certificate, for logs
    not_after: str  # ISO 8601, for logs

    @property
    def grpc_configuration(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(self.private_key, self.certificate_chain)]
        )


def load_pair(cert_file: Path, key_file: Path) -> CertificatePair:
    """Read and check a certificate and its key; ConfigError naming what is wrong."""
    try:
        chain = cert_file.read_bytes()
        key = key_file.read_bytes()
    except OSError as error:
        raise ConfigError(
            f"operator.tls: cannot read {error.filename}: {error.strerror}"
        ) from error
    try:
        leaf = x509.load_pem_x509_certificate(chain)
    except ValueError as error:
        raise ConfigError(
            f"operator.tls.cert_file: {cert_file} is not a PEM certificate"
        ) from error
    try:
        private_key = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError) as error:
        raise ConfigError(
            f"operator.tls.key_file: {key_file} is not an unencrypted PEM private key"
        ) from error
    if private_key.public_key() != leaf.public_key():
        raise ConfigError(
            f"operator.tls: the key in {key_file} does not belong to the certificate in {cert_file}"
        )
    fingerprint = leaf.fingerprint(hashes.SHA256()).hex()
    return CertificatePair(chain, key, fingerprint, leaf.not_valid_after_utc.isoformat())


def _file_identity(path: Path) -> tuple[int, int, int, int]:
    status = os.stat(path)
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)


class CertificateFiles:
    """The served certificate, reloaded from its files when they change."""

    def __init__(self, cert_file: Path, key_file: Path) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self._lock = threading.Lock()  # gRPC fetches from its own threads
        self._seen = self._identity()
        self.current = load_pair(cert_file, key_file)
        logger.info(
            "Serving the gRPC API with TLS: certificate %s (valid until %s).",
            self.current.fingerprint[:_FINGERPRINT_CHARS], self.current.not_after,
        )  # fmt: skip

    def _identity(self) -> tuple[tuple[int, int, int, int], ...] | None:
        try:
            return (_file_identity(self.cert_file), _file_identity(self.key_file))
        except OSError:
            return None

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """What gRPC calls at each handshake: a new configuration, or None to keep it."""
        with self._lock:
            seen = self._identity()
            if seen is None or seen == self._seen:
                return None
            self._seen = seen
            try:
                pair = load_pair(self.cert_file, self.key_file)
            except ConfigError as error:
                # Keep serving the old pair; the next change of the files is tried again.
                logger.warning("Not rotating the gRPC certificate yet: %s", error)
                return None
            if pair.fingerprint == self.current.fingerprint:
                return None
            logger.info(
                "Rotated the gRPC certificate: now %s (valid until %s), was %s.",
                pair.fingerprint[:_FINGERPRINT_CHARS], pair.not_after,
                self.current.fingerprint[:_FINGERPRINT_CHARS],
            )  # fmt: skip
            self.current = pair
            return pair.grpc_configuration


def server_credentials(settings: ServerTLSSettings) -> grpc.ServerCredentials | None:
    """Credentials for the gRPC port; None only when plaintext was asked for by name."""
    if settings.insecure_plaintext:
        logger.warning(
            "The gRPC API serves PLAINTEXT (operator.tls.insecure_plaintext): tokens and job "
            "payloads cross the network unencrypted. Use it for local development only."
        )
        return None
    if not settings.cert_file or not settings.key_file:
        raise ConfigError(_NO_TLS)
    files = CertificateFiles(Path(settings.cert_file), Path(settings.key_file))
    # The stubs leave out that the fetcher may answer None, which keeps the configuration.
    fetch = cast(Callable[[], grpc.ServerCertificateConfiguration], files.fetch)
    return grpc.dynamic_ssl_server_credentials(
        files.current.grpc_configuration, fetch, require_client_authentication=False
    )
