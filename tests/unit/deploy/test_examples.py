"""The example resources and the Argo CD Application parse as what they claim to be.

The API server's verdict on the examples is in ``tests/integration/deploy/test_manifests.py``
(they are applied there); these checks need no server: each example parses with the same
code the operator uses, and the Application's chart values pass the chart's schema.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from jobqueue.resources import JobQueueSpec, WorkerPoolSpec
from tests.deploy_helpers import CHART, MANIFESTS, REPOSITORY, helm

EXAMPLES = MANIFESTS / "examples"


def _load(name: str) -> dict[str, Any]:
    document = yaml.safe_load((EXAMPLES / name).read_text())
    assert isinstance(document, dict)
    return document


def test_queue_and_pools_parse_as_the_operator_reads_them() -> None:
    queue = JobQueueSpec.from_manifest(_load("queue.yaml")["spec"])
    pool = WorkerPoolSpec.from_manifest(_load("pool.yaml")["spec"])
    autoscaled = _load("pool-autoscaling.yaml")
    autoscaled_spec = WorkerPoolSpec.from_manifest(autoscaled["spec"])

    assert pool.queue == autoscaled_spec.queue == _load("queue.yaml")["metadata"]["name"]
    assert queue.max_attempts == 5
    assert pool.autoscaling is None
    assert autoscaled_spec.autoscaling is not None
    assert autoscaled_spec.autoscaling.max_replicas == 10
    assert autoscaled_spec.autoscaling.target_pending_per_worker == 20
    # The HPA owns replicas; a GitOps-managed replicas field would fight it.
    assert "replicas" not in autoscaled["spec"]


def test_argocd_application_installs_this_chart_with_valid_values(tmp_path: Path) -> None:
    application = _load("argocd-application.yaml")
    source = application["spec"]["source"]
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(source["helm"]["valuesObject"]))

    assert (application["apiVersion"], application["kind"]) == (
        "argoproj.io/v1alpha1",
        "Application",
    )
    assert REPOSITORY / source["path"] == CHART
    assert "ServerSideApply=true" in application["spec"]["syncPolicy"]["syncOptions"]
    ignored = application["spec"]["ignoreDifferences"]
    assert {
        "group": "jobqueue.dev",
        "kind": "QueueWorkerPool",
        "jsonPointers": ["/spec/replicas"],
    } in (ignored)
    helm("template", source["helm"]["releaseName"], str(CHART), "--values", str(values))


def test_kind_values_pass_the_chart_schema() -> None:
    result = helm(
        "template", "jobqueue", str(CHART), "--namespace", "jobqueue-system",
        "--values", str(MANIFESTS / "dev" / "helm-values.yaml"),
    )  # fmt: skip

    assert 'image: "ghcr.io/jobqueue/operator:0.1.0"' in result.stdout
    assert "imagePullPolicy: Never" in result.stdout


def test_base_certificate_example_is_the_charts_for_the_base() -> None:
    example = _load("certificate.yaml")
    base = MANIFESTS / "base"
    deployment = yaml.safe_load((base / "deployment.yaml").read_text())
    settings = yaml.safe_load((base / "config.yaml").read_text())["operator"]
    rendered = helm(
        "template", "jobqueue", str(CHART), "--namespace", "jobqueue-system",
        "--set", "fullnameOverride=jobqueue-operator",
        "--set", "tls.secretName=jobqueue-operator-tls",
        "--set", "tls.certManager.enabled=true",
        "--set", "tls.certManager.issuerRef.name=jobqueue-ca",
        "--show-only", "templates/certificate.yaml",
    ).stdout  # fmt: skip

    # The Secret it fills is the one the base mounts, and it names the host workers dial.
    volumes = {
        volume["name"]: volume for volume in deployment["spec"]["template"]["spec"]["volumes"]
    }
    assert example["spec"]["secretName"] == volumes["tls"]["secret"]["secretName"]
    assert settings["service_address"].rpartition(":")[0] in example["spec"]["dnsNames"]
    # Otherwise it is what the chart asks cert-manager for.
    assert example["spec"] == yaml.safe_load(rendered)["spec"]


def test_kind_values_serve_tls_with_what_the_kind_script_makes() -> None:
    values = yaml.safe_load((MANIFESTS / "dev" / "helm-values.yaml").read_text())
    script = (REPOSITORY / "scripts" / "kind-e2e.sh").read_text()

    def assigned(variable: str) -> str:
        (value,) = re.findall(rf"^{variable}=(\S+)$", script, flags=re.MULTILINE)
        return value

    assert not values["config"].get("operator", {}).get("tls", {}).get("insecure_plaintext")
    # The Secret the chart mounts and the ConfigMap it names are the ones the script makes.
    assert values["tls"]["secretName"] == assigned("TLS_SECRET")
    assert values["tls"]["caConfigMapName"] == assigned("CA_CONFIGMAP")
    assert "scripts/dev-certificate.sh" in script
