"""What a QueueWorkerPool becomes in Kubernetes: a Deployment and, optionally, an HPA.

Pure functions from a parsed pool spec to manifests, so every decision about the worker
pods is visible (and unit-tested) in one place; ``reconcile`` applies them server-side.

The Deployment is named after the pool and owned by it (a controller owner reference),
so deleting the pool deletes its workers and Argo CD draws the tree. Its pods carry the
labels ``jobqueue.dev/pool`` and ``jobqueue.dev/queue``; the pool's ``status.selector``
is the pool label alone, which is what the scale subresource and an HPA read.

Pods are locked down unless the pool's template says otherwise: non-root, read-only root
filesystem with a writable ``/tmp``, no privilege escalation, every capability dropped.
The termination grace period is the pool's drain grace plus a margin, so SIGTERM starts
a drain and the kubelet's SIGKILL comes only after the worker had its chance to report.

Worker pods verify the operator's TLS certificate. With ``operator.worker_ca_configmap``
they mount that ConfigMap, which something else (trust-manager) keeps in every pool's
namespace. Else, with ``operator.tls.ca_file`` set, the operator copies that CA into a
ConfigMap ``<pool>-operator-ca`` beside the pool (owned by it, since a pod cannot mount a
ConfigMap of another namespace; this needs ConfigMap writes the Helm chart's role does
not grant). Without either they trust their system roots; an operator serving plaintext tells its
workers to do the same. Each pod proves who it is with its ServiceAccount token, which
the kubelet mounts and rotates (see docs/security.md).

Autoscaling targets the pool itself (its scale subresource), not the Deployment: the
operator keeps copying ``spec.replicas`` to the Deployment, so there is one path for
``kubectl scale``, GitOps and the HPA. The HPA scales on the External metric
``jobqueue_queue_jobs`` for the queue's pending jobs, which a metrics adapter (such as
prometheus-adapter over the operator's ``/metrics``) must serve; without one the HPA
reports that the metric is missing and leaves the replicas alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from jobqueue.resources import API_VERSION, WORKER_POOL_KIND, WorkerPoolSpec

POOL_LABEL: Final = "jobqueue.dev/pool"
QUEUE_LABEL: Final = "jobqueue.dev/queue"
MANAGED_BY: Final = {"app.kubernetes.io/managed-by": "jobqueue-operator"}

# Seconds the kubelet waits past the drain grace before SIGKILL: time to send the last
# results and deregister.
TERMINATION_MARGIN_S: Final = 15
WORKER_HTTP_PORT: Final = 9091  # /healthz, /readyz and /metrics of a worker
# The metric an HPA scales a pool on: pending jobs of the pool's queue.
QUEUE_DEPTH_METRIC: Final = "jobqueue_queue_jobs"


def selector(pool: str) -> dict[str, str]:
    """The labels that select a pool's pods (and its Deployment)."""
    return {POOL_LABEL: pool}


def selector_string(pool: str) -> str:
    """The selector as the scale subresource reports it (``status.selector``)."""
    return ",".join(f"{key}={value}" for key, value in selector(pool).items())


