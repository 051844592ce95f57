"""The kind path: tests against a real cluster with real pods, run by ``make kind-e2e``.

``scripts/kind-e2e.sh`` creates the cluster, loads the images, installs the chart and the
in-cluster PostgreSQL, Redis and Kafka, applies the examples, and then runs this directory
with the variables below set. Without them (``make test``, which has no Docker) these
files are not collected at all: there is no cluster to talk to, and pretending otherwise
would be worse than running nothing.

- ``JQ_E2E_KUBECONFIG``: the kind cluster's kubeconfig;
- ``JQ_E2E_KUBECTL``: the kubectl to port-forward with;
- ``JQ_E2E_NAMESPACE``: where the examples were applied;
- ``JQ_E2E_RELEASE``, ``JQ_E2E_RELEASE_NAMESPACE``: the chart's release and its namespace.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from kubernetes import client as kube_client
from kubernetes import config as kube_config

from jobqueue.devenv.processes import free_port, port_open
from tests.polling import eventually_sync

collect_ignore_glob = [] if os.environ.get("JQ_E2E_KUBECONFIG") else ["test_*.py"]

PORT_FORWARD_TIMEOUT_S = 30


@dataclass(frozen=True)
class Cluster:
    api: kube_client.ApiClient
    kubeconfig: str
    kubectl: str
    namespace: str  # the examples'
    release: str
    release_namespace: str


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    kubeconfig = os.environ["JQ_E2E_KUBECONFIG"]
    api = kube_config.new_client_from_config(config_file=kubeconfig)
    yield Cluster(
        api=api,
        kubeconfig=kubeconfig,
        kubectl=os.environ.get("JQ_E2E_KUBECTL", "kubectl"),
        namespace=os.environ.get("JQ_E2E_NAMESPACE", "jobqueue-examples"),
        release=os.environ.get("JQ_E2E_RELEASE", "jobqueue"),
        release_namespace=os.environ.get("JQ_E2E_RELEASE_NAMESPACE", "jobqueue-system"),
    )
    api.close()


@pytest.fixture(scope="session")
def operator_address(cluster: Cluster) -> Iterator[str]:
    """The operator's gRPC port on localhost, through ``kubectl port-forward``."""
    port = free_port()
    forward = subprocess.Popen(
        [
            cluster.kubectl, "--kubeconfig", cluster.kubeconfig,
            "--namespace", cluster.release_namespace,
            "port-forward", f"service/{cluster.release}", f"{port}:7070",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        # Nothing announces the forward is up but the port answering.
        eventually_sync(
            lambda: port_open(port) or None,
            timeout_s=PORT_FORWARD_TIMEOUT_S,
            what="kubectl port-forward to the operator",
        )
        yield f"127.0.0.1:{port}"
    finally:
        forward.terminate()
        forward.wait(timeout=10)
