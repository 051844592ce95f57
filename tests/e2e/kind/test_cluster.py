"""The chart and the examples on a kind cluster: pods run, workers connect, a job finishes.

Everything waits on watch events with a deadline; image pulls and Kafka's start make the
first minutes of a fresh cluster slow, hence the generous bounds.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as kube_client
from kubernetes import watch as kube_watch

from jobqueue import resources
from jobqueue.api.v1 import jobs_pb2
from jobqueue.client import Client, job_spec
from tests.e2e.kind.conftest import Cluster

ROLLOUT_TIMEOUT_S = 300
RECONCILE_TIMEOUT_S = 180
JOB_TIMEOUT_S = 120
WORKER_IMAGE = "ghcr.io/jobqueue/worker:0.1.0"


def _wait_for(
    list_call: Callable[..., Any],
    *arguments: Any,
    predicate: Callable[[dict[str, Any]], bool],
    what: str,
    timeout_s: float,
) -> dict[str, Any]:
    watcher = kube_watch.Watch()
    for event in watcher.stream(list_call, *arguments, timeout_seconds=int(timeout_s)):
        if event["type"] in ("ADDED", "MODIFIED") and predicate(event["raw_object"]):
            watcher.stop()
            return dict(event["raw_object"])
    raise AssertionError(f"{what} did not happen within {timeout_s:g} s")


def _named(name: str, check: Callable[[dict[str, Any]], bool]) -> Callable[[dict[str, Any]], bool]:
    return lambda body: body["metadata"]["name"] == name and check(body)


def _ready(body: dict[str, Any]) -> bool:
    status = body.get("status") or {}
    if status.get("observedGeneration") != body["metadata"].get("generation"):
        return False
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    return conditions.get("Ready") == "True"


def test_operator_replicas_become_available(cluster: Cluster) -> None:
    apps = kube_client.AppsV1Api(cluster.api)

    deployment = _wait_for(
        apps.list_namespaced_deployment, cluster.release_namespace,
        predicate=_named(
            cluster.release,
            lambda body: (body.get("status") or {}).get("availableReplicas")
            == body["spec"]["replicas"],
        ),
        what="every operator replica passing /readyz",
        timeout_s=ROLLOUT_TIMEOUT_S,
    )  # fmt: skip

    assert deployment["spec"]["replicas"] == 2


def test_example_queue_becomes_ready(cluster: Cluster) -> None:
    custom = kube_client.CustomObjectsApi(cluster.api)

    queue = _wait_for(
        custom.list_namespaced_custom_object,
        resources.GROUP, resources.VERSION, cluster.namespace, resources.JOB_QUEUE_PLURAL,
        predicate=_named("emails", _ready),
        what="the emails queue becoming Ready",
        timeout_s=RECONCILE_TIMEOUT_S,
    )  # fmt: skip

    assert queue["spec"]["maxAttempts"] == 5


def test_example_pool_runs_workers_that_connect(cluster: Cluster) -> None:
    custom = kube_client.CustomObjectsApi(cluster.api)

    pool = _wait_for(
        custom.list_namespaced_custom_object,
        resources.GROUP, resources.VERSION, cluster.namespace, resources.WORKER_POOL_PLURAL,
        predicate=_named(
            "emails-workers",
            lambda body: (body.get("status") or {}).get("readyReplicas") == 2
            and (body.get("status") or {}).get("connectedWorkers") == 2,
        ),
        what="two ready, connected workers in emails-workers",
        timeout_s=ROLLOUT_TIMEOUT_S,
    )  # fmt: skip

    assert pool["status"]["selector"]


def test_autoscaled_pool_gets_a_horizontal_pod_autoscaler(cluster: Cluster) -> None:
    autoscaling = kube_client.AutoscalingV2Api(cluster.api)

    autoscaler = _wait_for(
        autoscaling.list_namespaced_horizontal_pod_autoscaler, cluster.namespace,
        predicate=_named("emails-autoscaled", lambda body: True),
        what="the HPA of emails-autoscaled",
        timeout_s=RECONCILE_TIMEOUT_S,
    )  # fmt: skip

    target = autoscaler["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == (resources.WORKER_POOL_KIND, "emails-autoscaled")
    assert autoscaler["spec"]["maxReplicas"] == 10


@pytest.mark.timeout(ROLLOUT_TIMEOUT_S + JOB_TIMEOUT_S + 60)
def test_command_job_runs_on_a_worker_pod(cluster: Cluster, operator_address: str) -> None:
    custom = kube_client.CustomObjectsApi(cluster.api)
    group, version, namespace = resources.GROUP, resources.VERSION, cluster.namespace
    # The one queue besides the examples' that manifests/dev/examples-access.yaml lets the
    # test's caller and the namespace's workers use.
    name = "e2e-commands"
    custom.create_namespaced_custom_object(
        group, version, namespace, resources.JOB_QUEUE_PLURAL,
        {
            "apiVersion": resources.API_VERSION, "kind": resources.JOB_QUEUE_KIND,
            "metadata": {"name": name},
            "spec": {"maxAttempts": 1, "allowedKinds": ["Command"]},
        },
    )  # fmt: skip
    custom.create_namespaced_custom_object(
        group, version, namespace, resources.WORKER_POOL_PLURAL,
        {
            "apiVersion": resources.API_VERSION, "kind": resources.WORKER_POOL_KIND,
            "metadata": {"name": name},
            "spec": {
                "queue": name, "replicas": 1,
                "template": {"image": WORKER_IMAGE, "imagePullPolicy": "Never"},
            },
        },
    )  # fmt: skip
    try:
        _wait_for(
            custom.list_namespaced_custom_object, group, version, namespace,
            resources.WORKER_POOL_PLURAL,
            predicate=_named(name, lambda b: (b.get("status") or {}).get("connectedWorkers") == 1),
            what=f"a worker of {name} connecting",
            timeout_s=ROLLOUT_TIMEOUT_S,
        )  # fmt: skip

        # TLS and a token, as the kind script hands them over (scripts/kind-e2e.sh).
        with Client(
            operator_address,
            ca_file=Path(os.environ["JQ_E2E_CA_FILE"]),
            server_name=os.environ.get("JQ_E2E_TLS_SERVER_NAME"),
            token=Path(os.environ["JQ_E2E_TOKEN_FILE"]).read_text().strip(),
            timeout_s=30,
        ) as client:
            job = client.submit(job_spec(name, command=["sh", "-c", "echo from-kind"]))
            finished = client.wait(job.id, timeout_s=JOB_TIMEOUT_S)

        assert finished.state == jobs_pb2.JOB_STATE_SUCCEEDED
    finally:
        for plural in (resources.WORKER_POOL_PLURAL, resources.JOB_QUEUE_PLURAL):
            custom.delete_namespaced_custom_object(group, version, namespace, plural, name)
