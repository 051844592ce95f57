"""Certificates and keys for a local kube-apiserver, minted fresh for each environment.

The layout follows how controller-runtime's envtest runs an apiserver: one CA signs the
serving certificate (for 127.0.0.1 and localhost) and the client certificates; the admin
client is in ``system:masters``. A second CA, for the aggregation layer's front proxy,
lets the apiserver forward to extension API servers (an external metrics API, later).
ServiceAccount tokens are signed with their own RSA key.

``mint_serving_certificate`` gives the operator's gRPC API a certificate of its own, in
the layout of a cert-manager Secret, for tests and the demo.
"""

from __future__ import annotations

import datetime
import ipaddress
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALID_FOR = datetime.timedelta(days=7)


@dataclass(frozen=True)
class KeyPair:
    cert_path: Path
    key_path: Path


@dataclass(frozen=True)
class ControlPlaneCertificates:
    ca: KeyPair
    serving: KeyPair
    admin: KeyPair
    front_proxy_ca: KeyPair
    front_proxy_client: KeyPair
    service_account_key: Path
    service_account_public_key: Path


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


class _Authority:
    """A self-signed CA that issues leaf certificates into one directory."""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _VALID_FOR)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )
        self.pair = self._save(name, self.cert, self.key)

    def _save(self, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> KeyPair:
        pair = KeyPair(self.directory / f"{stem}.crt", self.directory / f"{stem}.key")
        pair.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(pair.key_path, key)
        return pair

    def issue(
        self,
        stem: str,
        common_name: str,
        *,
        organization: str | None = None,
        server: bool = False,
    ) -> KeyPair:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name, organization))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _VALID_FOR)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
        return self._save(stem, builder.sign(self.key, hashes.SHA256()), key)


def mint_control_plane_certificates(directory: Path) -> ControlPlaneCertificates:
    """Write every certificate and key a local control plane needs into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = _Authority(directory, "jobqueue-devenv-ca")
    front_proxy = _Authority(directory, "jobqueue-devenv-front-proxy-ca")

    service_account_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_path = directory / "service-account.key"
    public_path = directory / "service-account.pub"
    _write_key(private_path, service_account_key)
    public_path.write_bytes(
        service_account_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )

    return ControlPlaneCertificates(
        ca=ca.pair,
        serving=ca.issue("apiserver", "kube-apiserver", server=True),
        admin=ca.issue("admin", "jobqueue-devenv-admin", organization="system:masters"),
        front_proxy_ca=front_proxy.pair,
        front_proxy_client=front_proxy.issue("front-proxy-client", "front-proxy-client"),
        service_account_key=private_path,
        service_account_public_key=public_path,
    )


@dataclass(frozen=True)
class ServingCertificate:
    """A server certificate laid out as a cert-manager Secret mounts it."""

    ca_path: Path  # ca.crt: what clients trust
    cert_path: Path  # tls.crt
    key_path: Path  # tls.key


def mint_serving_certificate(
    directory: Path, *, authority: str = "jobqueue-devenv-grpc-ca"
) -> ServingCertificate:
    """A fresh CA and a certificate it issued for localhost and 127.0.0.1, in ``directory``.

    The files are written under cert-manager's names (``ca.crt``, ``tls.crt``,
    ``tls.key``), so what the operator is pointed at in tests and the demo is what it
    reads from a Secret in a cluster. Each call mints a new CA: a client that trusts an
    earlier one does not trust this certificate, which is how tests see a rotation.
    """
    directory.mkdir(parents=True, exist_ok=True)
    served = ServingCertificate(directory / "ca.crt", directory / "tls.crt", directory / "tls.key")
    # The CA's own key is thrown away with the scratch directory: nothing else is issued.
    with tempfile.TemporaryDirectory() as scratch:
        ca = _Authority(Path(scratch), authority)
        leaf = ca.issue("server", "jobqueue-operator", server=True)
        served.ca_path.write_bytes(ca.pair.cert_path.read_bytes())
        served.cert_path.write_bytes(leaf.cert_path.read_bytes())
        _write_bytes_private(served.key_path, leaf.key_path.read_bytes())
    return served


def _write_bytes_private(path: Path, data: bytes) -> None:
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_bytes(data)