def owner_reference(body: Mapping[str, Any]) -> dict[str, Any]:
    """A controller reference to the pool: its objects are deleted with it."""
    metadata = body["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": WORKER_POOL_KIND,
        "name": metadata["name"],
        "uid": metadata["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


CA_MOUNT_PATH: Final = "/etc/jobqueue/operator-ca"
CA_KEY: Final = "ca.crt"


@dataclass(frozen=True)
class OperatorTrust:
    """How a pool's workers trust the operator: plaintext, a CA ConfigMap, or system roots."""

    plaintext: bool = False
    ca_config_map: str | None = None  # the ConfigMap holding ca.crt, beside the pool


def ca_config_map_name(pool: str) -> str:
    return f"{pool}-operator-ca"


def ca_config_map(body: Mapping[str, Any], ca_pem: str) -> dict[str, Any]:
    """The ConfigMap carrying the operator's CA into a pool's namespace."""
    metadata = body["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": ca_config_map_name(metadata["name"]),
            "namespace": metadata["namespace"],
            "labels": {**MANAGED_BY, POOL_LABEL: metadata["name"]},
            "ownerReferences": [owner_reference(body)],
        },
        "data": {CA_KEY: ca_pem},
    }


def worker_arguments(pool: str, spec: WorkerPoolSpec, operator_address: str) -> list[str]:
    """The worker's command line: where the operator is, what it serves, how much at once."""
    return [
        "--operator",
        operator_address,
        "--queue",
        spec.queue,
        "--pool",
        pool,
        "--concurrency",
        str(spec.concurrency),
        *spec.template.args,
    ]


def deployment(
    body: Mapping[str, Any],
    spec: WorkerPoolSpec,
    *,
    operator_address: str,
    trust: OperatorTrust = OperatorTrust(),
) -> dict[str, Any]:
    """The Deployment that runs a pool's workers, as a server-side apply document."""
    metadata = body["metadata"]
    name, namespace = metadata["name"], metadata["namespace"]
    template = spec.template
    labels = {**MANAGED_BY, POOL_LABEL: name, QUEUE_LABEL: spec.queue}
    pod_labels = {**template.labels, **labels}

    container: dict[str, Any] = {
        "name": "worker",
        "image": template.image,
        "args": worker_arguments(name, spec, operator_address),
        "env": [
            # The pod's name is the worker's id: stable across reconnects, unique in the pool.
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "JQ_WORKER_DRAIN_GRACE_S", "value": str(spec.drain_grace_s)},
            *[dict(variable) for variable in template.env],
        ],
        "ports": [{"name": "http", "containerPort": WORKER_HTTP_PORT}],
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "http"},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5},
        "securityContext": {
            "runAsNonRoot": True,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    if trust.plaintext:
        container["env"].insert(2, {"name": "JQ_WORKER_TLS_INSECURE_PLAINTEXT", "value": "true"})
    elif trust.ca_config_map:
        ca_file = f"{CA_MOUNT_PATH}/{CA_KEY}"
        container["env"].insert(2, {"name": "JQ_WORKER_TLS_CA_FILE", "value": ca_file})
        container["volumeMounts"].append(
            {"name": "operator-ca", "mountPath": CA_MOUNT_PATH, "readOnly": True}
        )
        volumes.append({"name": "operator-ca", "configMap": {"name": trust.ca_config_map}})
    if template.env_from:
        container["envFrom"] = [dict(source) for source in template.env_from]
    if template.resources:
        container["resources"] = dict(template.resources)
    if template.image_pull_policy:
        container["imagePullPolicy"] = template.image_pull_policy

    pod_spec: dict[str, Any] = {
        "containers": [container],
        "terminationGracePeriodSeconds": spec.drain_grace_s + TERMINATION_MARGIN_S,
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "volumes": volumes,
    }
    if template.service_account_name:
        pod_spec["serviceAccountName"] = template.service_account_name
    if template.node_selector:
        pod_spec["nodeSelector"] = dict(template.node_selector)
    if template.tolerations:
        pod_spec["tolerations"] = [dict(toleration) for toleration in template.tolerations]
    if template.affinity:
        pod_spec["affinity"] = dict(template.affinity)

    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "ownerReferences": [owner_reference(body)],
        },
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": selector(name)},
            "template": {
                "metadata": {"labels": pod_labels, "annotations": dict(template.annotations)},
                "spec": pod_spec,
            },
        },
    }


def autoscaler(body: Mapping[str, Any], spec: WorkerPoolSpec) -> dict[str, Any] | None:
    """The HorizontalPodAutoscaler of a pool with ``autoscaling``; None without it."""
    bounds = spec.autoscaling
    if bounds is None:
        return None
    metadata = body["metadata"]
    name = metadata["name"]
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {
            "name": name,
            "namespace": metadata["namespace"],
            "labels": {**MANAGED_BY, POOL_LABEL: name, QUEUE_LABEL: spec.queue},
            "ownerReferences": [owner_reference(body)],
        },
        "spec": {
            "scaleTargetRef": {"apiVersion": API_VERSION, "kind": WORKER_POOL_KIND, "name": name},
            "minReplicas": max(1, bounds.min_replicas),
            "maxReplicas": bounds.max_replicas,
            "metrics": [
                {
                    "type": "External",
                    "external": {
                        "metric": {
                            "name": QUEUE_DEPTH_METRIC,
                            "selector": {"matchLabels": {"queue": spec.queue, "state": "pending"}},
                        },
                        "target": {
                            "type": "AverageValue",
                            "averageValue": str(bounds.target_pending_per_worker),
                        },
                    },
                }
            ],
        },
    }
