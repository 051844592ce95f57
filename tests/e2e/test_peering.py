"""Two ``jobqueue-operator`` replicas, cluster-wide with kopf peering: one reconciles.

Both serve gRPC and would both reconcile without peering; through the ClusterKopfPeering
``jobqueue`` the one with the lower (random) priority pauses. Until each has seen the
other there, a replica that finds itself alone reconciles, and a cluster-wide one also
reconciles what other tests left in their namespaces. So the test first waits for the
peering to settle (both replicas listed, the lower one paused) and then judges only what
the replicas log after that.
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
PAUSED = "Pausing operations in favour of"
RESUMED = "Resuming operations after the pause"


def start_replica(
    devenv: Environment,
    database_url: str,
    redis_url: str,
    kafka: KafkaTarget,
    log: Path,
    identity: str,
    **more: str,
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
        # kopf's name for the replica in the peering, instead of user@host/time/random.
        POD_ID=identity,
        **more,
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


def peers(api: kube_client.ApiClient, peering: str) -> dict[str, int]:
    """The replicas listed in the ClusterKopfPeering ``peering``, with their priorities."""
    try:
        body = kube_client.CustomObjectsApi(api).get_cluster_custom_object(
            "kopf.dev", "v1", "clusterkopfpeerings", peering
        )
    except kube_client.ApiException as error:
        if error.status == 404:
            return {}
        raise
    listed = body.get("status") or {}
    return {identity: peer["priority"] for identity, peer in listed.items() if peer}


def paused_after_resuming(log: Path) -> bool:
    text = log.read_text(errors="replace")
    return RESUMED in text and text.rfind(PAUSED) > text.rfind(RESUMED)


async def test_of_two_peered_replicas_exactly_one_reconciles(
    devenv: Environment,
    kube_api_client: kube_client.ApiClient,
    database_url: str,
    redis_url: str,
    kafka: KafkaTarget,
    namespace: str,
    tmp_path: Path,
) -> None:
    """The replicas start one after the other, so that how the peering settles is known:
    the first, alone, resumes; the second sees the first listed from its start. If the
    second has the lower priority it never resumes; otherwise the first pauses, and the
    test waits for that line in its log."""
    resources.install_crds(kube_api_client, REPOSITORY / "crds")
    peering = f"peered-{uuid.uuid4().hex[:8]}"
    identities = [f"{peering}-first", f"{peering}-second"]
    logs = [tmp_path / f"{identity}.log" for identity in identities]
    replicas: list[tuple[subprocess.Popen[bytes], int]] = []
    store = await JobStore.open(database_url, min_size=1, max_size=2)
    try:

        async def started(index: int) -> None:
            replicas.append(
                start_replica(
                    devenv,
                    database_url,
                    redis_url,
                    kafka,
                    logs[index],
                    identities[index],
                    JQ_OPERATOR_PEERING_NAME=peering,
                )
            )
            process, port = replicas[index]

            async def serving_and_listed() -> bool:
                assert process.poll() is None, f"{identities[index]} exited"
                return port_open(port) and identities[index] in peers(kube_api_client, peering)

            await eventually(
                serving_and_listed, timeout_s=60, what=f"{identities[index]} serving and peered"
            )

        await started(0)

        async def first_resumed() -> bool:
            return RESUMED in logs[0].read_text(errors="replace")

        await eventually(first_resumed, timeout_s=30, what="the first replica, alone, resuming")
        await started(1)

        priorities = peers(kube_api_client, peering)
        winner = 0 if priorities[identities[0]] > priorities[identities[1]] else 1
        loser = 1 - winner
        if winner == 1:

            async def first_paused() -> bool:
                return paused_after_resuming(logs[0])

            await eventually(first_paused, timeout_s=30, what="the first replica pausing")
        before = [log.stat().st_size for log in logs]

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
        kube_client.CustomObjectsApi(kube_api_client).delete_cluster_custom_object(
            "kopf.dev", "v1", "clusterkopfpeerings", peering
        )

    since = [
        log.read_bytes()[size:].decode(errors="replace")
        for log, size in zip(logs, before, strict=True)
    ]
    this_queue = f"object=JobQueue {namespace}/{name}"
    assert any(RECONCILED in line and this_queue in line for line in since[winner].splitlines()), (
        f"{identities[winner]}, of the higher priority, should reconcile the queue"
    )
    assert RECONCILED not in since[loser], f"{identities[loser]} should stay paused"
    if loser == 1:
        assert RESUMED not in logs[1].read_text(errors="replace"), (
            "the second replica saw the first from its start and should never resume"
        )
    assert all(process.returncode == 0 for process, _ in replicas)
