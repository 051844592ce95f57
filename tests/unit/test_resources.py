"""Parsing JobQueue and QueueWorkerPool specs: defaults as the CRDs give them, loud errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from jobqueue import resources
from jobqueue.errors import InvalidInputError, PrerequisiteMissingError
from jobqueue.resources import (
    AutoscalingBounds,
    BackoffPolicy,
    JobQueueSpec,
    RateLimit,
    RetentionPolicy,
    WorkerPoolSpec,
)

REPOSITORY = Path(__file__).resolve().parents[2]

_POOL: dict[str, Any] = {"queue": "emails", "template": {"image": "worker:1"}}


# JobQueue -----------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [None, {}])
def test_empty_queue_spec_fills_every_default(spec: dict[str, Any] | None) -> None:
    parsed = JobQueueSpec.from_manifest(spec)

    assert parsed == JobQueueSpec(
        max_attempts=3,
        backoff=BackoffPolicy(initial_s=1.0, multiplier=2.0, max_s=300.0, jitter=0.1),
        timeout_s=600.0,
        paused=False,
        concurrency_limit=None,
        rate_limit=None,
        retention=RetentionPolicy(succeeded_s=86_400, failed_s=604_800),
        deletion_policy="Drain",
        allowed_kinds=frozenset({"Command", "Python"}),
        payload_limit_bytes=262_144,
    )


def test_queue_spec_reads_every_field() -> None:
    parsed = JobQueueSpec.from_manifest(
        {
            "maxAttempts": 7,
            "backoff": {"initialSeconds": 0.5, "multiplier": 3, "maxSeconds": 60, "jitter": 0},
            "timeoutSeconds": 30,
            "paused": True,
            "concurrencyLimit": 10,
            "rateLimit": {"perSecond": 2.5, "burst": 9},
            "retention": {"succeededSeconds": 0, "failedSeconds": 60},
            "deletionPolicy": "Cancel",
            "allowedKinds": ["Python"],
            "payloadLimitBytes": 1024,
        }
    )

    assert parsed == JobQueueSpec(
        max_attempts=7,
        backoff=BackoffPolicy(initial_s=0.5, multiplier=3.0, max_s=60.0, jitter=0.0),
        timeout_s=30.0,
        paused=True,
        concurrency_limit=10,
        rate_limit=RateLimit(per_second=2.5, burst=9),
        retention=RetentionPolicy(succeeded_s=0, failed_s=60),
        deletion_policy="Cancel",
        allowed_kinds=frozenset({"Python"}),
        payload_limit_bytes=1024,
    )


def test_partial_nested_objects_keep_defaults_for_the_rest() -> None:
    parsed = JobQueueSpec.from_manifest({"backoff": {"maxSeconds": 10}, "retention": {}})

    assert parsed.backoff == BackoffPolicy(max_s=10.0)
    assert parsed.retention == RetentionPolicy()


@pytest.mark.parametrize(("per_second", "burst"), [(0.2, 1), (1, 1), (2.5, 3), (100, 100)])
def test_rate_limit_burst_defaults_to_one_second_of_rate_rounded_up(
    per_second: float, burst: int
) -> None:
    parsed = JobQueueSpec.from_manifest({"rateLimit": {"perSecond": per_second}})

    assert parsed.rate_limit == RateLimit(per_second=float(per_second), burst=burst)


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ({"maxAttempts": 0}, "spec.maxAttempts"),
        ({"maxAttempts": 101}, "spec.maxAttempts"),
        ({"maxAttempts": "3"}, "spec.maxAttempts"),
        ({"maxAttempts": True}, "spec.maxAttempts"),
        ({"maxAttempts": 2.5}, "spec.maxAttempts"),
        ({"backoff": {"initialSeconds": 0}}, "spec.backoff.initialSeconds"),
        ({"backoff": {"multiplier": 0.5}}, "spec.backoff.multiplier"),
        ({"backoff": {"jitter": 1.5}}, "spec.backoff.jitter"),
        ({"backoff": {"initialSeconds": 10, "maxSeconds": 5}}, "spec.backoff.initialSeconds"),
        ({"backoff": "fast"}, "spec.backoff"),
        ({"timeoutSeconds": 0}, "spec.timeoutSeconds"),
        ({"timeoutSeconds": 604_801}, "spec.timeoutSeconds"),
        ({"timeoutSeconds": float("nan")}, "spec.timeoutSeconds"),
        ({"paused": "yes"}, "spec.paused"),
        ({"concurrencyLimit": 0}, "spec.concurrencyLimit"),
        ({"rateLimit": {}}, "spec.rateLimit.perSecond"),
        ({"rateLimit": {"perSecond": 0}}, "spec.rateLimit.perSecond"),
        ({"rateLimit": {"perSecond": 1, "burst": 0}}, "spec.rateLimit.burst"),
        ({"retention": {"failedSeconds": -1}}, "spec.retention.failedSeconds"),
        ({"deletionPolicy": "Orphan"}, "spec.deletionPolicy"),
        ({"allowedKinds": []}, "spec.allowedKinds"),
        ({"allowedKinds": ["Command", "Shell"]}, "spec.allowedKinds[1]"),
        ({"allowedKinds": ["Command", "Command"]}, "spec.allowedKinds"),
        ({"payloadLimitBytes": 16 * 1024 * 1024 + 1}, "spec.payloadLimitBytes"),
        ({"maxAttempt": 3}, "spec.maxAttempt"),
    ],
)
def test_bad_queue_spec_is_refused_naming_the_field(spec: dict[str, Any], named: str) -> None:
    with pytest.raises(InvalidInputError) as refused:
        JobQueueSpec.from_manifest(spec)

    assert str(refused.value).startswith(f"{named}:")


def test_backoff_order_error_names_both_fields() -> None:
    with pytest.raises(InvalidInputError, match=r"initialSeconds must not exceed .*maxSeconds"):
        JobQueueSpec.from_manifest({"backoff": {"initialSeconds": 10, "maxSeconds": 5}})


# QueueWorkerPool ----------------------------------------------------------------------


def test_minimal_pool_spec_fills_every_default() -> None:
    parsed = WorkerPoolSpec.from_manifest(_POOL)

    assert parsed.queue == "emails"
    assert parsed.replicas == 1
    assert parsed.concurrency == 4
    assert parsed.autoscaling is None
    assert parsed.drain_grace_s == 30
    assert parsed.template.image == "worker:1"
    assert parsed.template.image_pull_policy is None
    assert parsed.template.env == ()
    assert dict(parsed.template.resources) == {}
    assert parsed.template.affinity is None


def test_pool_template_keeps_kubernetes_shaped_fields_as_given() -> None:
    template = {
        "image": "worker:1",
        "imagePullPolicy": "Always",
        "resources": {"limits": {"cpu": "1"}},
        "env": [{"name": "A", "value": "1"}],
        "envFrom": [{"secretRef": {"name": "s"}}],
        "nodeSelector": {"pool": "workers"},
        "tolerations": [{"operator": "Exists"}],
        "affinity": {"nodeAffinity": {}},
        "serviceAccountName": "workers",
        "args": ["--verbose"],
        "labels": {"team": "mail"},
        "annotations": {"note": "x"},
    }

    parsed = WorkerPoolSpec.from_manifest({**_POOL, "template": template}).template

    assert parsed.image_pull_policy == "Always"
    assert parsed.resources == {"limits": {"cpu": "1"}}
    assert parsed.env == ({"name": "A", "value": "1"},)
    assert parsed.env_from == ({"secretRef": {"name": "s"}},)
    assert parsed.node_selector == {"pool": "workers"}
    assert parsed.tolerations == ({"operator": "Exists"},)
    assert parsed.affinity == {"nodeAffinity": {}}
    assert parsed.service_account_name == "workers"
    assert parsed.args == ("--verbose",)
    assert parsed.labels == {"team": "mail"}
    assert parsed.annotations == {"note": "x"}


def test_parsed_template_cannot_be_changed_through_its_mappings() -> None:
    parsed = WorkerPoolSpec.from_manifest({**_POOL, "template": {"image": "w", "labels": {}}})

    with pytest.raises(TypeError):
        parsed.template.labels["sneaky"] = "yes"  # type: ignore[index]


def test_autoscaling_defaults_min_replicas_and_target() -> None:
    parsed = WorkerPoolSpec.from_manifest({**_POOL, "autoscaling": {"maxReplicas": 5}})

    assert parsed.autoscaling == AutoscalingBounds(
        max_replicas=5, min_replicas=1, target_pending_per_worker=10
    )


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ({"template": {"image": "w"}}, "spec.queue"),
        ({**_POOL, "queue": ""}, "spec.queue"),
        ({**_POOL, "queue": "Emails"}, "spec.queue"),
        ({**_POOL, "queue": "q" * 64}, "spec.queue"),
        ({"queue": "emails"}, "spec.template"),
        ({"queue": "emails", "template": {}}, "spec.template.image"),
        ({**_POOL, "replicas": -1}, "spec.replicas"),
        ({**_POOL, "concurrency": 0}, "spec.concurrency"),
        ({**_POOL, "concurrency": 1001}, "spec.concurrency"),
        ({**_POOL, "drainGraceSeconds": 86_401}, "spec.drainGraceSeconds"),
        ({**_POOL, "autoscaling": {}}, "spec.autoscaling.maxReplicas"),
        ({**_POOL, "autoscaling": {"maxReplicas": 0}}, "spec.autoscaling.maxReplicas"),
        (
            {**_POOL, "autoscaling": {"minReplicas": 3, "maxReplicas": 2}},
            "spec.autoscaling.minReplicas",
        ),
        (
            {**_POOL, "autoscaling": {"maxReplicas": 2, "targetPendingPerWorker": 0}},
            "spec.autoscaling.targetPendingPerWorker",
        ),
        (
            {**_POOL, "template": {"image": "w", "imagePullPolicy": "Sometimes"}},
            "spec.template.imagePullPolicy",
        ),
        (
            {**_POOL, "template": {"image": "w", "env": [{"value": "1"}]}},
            "spec.template.env[0].name",
        ),
        ({**_POOL, "template": {"image": "w", "args": ["--a", 1]}}, "spec.template.args[1]"),
        (
            {**_POOL, "template": {"image": "w", "nodeSelector": {"a": 1}}},
            "spec.template.nodeSelector.a",
        ),
        (
            {**_POOL, "template": {"image": "w", "tolerations": ["x"]}},
            "spec.template.tolerations[0]",
        ),
        ({**_POOL, "template": {"image": "w", "imag": "x"}}, "spec.template.imag"),
    ],
)
def test_bad_pool_spec_is_refused_naming_the_field(spec: dict[str, Any], named: str) -> None:
    with pytest.raises(InvalidInputError) as refused:
        WorkerPoolSpec.from_manifest(spec)

    assert str(refused.value).startswith(f"{named}:")


def test_pool_without_spec_is_refused() -> None:
    with pytest.raises(InvalidInputError, match=r"^spec:"):
        WorkerPoolSpec.from_manifest(None)


# The CRDs and the examples on disk ----------------------------------------------------


def test_crd_files_declare_the_names_the_module_uses() -> None:
    everything = resources.load_crds(REPOSITORY / "crds")
    crds = {
        crd["spec"]["names"]["kind"]: crd
        for crd in everything
        if crd["spec"]["group"] == resources.GROUP
    }
    assert set(crds) == {resources.JOB_QUEUE_KIND, resources.WORKER_POOL_KIND}
    # Beside them, the peering CRD kopf's replicas meet through.
    (peering,) = [crd for crd in everything if crd["spec"]["group"] == "kopf.dev"]
    assert (peering["spec"]["names"]["plural"], peering["spec"]["scope"]) == (
        "clusterkopfpeerings",
        "Cluster",
    )

    queue_names = crds[resources.JOB_QUEUE_KIND]["spec"]["names"]
    pool_names = crds[resources.WORKER_POOL_KIND]["spec"]["names"]
    assert queue_names["plural"] == resources.JOB_QUEUE_PLURAL
    assert queue_names["shortNames"] == [resources.JOB_QUEUE_SHORT_NAME]
    assert pool_names["plural"] == resources.WORKER_POOL_PLURAL
    assert pool_names["shortNames"] == [resources.WORKER_POOL_SHORT_NAME]
    for crd in crds.values():
        assert crd["spec"]["group"] == resources.GROUP
        assert [version["name"] for version in crd["spec"]["versions"]] == [resources.VERSION]
        assert crd["spec"]["names"]["categories"] == [resources.CATEGORY]


def _properties_without_description(schema: dict[str, Any], path: str) -> list[str]:
    missing = []
    for name, child in schema.get("properties", {}).items():
        if name not in ("apiVersion", "kind", "metadata") and not child.get("description"):
            missing.append(f"{path}.{name}")
        missing += _properties_without_description(child, f"{path}.{name}")
        missing += _properties_without_description(child.get("items", {}), f"{path}.{name}[]")
    return missing


def test_every_crd_field_is_described() -> None:
    for crd in resources.load_crds(REPOSITORY / "crds"):
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]

        assert _properties_without_description(schema, crd["spec"]["names"]["kind"]) == []


def test_example_manifests_parse() -> None:
    examples = REPOSITORY / "manifests" / "examples"
    queue = yaml.safe_load((examples / "queue.yaml").read_text())
    pool = yaml.safe_load((examples / "pool.yaml").read_text())

    queue_spec = JobQueueSpec.from_manifest(queue["spec"])
    pool_spec = WorkerPoolSpec.from_manifest(pool["spec"])

    assert queue["metadata"]["name"] == "emails"
    assert queue_spec.deletion_policy == "Cancel"
    assert pool["metadata"]["name"] == "emails-workers"
    assert pool_spec.queue == "emails"
    assert pool_spec.template.image == "ghcr.io/jobqueue/worker:0.1.0"
    assert (pool_spec.replicas, pool_spec.concurrency) == (2, 8)


def test_missing_crd_directory_is_reported(tmp_path: Path) -> None:
    with pytest.raises(PrerequisiteMissingError, match="CustomResourceDefinition"):
        resources.load_crds(tmp_path / "nowhere")


def test_apply_refuses_a_manifest_of_another_kind() -> None:
    manifest = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}

    with pytest.raises(InvalidInputError, match="apiVersion/kind"):
        resources.apply_resource(None, manifest, namespace="default")  # type: ignore[arg-type]
