"""``kubectl apply -k manifests/`` against the local kube-apiserver, and what it holds.

kubectl is the one the local environment builds with the control plane. The base is
rendered with kubectl's own kustomize and compared with the chart where they must agree
(the RBAC rules, the CRDs, the operator's security settings), then applied for real with
server-side apply, twice, since GitOps applies the same thing over and over. The namespace,
ClusterRole and binding it creates are removed afterwards; the CRDs are left in place
because other tests in the session use them, and they are the repository's own.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as kube_client

from jobqueue import config as jobqueue_config
from jobqueue.devenv import Environment
from tests.deploy_helpers import (
    CRDS,
    MANIFESTS,
    OPERATOR_PERMISSIONS,
    only,
    permissions,
    render,
)

pytestmark = pytest.mark.integration

KUBECTL_TIMEOUT_S = 60
BASE_NAMESPACE = "jobqueue-system"
CLUSTER_SCOPED = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}


def kubectl(
    devenv: Environment, cache: Path, *arguments: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    assert devenv.kube_bin_dir is not None
    assert devenv.kubeconfig is not None
    result = subprocess.run(
        [
            str(devenv.kube_bin_dir / "kubectl"),
            f"--kubeconfig={devenv.kubeconfig}",
            f"--cache-dir={cache}",
            *arguments,
        ],
        capture_output=True,
        text=True,
        timeout=KUBECTL_TIMEOUT_S,
        env=os.environ,
        check=False,
    )
    if check:
        assert result.returncode == 0, f"kubectl {' '.join(arguments)}:\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kubectl-cache")


@pytest.fixture(scope="module")
def base(devenv: Environment, cache: Path) -> list[dict[str, Any]]:
    rendered = kubectl(devenv, cache, "kustomize", str(MANIFESTS)).stdout
    return [document for document in yaml.safe_load_all(rendered) if document]


@pytest.fixture(scope="module")
def applied(
    devenv: Environment, cache: Path, kube_api_client: kube_client.ApiClient
) -> Iterator[subprocess.CompletedProcess[str]]:
    result = kubectl(devenv, cache, "apply", "-k", str(MANIFESTS), "--server-side")
    try:
        yield result
    finally:
        core = kube_client.CoreV1Api(kube_api_client)
        rbac = kube_client.RbacAuthorizationV1Api(kube_api_client)
        core.delete_namespace(BASE_NAMESPACE)
        rbac.delete_cluster_role_binding("jobqueue-operator")
        rbac.delete_cluster_role("jobqueue-operator")


# Rendered --------------------------------------------------------------------------------


def test_base_puts_every_namespaced_object_in_jobqueue_system(base: list[dict[str, Any]]) -> None:
    for document in base:
        namespace = document["metadata"].get("namespace")
        if document["kind"] in CLUSTER_SCOPED:
            assert namespace is None, document["metadata"]["name"]
        else:
            assert namespace == BASE_NAMESPACE, document["metadata"]["name"]
    assert only(base, "Namespace")["metadata"]["name"] == BASE_NAMESPACE
    binding = only(base, "ClusterRoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "jobqueue-operator", "namespace": BASE_NAMESPACE}
    ]


def test_base_rbac_is_the_chart_rbac(base: list[dict[str, Any]]) -> None:
    chart_role = only(render(), "ClusterRole")

    assert permissions(only(base, "ClusterRole")) == permissions(chart_role)
    assert permissions(only(base, "ClusterRole")) == OPERATOR_PERMISSIONS


def test_base_crds_are_the_repository_crds(base: list[dict[str, Any]]) -> None:
    served = {d["metadata"]["name"]: d for d in base if d["kind"] == "CustomResourceDefinition"}
    copies = {path.name: path.read_bytes() for path in (MANIFESTS / "base" / "crds").glob("*")}
    originals = {path.name: path.read_bytes() for path in CRDS.glob("*.yaml")}

    assert copies == originals, "manifests/base/crds differs from crds/: `make sync-crds`"
    assert "clusterkopfpeerings.kopf.dev" in served
    for path in CRDS.glob("*.yaml"):
        name = yaml.safe_load(path.read_text())["metadata"]["name"]
        # kustomize adds the part-of label; everything else is the file as written.
        served[name]["metadata"]["labels"].pop("app.kubernetes.io/part-of")
        assert served[name] == yaml.safe_load(path.read_text())


def test_base_operator_is_locked_down_like_the_chart(base: list[dict[str, Any]]) -> None:
    def container(documents: list[dict[str, Any]]) -> dict[str, Any]:
        pod = only(documents, "Deployment")["spec"]["template"]["spec"]
        return dict(pod["containers"][0])

    ours, charts = container(base), container(render())

    for key in ("securityContext", "livenessProbe", "readinessProbe", "ports", "resources"):
        assert ours[key] == charts[key], key
    pod = only(base, "Deployment")["spec"]["template"]["spec"]
    assert (
        pod["securityContext"]
        == only(render(), "Deployment")["spec"]["template"]["spec"]["securityContext"]
    )
    env = {variable["name"]: variable for variable in ours["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["JQ_DATABASE_PASSWORD"]["valueFrom"]["secretKeyRef"]["optional"] is True


def test_base_serves_tls_from_a_secret_mounted_like_the_charts(
    base: list[dict[str, Any]], tmp_path: Path
) -> None:
    def tls_parts(documents: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
        pod = only(documents, "Deployment")["spec"]["template"]["spec"]
        (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "tls"]
        (volume,) = [v for v in pod["volumes"] if v["name"] == "tls"]
        return mount, volume

    # The chart, rendered under the base's names, mounts the same Secret the same way.
    chart = render(sets=["fullnameOverride=jobqueue-operator"])
    assert tls_parts(base) == tls_parts(chart)
    assert tls_parts(base)[1]["secret"]["secretName"] == "jobqueue-operator-tls"
    config_map = next(d for d in base if d["kind"] == "ConfigMap")
    path = tmp_path / "config.yaml"
    path.write_text(config_map["data"]["config.yaml"])
    settings = jobqueue_config.load_settings(path, environ={})
    mount_path = tls_parts(base)[0]["mountPath"]
    assert settings.operator.tls.cert_file == f"{mount_path}/tls.crt"
    assert settings.operator.tls.key_file == f"{mount_path}/tls.key"
    assert settings.operator.auth.mode == "kubernetes"


def test_base_settings_point_workers_at_its_service(
    base: list[dict[str, Any]], tmp_path: Path
) -> None:
    config_map = next(d for d in base if d["kind"] == "ConfigMap")
    deployment = only(base, "Deployment")
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    path = tmp_path / "config.yaml"
    path.write_text(config_map["data"]["config.yaml"])

    settings = jobqueue_config.load_settings(path, environ={})

    # kustomize renamed the generated ConfigMap and the volume that mounts it alike.
    assert {"name": "config", "configMap": {"name": config_map["metadata"]["name"]}} in volumes
    service = only(base, "Service")
    port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc")
    expected = f"{service['metadata']['name']}.{BASE_NAMESPACE}.svc:{port}"
    assert settings.operator.service_address == expected
    assert settings.operator.grpc_address.endswith(f":{port}")


# Applied ---------------------------------------------------------------------------------


def test_apply_k_installs_the_operator(
    kube_api_client: kube_client.ApiClient, applied: subprocess.CompletedProcess[str]
) -> None:
    apps = kube_client.AppsV1Api(kube_api_client)
    core = kube_client.CoreV1Api(kube_api_client)
    extensions = kube_client.ApiextensionsV1Api(kube_api_client)

    assert "deployment.apps/jobqueue-operator serverside-applied" in applied.stdout
    assert apps.read_namespaced_deployment("jobqueue-operator", BASE_NAMESPACE).spec.replicas == 2
    service = core.read_namespaced_service("jobqueue-operator", BASE_NAMESPACE)
    assert {port.port for port in service.spec.ports} == {7070, 9090}
    assert core.read_namespaced_service_account("jobqueue-operator", BASE_NAMESPACE)
    assert extensions.read_custom_resource_definition("clusterkopfpeerings.kopf.dev")


def test_apply_k_again_changes_nothing(
    devenv: Environment,
    cache: Path,
    kube_api_client: kube_client.ApiClient,
    applied: subprocess.CompletedProcess[str],
) -> None:
    apps = kube_client.AppsV1Api(kube_api_client)
    before = apps.read_namespaced_deployment("jobqueue-operator", BASE_NAMESPACE)

    kubectl(devenv, cache, "apply", "-k", str(MANIFESTS), "--server-side")

    after = apps.read_namespaced_deployment("jobqueue-operator", BASE_NAMESPACE)
    # The controller may still be writing status; the spec, and so the generation, stay.
    assert after.metadata.generation == before.metadata.generation
    assert after.spec.to_dict() == before.spec.to_dict()


def test_dev_dependencies_pass_a_server_side_dry_run(
    devenv: Environment, cache: Path, applied: subprocess.CompletedProcess[str]
) -> None:
    result = kubectl(
        devenv, cache, "apply", "-k", str(MANIFESTS / "dev"), "--server-side", "--dry-run=server"
    )

    for name in ("deployment.apps/postgresql", "deployment.apps/redis", "deployment.apps/kafka"):
        assert f"{name} serverside-applied (server dry run)" in result.stdout


def test_examples_are_accepted_by_the_api_server(
    devenv: Environment,
    cache: Path,
    kube_api_client: kube_client.ApiClient,
    namespace: str,
    applied: subprocess.CompletedProcess[str],
) -> None:
    examples = MANIFESTS / "examples"
    files = ["queue.yaml", "pool.yaml", "pool-autoscaling.yaml"]
    arguments = [argument for name in files for argument in ("-f", str(examples / name))]

    kubectl(devenv, cache, "apply", "--server-side", "-n", namespace, *arguments)

    custom = kube_client.CustomObjectsApi(kube_api_client)
    pool = custom.get_namespaced_custom_object(
        "jobqueue.dev", "v1alpha1", namespace, "queueworkerpools", "emails-autoscaled"
    )
    assert pool["spec"]["autoscaling"]["maxReplicas"] == 10
    # The API server filled in what the example left out.
    assert pool["spec"]["replicas"] == 1
    listed = kubectl(devenv, cache, "get", "jobqueue-all", "-n", namespace, "-o", "name")
    assert sorted(listed.stdout.split()) == [
        "jobqueue.jobqueue.dev/emails",
        "queueworkerpool.jobqueue.dev/emails-autoscaled",
        "queueworkerpool.jobqueue.dev/emails-workers",
    ]


def _allowed(
    api_client: kube_client.ApiClient, namespace: str, account: str, verb: str, queue: str
) -> bool:
    review = kube_client.AuthorizationV1Api(api_client).create_subject_access_review(
        kube_client.V1SubjectAccessReview(
            spec=kube_client.V1SubjectAccessReviewSpec(
                user=f"system:serviceaccount:{namespace}:{account}",
                groups=["system:serviceaccounts", "system:authenticated"],
                resource_attributes=kube_client.V1ResourceAttributes(
                    group="jobqueue.dev", resource="jobqueues", subresource="jobs",
                    name=queue, verb=verb, namespace=namespace,
                ),
            )
        )
    )  # fmt: skip
    return bool(review.status.allowed)


def test_kind_examples_access_lets_workers_work_and_the_tests_call(
    devenv: Environment, cache: Path, kube_api_client: kube_client.ApiClient, namespace: str
) -> None:
    # The file is written for jobqueue-examples; the test applies it in a namespace of its own.
    manifest = (MANIFESTS / "dev" / "examples-access.yaml").read_text()
    moved = manifest.replace("namespace: jobqueue-examples", f"namespace: {namespace}")
    assert "jobqueue-examples" not in yaml.safe_dump_all(yaml.safe_load_all(moved))
    path = cache / f"examples-access-{namespace}.yaml"
    path.write_text(moved)

    kubectl(devenv, cache, "apply", "--server-side", "-f", str(path))

    def allowed(account: str, verb: str, queue: str = "emails") -> bool:
        return _allowed(kube_api_client, namespace, account, verb, queue)

    assert allowed("default", "work")
    assert not allowed("default", "submit")
    assert not allowed("default", "work", queue="other")
    for verb in ("submit", "get", "watch", "status"):
        assert allowed("e2e-caller", verb), verb
    assert not allowed("e2e-caller", "work")
    assert not allowed("e2e-caller", "pause")
    assert not allowed("e2e-caller", "submit", queue="other")
    # The kind tests' own queue, beside the examples'.
    assert allowed("default", "work", queue="e2e-commands")
    assert allowed("e2e-caller", "submit", queue="e2e-commands")
