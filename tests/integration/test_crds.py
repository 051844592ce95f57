"""The CRDs against a real kube-apiserver: they install, default, refuse and scale.

The environment is shared by the whole test session, so the CRDs are installed once by a
module fixture and may already be there from another test file; installing twice must be
harmless, and one test does exactly that.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as kube_client

from jobqueue import resources
from jobqueue.devenv import Environment
from jobqueue.errors import InvalidInputError
from jobqueue.resources import JobQueueSpec, WorkerPoolSpec

pytestmark = pytest.mark.integration

REPOSITORY = Path(__file__).resolve().parents[2]
CRDS = REPOSITORY / "crds"
EXAMPLES = REPOSITORY / "manifests" / "examples"


@pytest.fixture(scope="module")
def crds(kube_api_client: kube_client.ApiClient) -> None:
    resources.install_crds(kube_api_client, CRDS)


@pytest.fixture
def custom(kube_api_client: kube_client.ApiClient, crds: None) -> kube_client.CustomObjectsApi:
    return kube_client.CustomObjectsApi(kube_api_client)


def _queue(name: str, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "apiVersion": resources.API_VERSION,
        "kind": resources.JOB_QUEUE_KIND,
        "metadata": {"name": name},
    }
    if spec is not None:
        manifest["spec"] = spec
    return manifest


def _pool(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": resources.API_VERSION,
        "kind": resources.WORKER_POOL_KIND,
        "metadata": {"name": name},
        "spec": spec,
    }


def _create(
    custom: kube_client.CustomObjectsApi, namespace: str, manifest: dict[str, Any]
) -> dict[str, Any]:
    plural = resources.PLURALS[manifest["kind"]]
    created = custom.create_namespaced_custom_object(
        resources.GROUP, resources.VERSION, namespace, plural, manifest
    )
    assert isinstance(created, dict)
    return created


def _refusal(custom: kube_client.CustomObjectsApi, namespace: str, manifest: dict[str, Any]) -> str:
    """Create the manifest, expect HTTP 422, return the API server's message."""
    with pytest.raises(kube_client.ApiException) as refused:
        _create(custom, namespace, manifest)
    assert refused.value.status == 422, refused.value.body
    return str(json.loads(refused.value.body)["message"])


# Installation -------------------------------------------------------------------------


def test_installing_again_is_harmless_and_both_kinds_are_established(
    kube_api_client: kube_client.ApiClient, crds: None
) -> None:
    resources.install_crds(kube_api_client, CRDS)

    extensions = kube_client.ApiextensionsV1Api(kube_api_client)
    for plural in (resources.JOB_QUEUE_PLURAL, resources.WORKER_POOL_PLURAL):
        crd = extensions.read_custom_resource_definition(f"{plural}.{resources.GROUP}")
        established = [c for c in crd.status.conditions if c.type == "Established"]
        assert established[0].status == "True"
        assert crd.spec.names.categories == [resources.CATEGORY]
        assert resources.CATEGORY not in [
            crd.spec.names.plural, crd.spec.names.singular, *crd.spec.names.short_names
        ]  # fmt: skip


# Defaults -----------------------------------------------------------------------------


def test_empty_queue_spec_gets_every_default(
    custom: kube_client.CustomObjectsApi, namespace: str
) -> None:
    _create(custom, namespace, _queue("plain", {}))

    stored = custom.get_namespaced_custom_object(
        resources.GROUP, resources.VERSION, namespace, resources.JOB_QUEUE_PLURAL, "plain"
    )

    assert stored["spec"] == {
        "maxAttempts": 3,
        "backoff": {"initialSeconds": 1, "multiplier": 2, "maxSeconds": 300, "jitter": 0.1},
        "timeoutSeconds": 600,
        "paused": False,
        "retention": {"succeededSeconds": 86400, "failedSeconds": 604800},
        "deletionPolicy": "Drain",
        "allowedKinds": ["Command", "Python"],
        "payloadLimitBytes": 262144,
    }
    # The Python parser agrees with the API server's defaults.
    assert JobQueueSpec.from_manifest(stored["spec"]) == JobQueueSpec()


def test_queue_without_spec_gets_every_default(
    custom: kube_client.CustomObjectsApi, namespace: str
) -> None:
    stored = _create(custom, namespace, _queue("bare"))

    assert JobQueueSpec.from_manifest(stored["spec"]) == JobQueueSpec()


def test_pool_gets_defaults_for_what_it_leaves_out(
    custom: kube_client.CustomObjectsApi, namespace: str
) -> None:
    stored = _create(
        custom,
        namespace,
        _pool(
            "minimal",
            {
                "queue": "emails",
                "template": {"image": "worker:1"},
                "autoscaling": {"maxReplicas": 4},
            },
        ),
    )

    assert stored["spec"]["replicas"] == 1
    assert stored["spec"]["concurrency"] == 4
    assert stored["spec"]["drainGraceSeconds"] == 30
    assert stored["spec"]["autoscaling"] == {"maxReplicas": 4, "targetPendingPerWorker": 10}
    parsed = WorkerPoolSpec.from_manifest(stored["spec"])
    assert parsed.autoscaling is not None
    assert parsed.autoscaling.min_replicas == 1


# Validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ({"maxAttempts": -1}, "spec.maxAttempts"),
        ({"deletionPolicy": "Orphan"}, "spec.deletionPolicy"),
        (
            {"backoff": {"initialSeconds": 600, "maxSeconds": 60}},
            "backoff.initialSeconds must not exceed backoff.maxSeconds",
        ),
        ({"allowedKinds": ["Command", "Shell"]}, "spec.allowedKinds"),
        ({"allowedKinds": []}, "spec.allowedKinds"),
        ({"rateLimit": {"burst": 5}}, "spec.rateLimit.perSecond"),
        ({"timeoutSeconds": 0}, "spec.timeoutSeconds"),
    ],
    ids=[
        "negative-max-attempts",
        "unknown-deletion-policy",
        "initial-backoff-above-max",
        "unknown-job-kind",
        "no-job-kind",
        "rate-limit-without-rate",
        "zero-timeout",
    ],
)
def test_invalid_queue_is_refused_naming_the_field(
    custom: kube_client.CustomObjectsApi, namespace: str, spec: dict[str, Any], named: str
) -> None:
    message = _refusal(custom, namespace, _queue("bad", spec))

    assert named in message


def test_queue_name_that_is_no_label_value_is_refused(
    custom: kube_client.CustomObjectsApi, namespace: str
) -> None:
    message = _refusal(custom, namespace, _queue("q" * 64, {}))

    assert "metadata.name" in message


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        (
            {
                "queue": "emails",
                "template": {"image": "worker:1"},
                "autoscaling": {"minReplicas": 5, "maxReplicas": 2},
            },
            "autoscaling.minReplicas must not exceed autoscaling.maxReplicas",
        ),
        ({"template": {"image": "worker:1"}}, "spec.queue"),
        ({"queue": "Not_A_Name", "template": {"image": "worker:1"}}, "spec.queue"),
        ({"queue": "emails", "template": {}}, "spec.template.image"),
        ({"queue": "emails", "template": {"image": "w"}, "concurrency": 0}, "spec.concurrency"),
        (
            {
                "queue": "emails",
                "template": {"image": "w", "resources": {"limits": {"cpu": "lots"}}},
            },
            "spec.template.resources.limits",
        ),
    ],
    ids=[
        "autoscaling-min-above-max",
        "no-queue",
        "queue-not-a-name",
        "no-image",
        "zero-concurrency",
        "bad-quantity",
    ],
)
def test_invalid_pool_is_refused_naming_the_field(
    custom: kube_client.CustomObjectsApi, namespace: str, spec: dict[str, Any], named: str
) -> None:
    message = _refusal(custom, namespace, _pool("bad", spec))

    assert named in message


def test_pool_keeps_kubernetes_shaped_template_fields(
    custom: kube_client.CustomObjectsApi, namespace: str
) -> None:
    template = {
        "image": "worker:1",
        "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"cpu": 1}},
        "env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "t"}}}],
        "envFrom": [{"configMapRef": {"name": "settings"}}],
        "tolerations": [{"key": "spot", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}},
        "nodeSelector": {"pool": "workers"},
    }

    stored = _create(custom, namespace, _pool("shaped", {"queue": "emails", "template": template}))

    assert stored["spec"]["template"] == template


# Scale subresource --------------------------------------------------------------------


def test_scale_subresource_sets_and_reads_replicas(
    custom: kube_client.CustomObjectsApi, namespace: str
) -> None:
    _create(custom, namespace, _pool("scaled", {"queue": "emails", "template": {"image": "w"}}))
    arguments = (
        resources.GROUP, resources.VERSION, namespace, resources.WORKER_POOL_PLURAL, "scaled"
    )  # fmt: skip

    custom.patch_namespaced_custom_object_scale(*arguments, {"spec": {"replicas": 5}})
    pool = custom.get_namespaced_custom_object(*arguments)
    scale = custom.get_namespaced_custom_object_scale(*arguments)

    assert pool["spec"]["replicas"] == 5
    assert scale["kind"] == "Scale"
    assert scale["spec"]["replicas"] == 5


def test_scale_reports_the_replicas_and_selector_the_operator_writes_to_status(
    custom: kube_client.CustomObjectsApi, namespace: str
) -> None:
    _create(custom, namespace, _pool("observed", {"queue": "emails", "template": {"image": "w"}}))
    arguments = (
        resources.GROUP, resources.VERSION, namespace, resources.WORKER_POOL_PLURAL, "observed"
    )  # fmt: skip
    selector = "app.kubernetes.io/instance=observed"

    custom.patch_namespaced_custom_object_status(
        *arguments, {"status": {"replicas": 2, "readyReplicas": 1, "selector": selector}}
    )
    scale = custom.get_namespaced_custom_object_scale(*arguments)

    # An HorizontalPodAutoscaler reads exactly these two.
    assert scale["status"]["replicas"] == 2
    assert scale["status"]["selector"] == selector


