"""The operator as production runs it: TLS from certificate files, every call checked
against the real kube-apiserver (TokenReview, SubjectAccessReview), in the test's event
loop. Callers are ServiceAccounts of the test's namespace with tokens from the
TokenRequest API; grants are Roles and RoleBindings made as a platform team would.

The caches are kept to one second so that revocations show within a test; nothing else
differs from the defaults. No Redis or Kafka: these tests are about who may call.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes import client as kube_client

from jobqueue import resources
from jobqueue.client import AsyncClient
from jobqueue.config import Settings, load_settings
from jobqueue.devenv.certificates import ServingCertificate, mint_serving_certificate
from jobqueue.devenv.processes import free_port
from jobqueue.operator.app import Parts, running_operator
from jobqueue.store import QueuePolicy
from tests.integration.security.cluster import Cluster

REPOSITORY = Path(__file__).resolve().parents[3]
CACHE_TTL_S = 1.0
QUEUE_A = "queue-a"
QUEUE_B = "queue-b"


@pytest.fixture(scope="session")
def crds(kube_api_client: kube_client.ApiClient) -> None:
    resources.install_crds(kube_api_client, REPOSITORY / "crds")


@pytest.fixture
def cluster(kube_api_client: kube_client.ApiClient, namespace: str) -> Iterator[Cluster]:
    made = Cluster(kube_api_client, namespace)
    yield made
    made.cleanup()


@pytest.fixture
def certificate(tmp_path: Path) -> ServingCertificate:
    return mint_serving_certificate(tmp_path / "tls", authority="first-ca")


def secure_settings(
    database_url: str,
    certificate: ServingCertificate,
    grpc_port: int,
    extra: Mapping[str, str] | None = None,
) -> Settings:
    return load_settings(
        None,
        environ={
            "JQ_DATABASE_URL": database_url,
            "JQ_OPERATOR_GRPC_ADDRESS": f"127.0.0.1:{grpc_port}",
            "JQ_OPERATOR_HTTP_ADDRESS": "",
            "JQ_OPERATOR_POLL_INTERVAL_S": "0.2",
            "JQ_OPERATOR_LEASE_S": "5",
            "JQ_OPERATOR_TLS_CERT_FILE": str(certificate.cert_path),
            "JQ_OPERATOR_TLS_KEY_FILE": str(certificate.key_path),
            "JQ_OPERATOR_AUTH_CACHE_TTL_S": str(CACHE_TTL_S),
            **(extra or {}),
        },
    )


@dataclass
class SecureOperator:
    settings: Settings
    parts: Parts
    address: str
    ca_file: Path

    def client(self, token: str | None, *, ca_file: Path | None = None) -> AsyncClient:
        return AsyncClient(self.address, ca_file=ca_file or self.ca_file, token=token, timeout_s=10)


@contextlib.asynccontextmanager
async def secure_operator_running(
    settings: Settings, api_client: kube_client.ApiClient, ca_file: Path, namespace: str
) -> AsyncIterator[SecureOperator]:
    async with running_operator(settings, migrate=False, api_client=api_client) as parts:
        for queue in (QUEUE_A, QUEUE_B):
            await parts.store.apply_queue(QueuePolicy(name=queue, namespace=namespace))
        address = f"127.0.0.1:{parts.grpc_port}"
        yield SecureOperator(settings, parts, address, ca_file)


StartOperator = Callable[
    [Mapping[str, str]], contextlib.AbstractAsyncContextManager[SecureOperator]
]


@pytest.fixture
def start_operator(
    database_url: str,
    certificate: ServingCertificate,
    kube_api_client: kube_client.ApiClient,
    namespace: str,
) -> StartOperator:
    """Starts another operator on the test's database, with settings of its own."""

    def start(extra: Mapping[str, str]) -> contextlib.AbstractAsyncContextManager[SecureOperator]:
        settings = secure_settings(database_url, certificate, free_port(), extra)
        return secure_operator_running(settings, kube_api_client, certificate.ca_path, namespace)

    return start


@pytest.fixture
async def operator(start_operator: StartOperator) -> AsyncIterator[SecureOperator]:
    async with start_operator({}) as running:
        yield running
