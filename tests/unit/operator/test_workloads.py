"""What a QueueWorkerPool becomes: the Deployment and HPA manifests, built without a cluster."""

from __future__ import annotations

from typing import Any

from jobqueue.operator import workloads
from jobqueue.resources import WorkerPoolSpec

BODY: dict[str, Any] = {
    "apiVersion": "jobqueue.dev/v1alpha1",
    "kind": "QueueWorkerPool",
    "metadata": {"name": "mail", "namespace": "team-a", "uid": "1234"},
}
ADDRESS = "jobqueue-operator.jobqueue-system.svc:7070"


def spec(**fields: Any) -> WorkerPoolSpec:
    manifest = {"queue": "emails", "template": {"image": "worker:1"}, **fields}
    return WorkerPoolSpec.from_manifest(manifest)


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(only)


def test_deployment_is_owned_by_the_pool_and_selects_its_pods() -> None:
    deployment = workloads.deployment(BODY, spec(replicas=3), operator_address=ADDRESS)

    (owner,) = deployment["metadata"]["ownerReferences"]
    assert owner == {
        "apiVersion": "jobqueue.dev/v1alpha1",
        "kind": "QueueWorkerPool",
        "name": "mail",
        "uid": "1234",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    assert deployment["metadata"]["namespace"] == "team-a"
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["selector"] == {"matchLabels": {"jobqueue.dev/pool": "mail"}}
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pod_labels["jobqueue.dev/pool"] == "mail"
    assert pod_labels["jobqueue.dev/queue"] == "emails"
    assert workloads.selector_string("mail") == "jobqueue.dev/pool=mail"


def test_worker_arguments_name_the_operator_queue_pool_and_concurrency() -> None:
    built = container(
        workloads.deployment(
            BODY,
            spec(concurrency=16, template={"image": "worker:1", "args": ["--handler", "m:f"]}),
            operator_address=ADDRESS,
        )
    )
    assert built["args"] == [
        "--operator", ADDRESS, "--queue", "emails", "--pool", "mail", "--concurrency", "16",
        "--handler", "m:f",
    ]  # fmt: skip


def test_pods_are_locked_down_and_get_the_drain_grace_plus_a_margin() -> None:
    deployment = workloads.deployment(BODY, spec(drainGraceSeconds=90), operator_address=ADDRESS)
    pod = deployment["spec"]["template"]["spec"]
    security = container(deployment)["securityContext"]

    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert pod["terminationGracePeriodSeconds"] == 90 + workloads.TERMINATION_MARGIN_S
    env = {item["name"]: item for item in container(deployment)["env"]}
    assert env["JQ_WORKER_DRAIN_GRACE_S"]["value"] == "90"
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_template_scheduling_and_environment_reach_the_pod() -> None:
    template = {
        "image": "worker:1",
        "env": [{"name": "SMTP_HOST", "value": "smtp"}],
        "envFrom": [{"secretRef": {"name": "smtp"}}],
        "nodeSelector": {"pool": "batch"},
        "tolerations": [{"key": "batch", "operator": "Exists"}],
        "serviceAccountName": "mailer",
        "resources": {"limits": {"memory": "512Mi"}},
    }
    deployment = workloads.deployment(BODY, spec(template=template), operator_address=ADDRESS)
    pod = deployment["spec"]["template"]["spec"]
    built = container(deployment)

    assert {"name": "SMTP_HOST", "value": "smtp"} in built["env"]
    assert built["envFrom"] == [{"secretRef": {"name": "smtp"}}]
    assert built["resources"] == {"limits": {"memory": "512Mi"}}
    assert pod["nodeSelector"] == {"pool": "batch"}
    assert pod["tolerations"] == [{"key": "batch", "operator": "Exists"}]
    assert pod["serviceAccountName"] == "mailer"


def test_autoscaler_only_with_autoscaling_and_it_scales_the_pool_on_pending_jobs() -> None:
    assert workloads.autoscaler(BODY, spec()) is None

    hpa = workloads.autoscaler(
        BODY, spec(autoscaling={"minReplicas": 0, "maxReplicas": 8, "targetPendingPerWorker": 25})
    )
    assert hpa is not None
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "jobqueue.dev/v1alpha1",
        "kind": "QueueWorkerPool",
        "name": "mail",
    }
    # An HPA cannot go below one replica without a feature gate.
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 8)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["external"]["metric"]["name"] == "jobqueue_queue_jobs"
    assert metric["external"]["metric"]["selector"]["matchLabels"] == {
        "queue": "emails",
        "state": "pending",
    }
    assert metric["external"]["target"] == {"type": "AverageValue", "averageValue": "25"}


def test_workers_trust_the_operator_as_it_serves() -> None:
    def trusted(trust: workloads.OperatorTrust) -> tuple[dict[str, Any], dict[str, Any]]:
        built = workloads.deployment(BODY, spec(), operator_address=ADDRESS, trust=trust)
        env = {item["name"]: item.get("value") for item in container(built)["env"]}
        return env, built["spec"]["template"]["spec"]

    env, _ = trusted(workloads.OperatorTrust(plaintext=True))
    assert env["JQ_WORKER_TLS_INSECURE_PLAINTEXT"] == "true"

    env, pod = trusted(workloads.OperatorTrust(ca_config_map="mail-operator-ca"))
    assert env["JQ_WORKER_TLS_CA_FILE"] == "/etc/jobqueue/operator-ca/ca.crt"
    assert {"name": "operator-ca", "configMap": {"name": "mail-operator-ca"}} in pod["volumes"]

    env, pod = trusted(workloads.OperatorTrust())  # the image's system roots
    assert not {"JQ_WORKER_TLS_INSECURE_PLAINTEXT", "JQ_WORKER_TLS_CA_FILE"} & set(env)
    assert [volume["name"] for volume in pod["volumes"]] == ["tmp"]


def test_the_ca_config_map_sits_beside_the_pool_and_is_owned_by_it() -> None:
    config_map = workloads.ca_config_map(BODY, "-----BEGIN CERTIFICATE-----\n")
    assert config_map["metadata"]["name"] == "mail-operator-ca"
    assert config_map["metadata"]["namespace"] == "team-a"
    assert config_map["metadata"]["ownerReferences"][0]["uid"] == "1234"
    assert config_map["data"] == {"ca.crt": "-----BEGIN CERTIFICATE-----\n"}