# kubectl ------------------------------------------------------------------------------


def _kubectl(devenv: Environment, tmp_path: Path, *arguments: str) -> str:
    assert devenv.kube_bin_dir is not None
    assert devenv.kubeconfig is not None
    completed = subprocess.run(
        [
            str(devenv.kube_bin_dir / "kubectl"),
            "--kubeconfig", str(devenv.kubeconfig),
            # A cache of the test's own: discovery cached before the CRDs existed would hide them.
            "--cache-dir", str(tmp_path / "kube-cache"),
            *arguments,
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


def test_kubectl_lists_queues_and_pools_by_category_and_shows_wide_columns(
    devenv: Environment,
    custom: kube_client.CustomObjectsApi,
    namespace: str,
    tmp_path: Path,
) -> None:
    _create(custom, namespace, _queue("emails", {"paused": True}))
    _create(
        custom, namespace, _pool("emails-workers", {"queue": "emails", "template": {"image": "w"}})
    )
    # The status shape the operator will write: counts and a standard condition.
    custom.patch_namespaced_custom_object_status(
        resources.GROUP, resources.VERSION, namespace, resources.JOB_QUEUE_PLURAL, "emails",
        {"status": {
            "observedGeneration": 1,
            "jobs": {"pending": 7, "running": 2, "failed": 1, "deadLettered": 4, "succeeded": 9},
            "oldestPendingAgeSeconds": 12.5,
            "connectedWorkers": 3,
            "conditions": [{
                "type": "Ready", "status": "True", "reason": "Dispatching", "message": "",
                "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1,
            }],
        }},
    )  # fmt: skip

    listed = _kubectl(devenv, tmp_path, "get", resources.CATEGORY, "-n", namespace)
    wide = _kubectl(devenv, tmp_path, "get", "jq", "-o", "wide", "-n", namespace)
    pools = _kubectl(devenv, tmp_path, "get", "qwp", "-o", "wide", "-n", namespace)

    assert "jobqueue.jobqueue.dev/emails" in listed
    assert "queueworkerpool.jobqueue.dev/emails-workers" in listed
    headers = wide.splitlines()[0].split()
    for column in ("NAME", "PENDING", "RUNNING", "FAILED", "DEAD", "WORKERS", "READY", "AGE"):
        assert column in headers
    assert headers[-4:] == ["PAUSED", "OLDEST", "SUCCEEDED", "MAXATTEMPTS"]
    row = dict(zip(headers, wide.splitlines()[1].split(), strict=True))
    assert (row["PENDING"], row["RUNNING"], row["FAILED"], row["DEAD"]) == ("7", "2", "1", "4")
    assert (row["WORKERS"], row["READY"], row["PAUSED"]) == ("3", "True", "true")
    assert (row["OLDEST"], row["SUCCEEDED"], row["MAXATTEMPTS"]) == ("12.5", "9", "3")
    assert pools.splitlines()[0].split() == [
        "NAME", "QUEUE", "REPLICAS", "READY", "WORKERS", "BUSY", "AGE", "CONCURRENCY", "IMAGE"
    ]  # fmt: skip


# Examples -----------------------------------------------------------------------------


def test_example_manifests_apply_and_parse(
    kube_api_client: kube_client.ApiClient, crds: None, namespace: str
) -> None:
    queue_manifest = yaml.safe_load((EXAMPLES / "queue.yaml").read_text())
    pool_manifest = yaml.safe_load((EXAMPLES / "pool.yaml").read_text())

    queue = resources.apply_resource(kube_api_client, queue_manifest, namespace=namespace)
    pool = resources.apply_resource(kube_api_client, pool_manifest, namespace=namespace)
    again = resources.apply_resource(kube_api_client, pool_manifest, namespace=namespace)

    assert queue["metadata"]["name"] == "emails"
    assert pool["metadata"]["name"] == "emails-workers"
    assert again["metadata"]["generation"] == pool["metadata"]["generation"]
    queue_spec = JobQueueSpec.from_manifest(queue["spec"])
    pool_spec = WorkerPoolSpec.from_manifest(pool["spec"])
    assert queue_spec != JobQueueSpec()
    assert pool_spec.queue == "emails"
    assert pool_spec.template.image == "ghcr.io/jobqueue/worker:0.1.0"
    assert (pool_spec.replicas, pool_spec.concurrency) == (2, 8)


def test_applying_a_refused_manifest_raises_invalid_input(
    kube_api_client: kube_client.ApiClient, crds: None, namespace: str
) -> None:
    with pytest.raises(InvalidInputError, match=r"spec\.maxAttempts"):
        resources.apply_resource(
            kube_api_client, _queue("refused", {"maxAttempts": 0}), namespace=namespace
        )
