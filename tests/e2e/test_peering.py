"""Two ``jobqueue-operator`` replicas, cluster-wide with kopf peering: one reconciles.

Both serve gRPC and would both reconcile without peering; through the ClusterKopfPeering
``jobqueue`` the one with the lower (random) priority pauses. A cluster-wide operator
also sees what other tests left in their namespaces, so the check is on this test's own
queue and on which replica ran any reconcile handler at all.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from kubernetes import client as kube_client

from jobqueue import errors, resources
from jobqueue.devenv import Environment
from jobqueue.devenv.processes import free_port, port_open
from jobqueue.store import JobStore
from tests.conftest import KafkaTarget
from tests.integration.operator.conftest import operator_environment
from tests.polling import eventually

REPOSITORY = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

RECONCILED = "Handler 'reconcile' succeeded"


def start_replica(
    devenv: Environment, database_url: str, redis_url: str, kafka: KafkaTarget, log: Path
) -> tuple[subprocess.Popen[bytes], int]:
    assert devenv.kubeconfig is not None
    port = free_port()
    environment = operator_environment(
        devenv,
        database_url,
        redis_url,
        kafka,
        JQ_OPERATOR_GRPC_ADDRESS=f"127.0.0.1:{port}",
        JQ_OPERATOR_HTTP_ADDRESS="",
    )
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "jobqueue.operator.main"],
            env=environment,
            cwd=REPOSITORY,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    return process, port


async def test_of_two_peered_replicas_exactly_one_reconciles(
    devenv: Environment,
    kube_api_client: kube_client.ApiClient,
    database_url: str,
    redis_url: str,
    kafka: KafkaTarget,
    namespace: str,
    tmp_path: Path,
) -> None:
    resources.install_crds(kube_api_client, REPOSITORY / "crds")
    logs = [tmp_path / "replica-0.log", tmp_path / "replica-1.log"]
    replicas = [start_replica(devenv, database_url, redis_url, kafka, log) for log in logs]
    store = await JobStore.open(database_url, min_size=1, max_size=2)
    try:

        async def serving() -> bool:
            assert all(process.poll() is None for process, _ in replicas), "a replica died"
            return all(port_open(port) for _, port in replicas)

        await eventually(serving, timeout_s=60, what="both replicas serving gRPC")

        name = f"peered-{uuid.uuid4().hex[:8]}"
        manifest = {
            "apiVersion": resources.API_VERSION,
            "kind": resources.JOB_QUEUE_KIND,
            "metadata": {"name": name},
            "spec": {"maxAttempts": 4},
        }
        resources.apply_resource(kube_api_client, manifest, namespace=namespace)

        async def row_written() -> bool:
            try:
                return (await store.get_queue(name)).max_attempts == 4
            except errors.NotFoundError:
                return False

        await eventually(row_written, timeout_s=60, what="the queue row")
    finally:
        await store.close()
        for process, _ in replicas:
            process.send_signal(signal.SIGTERM)
        for process, _ in replicas:
            process.wait(timeout=30)

    reconciled = [RECONCILED in log.read_text(errors="replace") for log in logs]
    assert sorted(reconciled) == [False, True], "exactly one replica should reconcile"
    assert all(process.returncode == 0 for process, _ in replicas)
