"""The chart installed into a real kube-apiserver, and its RBAC proved with the real authorizer.

One release per module, in a namespace of its own. The proof of the ClusterRole has two
halves: the chart's ServiceAccount gets a token through the TokenRequest API and, as that
account, performs each kind of call the operator makes (and is refused others with 403);
then the API server's own authorizer is asked, through SubjectAccessReviews, about every
permission the operator was granted and about neighbours it must not have.

No pod runs here (there is no kubelet), so the operator Deployment's pods stay Pending; what
is checked is what the API server holds and allows. The last test runs the real operator as
a local process instead, with the chart's settings file, a token of the chart's account, and
the certificate from a Secret the way the Deployment mounts it: TLS on, and every gRPC call
(a worker's registration too) checked against the API server with nothing but the chart's
ClusterRole.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as kube_client
from kubernetes import watch as kube_watch

from jobqueue import resources
from jobqueue.api.v1 import jobs_pb2
from jobqueue.client import Client, job_spec
from jobqueue.devenv import Environment
from jobqueue.devenv.certificates import mint_serving_certificate
from jobqueue.devenv.processes import free_port
from jobqueue.errors import PermissionDeniedError, UnauthenticatedError, UnavailableError
from tests.conftest import KafkaTarget
from tests.deploy_helpers import CHART, CRDS, OPERATOR_PERMISSIONS, REPOSITORY, helm
from tests.integration.security.cluster import Cluster

pytestmark = pytest.mark.integration

WATCH_TIMEOUT_S = 10


@dataclass(frozen=True)
class Release:
    name: str
    namespace: str
    service_account: str
    environment: dict[str, str]  # KUBECONFIG and Helm's own directories


def _helm_environment(devenv: Environment, home: Path) -> dict[str, str]:
    """Point helm at the local API server and keep its cache and config out of $HOME."""
    assert devenv.kubeconfig is not None
    return {
        **os.environ,
        "KUBECONFIG": str(devenv.kubeconfig),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }


def _peering_exists(api_client: kube_client.ApiClient) -> bool:
    custom = kube_client.CustomObjectsApi(api_client)
    try:
        custom.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", "jobqueue")
    except kube_client.ApiException as error:
        if error.status == 404:
            return False
        raise
    return True


@pytest.fixture(scope="module")
def release(
    devenv: Environment,
    kube_api_client: kube_client.ApiClient,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Release]:
    core = kube_client.CoreV1Api(kube_api_client)
    suffix = uuid.uuid4().hex[:8]
    namespace = f"helm-{suffix}"
    core.create_namespace(
        kube_client.V1Namespace(metadata=kube_client.V1ObjectMeta(name=namespace))
    )
    environment = _helm_environment(devenv, tmp_path_factory.mktemp("helm"))
    name = f"jq-{suffix}"

    # The peering object is cluster-wide and has a fixed name: another test (or release) may
    # have made it already, and Helm refuses to adopt what it did not create.
    peering = "false" if _peering_exists(kube_api_client) else "true"
    helm(
        "install", name, str(CHART), "--namespace", namespace,
        "--set", f"peering.create={peering}",
        "--set", "secrets.databasePassword.name=jobqueue-postgres",
        "--set", "workerServiceAccount.create=true",
        "--set", f"workerServiceAccount.namespaces[0]={namespace}",
        "--timeout", "60s",
        environment=environment,
    )  # fmt: skip
    try:
        yield Release(name, namespace, f"{name}-jobqueue", environment)
    finally:
        helm("uninstall", name, "--namespace", namespace, environment=environment, check=False)
        core.delete_namespace(namespace)


def _client_as(admin: kube_client.ApiClient, token: str) -> kube_client.ApiClient:
    """An API client with the admin's server and CA, authenticated by a bearer token only."""
    configuration = copy.copy(admin.configuration)
    configuration.cert_file = None
    configuration.key_file = None
    configuration.api_key = {"authorization": token}
    configuration.api_key_prefix = {"authorization": "Bearer"}
    return kube_client.ApiClient(configuration)


def _token_for(api_client: kube_client.ApiClient, release: Release) -> str:
    request = kube_client.AuthenticationV1TokenRequest(
        spec=kube_client.V1TokenRequestSpec(audiences=[], expiration_seconds=600)
    )
    response = kube_client.CoreV1Api(api_client).create_namespaced_service_account_token(
        release.service_account, release.namespace, request
    )
    return str(response.status.token)


@pytest.fixture(scope="module")
def operator_client(
    kube_api_client: kube_client.ApiClient, release: Release
) -> Iterator[kube_client.ApiClient]:
    client = _client_as(kube_api_client, _token_for(kube_api_client, release))
    yield client
    client.close()


def _refused(call: Callable[[], object]) -> int:
    with pytest.raises(kube_client.ApiException) as refused:
        call()
    return int(refused.value.status)


# What Helm installed ----------------------------------------------------------------------


def test_install_creates_the_operator_objects(
    kube_api_client: kube_client.ApiClient, release: Release
) -> None:
    status = json.loads(
        helm(
            "status", release.name, "--namespace", release.namespace, "--output", "json",
            environment=release.environment,
        ).stdout
    )  # fmt: skip
    apps = kube_client.AppsV1Api(kube_api_client)
    core = kube_client.CoreV1Api(kube_api_client)
    rbac = kube_client.RbacAuthorizationV1Api(kube_api_client)
    extensions = kube_client.ApiextensionsV1Api(kube_api_client)

    assert status["info"]["status"] == "deployed"
    deployment = apps.read_namespaced_deployment(release.service_account, release.namespace)
    assert deployment.spec.replicas == 2
    (container,) = deployment.spec.template.spec.containers
    assert container.security_context.read_only_root_filesystem is True
    env = {variable.name: variable for variable in container.env}
    assert env["JQ_DATABASE_PASSWORD"].value_from.secret_key_ref.name == "jobqueue-postgres"
    service = core.read_namespaced_service(release.service_account, release.namespace)
    assert {(port.name, port.port) for port in service.spec.ports} == {
        ("grpc", 7070),
        ("metrics", 9090),
    }
    config_map = core.read_namespaced_config_map(
        f"{release.service_account}-config", release.namespace
    )
    assert yaml.safe_load(config_map.data["config.yaml"])["operator"]["grpc_address"].endswith(
        ":7070"
    )
    assert core.read_namespaced_service_account("jobqueue-worker", release.namespace)
    policy = kube_client.PolicyV1Api(kube_api_client)
    assert (
        policy.read_namespaced_pod_disruption_budget(
            release.service_account, release.namespace
        ).spec.max_unavailable
        == 1
    )
    binding = rbac.read_cluster_role_binding(release.service_account)
    assert binding.subjects[0].namespace == release.namespace
    for crd in ("jobqueues.jobqueue.dev", "queueworkerpools.jobqueue.dev"):
        conditions = extensions.read_custom_resource_definition(crd).status.conditions
        assert any(c.type == "Established" and c.status == "True" for c in conditions)
    assert _peering_exists(kube_api_client)


def test_upgrade_with_new_settings_rolls_the_operator(
    kube_api_client: kube_client.ApiClient, release: Release
) -> None:
    apps = kube_client.AppsV1Api(kube_api_client)

    def checksum() -> str:
        deployment = apps.read_namespaced_deployment(release.service_account, release.namespace)
        return str(deployment.spec.template.metadata.annotations["checksum/config"])

    before = checksum()
    helm(
        "upgrade", release.name, str(CHART), "--namespace", release.namespace,
        "--reuse-values", "--set", "config.logging.level=DEBUG",
        environment=release.environment,
    )  # fmt: skip

    assert checksum() != before
    config_map = kube_client.CoreV1Api(kube_api_client).read_namespaced_config_map(
        f"{release.service_account}-config", release.namespace
    )
    assert yaml.safe_load(config_map.data["config.yaml"])["logging"]["level"] == "DEBUG"


def test_uninstall_removes_cluster_wide_objects(
    devenv: Environment,
    kube_api_client: kube_client.ApiClient,
    namespace: str,
    tmp_path: Path,
) -> None:
    environment = _helm_environment(devenv, tmp_path)
    name = f"gone-{uuid.uuid4().hex[:6]}"
    rbac = kube_client.RbacAuthorizationV1Api(kube_api_client)
    helm(
        "install", name, str(CHART), "--namespace", namespace, "--set", "peering.create=false",
        environment=environment,
    )  # fmt: skip
    assert rbac.read_cluster_role(f"{name}-jobqueue")

    helm("uninstall", name, "--namespace", namespace, environment=environment)

    assert _refused(lambda: rbac.read_cluster_role(f"{name}-jobqueue")) == 404
    assert _refused(lambda: rbac.read_cluster_role_binding(f"{name}-jobqueue")) == 404


# The operator's ServiceAccount, call by call ------------------------------------------------


def _queue(name: str) -> dict[str, Any]:
    return {
        "apiVersion": resources.API_VERSION,
        "kind": resources.JOB_QUEUE_KIND,
        "metadata": {"name": name},
        "spec": {},
    }


def test_operator_account_watches_queues_and_writes_their_status(
    kube_api_client: kube_client.ApiClient,
    operator_client: kube_client.ApiClient,
    release: Release,
) -> None:
    admin = kube_client.CustomObjectsApi(kube_api_client)
    operator = kube_client.CustomObjectsApi(operator_client)
    group, version, plural = resources.GROUP, resources.VERSION, resources.JOB_QUEUE_PLURAL
    admin.create_namespaced_custom_object(group, version, release.namespace, plural, _queue("q"))

    # Cluster-wide list and watch, as kopf does; the watch ends at its first event.
    listed = operator.list_cluster_custom_object(group, version, plural)
    assert "q" in {item["metadata"]["name"] for item in listed["items"]}
    stream = kube_watch.Watch().stream(
        operator.list_namespaced_custom_object, group, version, release.namespace, plural,
        timeout_seconds=WATCH_TIMEOUT_S,
    )  # fmt: skip
    first = next(stream)
    stream.close()
    assert (first["type"], first["object"]["metadata"]["name"]) == ("ADDED", "q")

    # kopf's progress annotations and finalizer go on the object, the results on status.
    operator.patch_namespaced_custom_object(
        group, version, release.namespace, plural, "q",
        {"metadata": {"annotations": {"kopf.zalando.org/last-handled-configuration": "{}"}}},
    )  # fmt: skip
    operator.patch_namespaced_custom_object_status(
        group, version, release.namespace, plural, "q",
        {"status": {"observedGeneration": 1, "connectedWorkers": 3}},
    )  # fmt: skip
    stored = admin.get_namespaced_custom_object(group, version, release.namespace, plural, "q")
    assert stored["status"]["connectedWorkers"] == 3

    # Creating and deleting queues is GitOps' business, not the operator's.
    assert _refused(
        lambda: operator.create_namespaced_custom_object(
            group, version, release.namespace, plural, _queue("mine")
        )
    ) == 403  # fmt: skip
    assert _refused(
        lambda: operator.delete_namespaced_custom_object(
            group, version, release.namespace, plural, "q"
        )
    ) == 403  # fmt: skip


def test_operator_account_manages_worker_deployments_and_autoscalers(
    operator_client: kube_client.ApiClient, release: Release
) -> None:
    apps = kube_client.AppsV1Api(operator_client)
    autoscaling = kube_client.AutoscalingV2Api(operator_client)
    labels = {"jobqueue.dev/pool": "p"}
    deployment = kube_client.V1Deployment(
        metadata=kube_client.V1ObjectMeta(name="p-workers", labels=labels),
        spec=kube_client.V1DeploymentSpec(
            replicas=1,
            selector=kube_client.V1LabelSelector(match_labels=labels),
            template=kube_client.V1PodTemplateSpec(
                metadata=kube_client.V1ObjectMeta(labels=labels),
                spec=kube_client.V1PodSpec(
                    containers=[kube_client.V1Container(name="worker", image="worker:test")]
                ),
            ),
        ),
    )

    apps.create_namespaced_deployment(release.namespace, deployment)
    apps.patch_namespaced_deployment("p-workers", release.namespace, {"spec": {"replicas": 3}})
    assert apps.read_namespaced_deployment("p-workers", release.namespace).spec.replicas == 3
    autoscaling.create_namespaced_horizontal_pod_autoscaler(
        release.namespace,
        kube_client.V2HorizontalPodAutoscaler(
            metadata=kube_client.V1ObjectMeta(name="p-workers"),
            spec=kube_client.V2HorizontalPodAutoscalerSpec(
                scale_target_ref=kube_client.V2CrossVersionObjectReference(
                    api_version=resources.API_VERSION, kind=resources.WORKER_POOL_KIND, name="p"
                ),
                min_replicas=1,
                max_replicas=5,
            ),
        ),
    )
    assert autoscaling.list_namespaced_horizontal_pod_autoscaler(release.namespace).items
    autoscaling.delete_namespaced_horizontal_pod_autoscaler("p-workers", release.namespace)
    apps.delete_namespaced_deployment("p-workers", release.namespace)

    # Pods are read (a worker's pod must belong to its pool), never made or removed.
    core = kube_client.CoreV1Api(operator_client)
    core.list_pod_for_all_namespaces(limit=1)
    assert _refused(lambda: core.delete_collection_namespaced_pod(release.namespace)) == 403


def test_operator_account_posts_events_and_reviews_tokens(
    operator_client: kube_client.ApiClient, release: Release
) -> None:
    core = kube_client.CoreV1Api(operator_client)
    events = kube_client.EventsV1Api(operator_client)
    involved = kube_client.V1ObjectReference(
        api_version=resources.API_VERSION, kind=resources.JOB_QUEUE_KIND,
        name="q", namespace=release.namespace,
    )  # fmt: skip
    core.create_namespaced_event(
        release.namespace,
        kube_client.CoreV1Event(
            metadata=kube_client.V1ObjectMeta(name=f"q.{uuid.uuid4().hex[:12]}"),
            involved_object=involved,
            reason="Reconciled",
            message="The queue is ready.",
            type="Normal",
        ),
    )
    events.create_namespaced_event(
        release.namespace,
        kube_client.EventsV1Event(
            metadata=kube_client.V1ObjectMeta(name=f"q.{uuid.uuid4().hex[:12]}"),
            regarding=involved,
            reason="Reconciled",
            action="Reconcile",
            note="The queue is ready.",
            type="Normal",
            event_time=datetime.now(UTC),
            reporting_controller="jobqueue.dev/operator",
            reporting_instance="operator-0",
        ),
    )

    # A worker presents its ServiceAccount token; the operator asks who it is, then whether it
    # may act. Here the operator's own token stands in for a worker's.
    token = operator_client.configuration.api_key["authorization"]
    review = kube_client.AuthenticationV1Api(operator_client).create_token_review(
        kube_client.V1TokenReview(spec=kube_client.V1TokenReviewSpec(token=token))
    )
    assert review.status.authenticated is True
    username = review.status.user.username
    assert username == f"system:serviceaccount:{release.namespace}:{release.service_account}"
    access = kube_client.AuthorizationV1Api(operator_client).create_subject_access_review(
        kube_client.V1SubjectAccessReview(
            spec=kube_client.V1SubjectAccessReviewSpec(
                user=username,
                resource_attributes=kube_client.V1ResourceAttributes(
                    group=resources.GROUP, resource=resources.WORKER_POOL_PLURAL,
                    verb="get", namespace=release.namespace,
                ),
            )
        )
    )  # fmt: skip
    assert access.status.allowed is True


def test_operator_account_reads_what_kopf_needs_cluster_wide(
    operator_client: kube_client.ApiClient,
) -> None:
    core = kube_client.CoreV1Api(operator_client)
    extensions = kube_client.ApiextensionsV1Api(operator_client)
    custom = kube_client.CustomObjectsApi(operator_client)

    assert core.list_namespace(limit=1).items
    assert extensions.read_custom_resource_definition("jobqueues.jobqueue.dev")
    peerings = custom.list_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings")
    assert "jobqueue" in {item["metadata"]["name"] for item in peerings["items"]}
    # Announcing itself in the peering object, as kopf's keep-alive does.
    custom.patch_cluster_custom_object(
        "kopf.dev", "v1", "clusterkopfpeerings", "jobqueue",
        {"status": {"rbac-test": None}},
    )  # fmt: skip


def test_operator_account_is_refused_everything_else(
    operator_client: kube_client.ApiClient, release: Release
) -> None:
    core = kube_client.CoreV1Api(operator_client)
    rbac = kube_client.RbacAuthorizationV1Api(operator_client)
    extensions = kube_client.ApiextensionsV1Api(operator_client)

    assert _refused(lambda: core.delete_namespace(release.namespace)) == 403
    assert _refused(lambda: core.list_namespaced_secret(release.namespace)) == 403
    assert _refused(core.list_secret_for_all_namespaces) == 403
    assert _refused(lambda: core.list_namespaced_config_map(release.namespace)) == 403
    assert _refused(rbac.list_cluster_role) == 403
    assert _refused(
        lambda: extensions.delete_custom_resource_definition("jobqueues.jobqueue.dev")
    ) == 403  # fmt: skip


# The authorizer, permission by permission ---------------------------------------------------

# Next to what the operator has: each would be a real widening of its power.
NOT_GRANTED = [
    ("", "secrets", "get"),
    ("", "secrets", "list"),
    ("", "configmaps", "get"),
    ("", "pods", "create"),
    ("", "pods", "delete"),
    ("", "pods/exec", "create"),
    ("", "namespaces", "delete"),
    ("", "serviceaccounts/token", "create"),
    ("jobqueue.dev", "jobqueues", "create"),
    ("jobqueue.dev", "jobqueues", "delete"),
    ("jobqueue.dev", "queueworkerpools", "delete"),
    ("apps", "deployments/scale", "update"),
    ("apps", "replicasets", "delete"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "create"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "patch"),
    ("kopf.dev", "clusterkopfpeerings", "delete"),
    ("rbac.authorization.k8s.io", "clusterrolebindings", "create"),
]


def _allowed(
    api_client: kube_client.ApiClient, user: str, group: str, resource: str, verb: str
) -> bool:
    resource, _, subresource = resource.partition("/")
    review = kube_client.AuthorizationV1Api(api_client).create_subject_access_review(
        kube_client.V1SubjectAccessReview(
            spec=kube_client.V1SubjectAccessReviewSpec(
                user=user,
                groups=["system:serviceaccounts", "system:authenticated"],
                resource_attributes=kube_client.V1ResourceAttributes(
                    group=group, resource=resource, subresource=subresource or None,
                    verb=verb, namespace="anywhere",
                ),
            )
        )
    )  # fmt: skip
    return bool(review.status.allowed)


def test_authorizer_grants_exactly_the_decided_permissions(
    kube_api_client: kube_client.ApiClient, release: Release
) -> None:
    user = f"system:serviceaccount:{release.namespace}:{release.service_account}"

    denied = [p for p in sorted(OPERATOR_PERMISSIONS) if not _allowed(kube_api_client, user, *p)]
    granted = [p for p in NOT_GRANTED if _allowed(kube_api_client, user, *p)]

    assert denied == [], "the operator lacks permissions it needs"
    assert granted == [], "the operator holds permissions beyond its role"


def test_crds_installed_by_helm_are_the_repository_crds(
    kube_api_client: kube_client.ApiClient, release: Release
) -> None:
    extensions = kube_client.ApiextensionsV1Api(kube_api_client)

    for path in CRDS.glob("*.yaml"):
        manifest = yaml.safe_load(path.read_text())
        served = extensions.read_custom_resource_definition(manifest["metadata"]["name"])
        assert served.spec.names.kind == manifest["spec"]["names"]["kind"]
        assert [v.name for v in served.spec.versions] == [
            v["name"] for v in manifest["spec"]["versions"]
        ]


# The real operator, with nothing but the chart's credentials --------------------------------

OPERATOR_START_TIMEOUT_S = 90
OPERATOR_STOP_TIMEOUT_S = 30
EXAMPLES = CHART.parents[1] / "manifests" / "examples"


def _token_kubeconfig(devenv: Environment, token: str, path: Path) -> Path:
    """The admin kubeconfig's cluster (server and CA), with a bearer-token user instead."""
    assert devenv.kubeconfig is not None
    admin = yaml.safe_load(devenv.kubeconfig.read_text())
    cluster = admin["clusters"][0]
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [cluster],
                "users": [{"name": "operator", "user": {"token": token}}],
                "contexts": [
                    {
                        "name": "operator",
                        "context": {"cluster": cluster["name"], "user": "operator"},
                    }
                ],
                "current-context": "operator",
            }
        )
    )
    return path


def _wait_for(
    list_call: Callable[..., Any],
    *arguments: Any,
    predicate: Callable[[dict[str, Any]], bool],
    what: str,
    timeout_s: float = OPERATOR_START_TIMEOUT_S,
) -> dict[str, Any]:
    """Watch a collection until an event's object satisfies ``predicate``; bounded in time."""
    watcher = kube_watch.Watch()
    for event in watcher.stream(list_call, *arguments, timeout_seconds=int(timeout_s)):
        raw = event["raw_object"]
        if event["type"] in ("ADDED", "MODIFIED") and predicate(raw):
            watcher.stop()
            return dict(raw)
    raise AssertionError(f"{what} did not happen within {timeout_s:g} s")


def _delete_and_wait(
    custom: kube_client.CustomObjectsApi,
    namespace: str,
    plural: str,
    timeout_s: float = OPERATOR_START_TIMEOUT_S,
) -> None:
    """Delete every object of ``plural`` in ``namespace``; return once all are gone."""
    group, version = resources.GROUP, resources.VERSION
    for item in custom.list_namespaced_custom_object(group, version, namespace, plural)["items"]:
        custom.delete_namespaced_custom_object(
            group, version, namespace, plural, item["metadata"]["name"]
        )

    # List, then watch from that list's version: a deletion is seen once, either way.
    listed = custom.list_namespaced_custom_object(group, version, namespace, plural)
    remaining = {item["metadata"]["name"] for item in listed["items"]}
    if not remaining:
        return
    watcher = kube_watch.Watch()
    for event in watcher.stream(
        custom.list_namespaced_custom_object, group, version, namespace, plural,
        resource_version=listed["metadata"]["resourceVersion"], timeout_seconds=int(timeout_s),
    ):  # fmt: skip
        if event["type"] == "DELETED":
            remaining.discard(event["raw_object"]["metadata"]["name"])
            if not remaining:
                watcher.stop()
                return
    raise AssertionError(f"{sorted(remaining)} were not finalized within {timeout_s:g} s")


def _mount_certificate_secret(
    kube_api_client: kube_client.ApiClient, release: Release, directory: Path
) -> tuple[Path, Path]:
    """Give the release the Secret its Deployment mounts, and lay it out as the kubelet would.

    A fresh CA and serving certificate go into a ``kubernetes.io/tls`` Secret of the name
    the Deployment's ``tls`` volume asks for, under cert-manager's keys. What is read back
    from the API server is written one file per key into ``directory``, which stands in
    for the mount: returns the mount and the CA file that clients trust.
    """
    core = kube_client.CoreV1Api(kube_api_client)
    apps = kube_client.AppsV1Api(kube_api_client)
    volumes = apps.read_namespaced_deployment(
        release.service_account, release.namespace
    ).spec.template.spec.volumes
    secret_name = next(volume.secret.secret_name for volume in volumes if volume.name == "tls")
    minted = mint_serving_certificate(directory / "minted")
    data = {
        "tls.crt": minted.cert_path.read_bytes(),
        "tls.key": minted.key_path.read_bytes(),
        "ca.crt": minted.ca_path.read_bytes(),
    }
    core.create_namespaced_secret(
        release.namespace,
        kube_client.V1Secret(
            metadata=kube_client.V1ObjectMeta(name=secret_name),
            type="kubernetes.io/tls",
            data={key: base64.b64encode(value).decode() for key, value in data.items()},
        ),
    )

    mount = directory / "mount"
    mount.mkdir()
    stored = core.read_namespaced_secret(secret_name, release.namespace)
    for key, value in stored.data.items():
        (mount / key).write_bytes(base64.b64decode(value))
    (mount / "tls.key").chmod(0o600)
    return mount, mount / "ca.crt"


def _condition(body: dict[str, Any], kind: str) -> str | None:
    for item in (body.get("status") or {}).get("conditions") or []:
        if item.get("type") == kind:
            return str(item.get("status"))
    return None


def _observed(body: dict[str, Any]) -> bool:
    status = body.get("status") or {}
    return status.get("observedGeneration") == body["metadata"].get("generation")


GRPC_CALL_TIMEOUT_S = 10
HANDLER = "tests.integration.deploy.handlers:send_email"
JOB_TIMEOUT_S = 60
WORKER_STOP_TIMEOUT_S = 30


def _start_worker(
    address: str, ca_file: Path, token: str, pod: str, scratch: Path
) -> tuple[subprocess.Popen[bytes], Path]:
    """jobqueue-worker as a pod of emails-workers runs it: TLS, its pod-bound token."""
    token_file = scratch / "worker.token"
    token_file.write_text(token)
    log_path = scratch / "worker.log"
    environment = {name: value for name, value in os.environ.items() if not name.startswith("JQ_")}
    environment["PYTHONPATH"] = str(REPOSITORY)
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            [
                sys.executable, "-m", "jobqueue.worker.main",
                "--operator", address, "--ca-file", str(ca_file),
                "--token-file", str(token_file), "--queue", "emails", "--pool", "emails-workers",
                "--worker-id", pod, "--http-address", "", "--log-format", "text",
                "--handler", HANDLER,
            ],
            cwd=REPOSITORY, env=environment, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    return worker, log_path


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=WORKER_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _assert_callers_are_checked(
    kube_api_client: kube_client.ApiClient,
    namespace: str,
    address: str,
    ca_file: Path,
    scratch: Path,
) -> None:
    """Calls over TLS are answered by who the caller is, which the operator can tell only
    through TokenReviews, SubjectAccessReviews and, for a worker, reading its pod and pool:
    had any of them been refused to it, the calls would be UNAVAILABLE instead."""
    cluster = Cluster(kube_api_client, namespace)
    on_call = cluster.service_account("on-call")
    cluster.grant(on_call, ["status", "submit", "get", "watch"], ["emails"])
    stranger = cluster.service_account("stranger")
    workers = cluster.service_account("emails-workers")
    cluster.grant(workers, ["work"], ["emails"])
    pod = cluster.worker_pod(
        "emails-workers-0", account=workers, pool="emails-workers", queue="emails"
    )

    def client(token: str | None, trusted: Path = ca_file) -> Client:
        return Client(address, ca_file=trusted, token=token, timeout_s=GRPC_CALL_TIMEOUT_S)

    with client(cluster.token(stranger)) as denied, pytest.raises(PermissionDeniedError):
        denied.queue_stats("emails")
    with client(None) as anonymous, pytest.raises(UnauthenticatedError):
        anonymous.queue_stats("emails")
    # A client that trusts another CA does not get past the handshake.
    other = mint_serving_certificate(scratch / "other-ca", authority="someone-else")
    mistrusting = client(cluster.token(on_call), other.ca_path)
    with mistrusting, pytest.raises(UnavailableError):
        mistrusting.queue_stats("emails")

    # A worker with its pod's token registers for its pool and runs a submitted job.
    worker, worker_log = _start_worker(
        address, ca_file, cluster.token(workers, pod=pod), pod.name, scratch
    )
    try:
        with client(cluster.token(on_call)) as allowed:
            assert allowed.queue_stats("emails").queue == "emails"
            job = allowed.submit(
                job_spec("emails", handler=HANDLER, arguments={"to": "on-call@example.com"})
            )
            final = allowed.wait(job.id, timeout_s=JOB_TIMEOUT_S)
    finally:
        _stop(worker)
    assert final.state == jobs_pb2.JOB_STATE_SUCCEEDED, worker_log.read_text()[-3000:]
    assert final.worker_id == pod.name
    assert "queued for on-call@example.com" in final.output


@pytest.mark.timeout(300)
def test_operator_reconciles_with_only_the_chart_credentials(
    devenv: Environment,
    kube_api_client: kube_client.ApiClient,
    release: Release,
    database_url: str,
    redis_url: str,
    kafka: KafkaTarget,
    tmp_path: Path,
) -> None:
    """jobqueue-operator, run with the chart's settings file, a token of the chart's
    ServiceAccount and the certificate of the chart's TLS Secret, reconciles the examples (a
    Ready queue, two Deployments, an HPA) and serves TLS, checking every caller: a worker
    with a pod-bound token registers and runs a job submitted by an allowed account."""
    namespace = release.namespace
    custom = kube_client.CustomObjectsApi(kube_api_client)
    apps = kube_client.AppsV1Api(kube_api_client)
    autoscaling = kube_client.AutoscalingV2Api(kube_api_client)
    group, version = resources.GROUP, resources.VERSION

    # The settings file exactly as the chart mounts it; only the addresses of the local
    # servers, a peering of the test's own, and where the certificate Secret is "mounted"
    # come from the environment. Authentication stays as the chart sets it: kubernetes.
    config_map = kube_client.CoreV1Api(kube_api_client).read_namespaced_config_map(
        f"{release.service_account}-config", namespace
    )
    settings_file = tmp_path / "config.yaml"
    settings_file.write_text(config_map.data["config.yaml"])
    chart_settings = yaml.safe_load(config_map.data["config.yaml"])["operator"]
    assert chart_settings["auth"]["mode"] == "kubernetes"
    mount, ca_file = _mount_certificate_secret(kube_api_client, release, tmp_path / "tls")
    # The chart's file names are the Secret's keys; only the directory moves.
    cert_file = mount / Path(chart_settings["tls"]["cert_file"]).name
    key_file = mount / Path(chart_settings["tls"]["key_file"]).name
    grpc_address = f"127.0.0.1:{free_port()}"
    kubeconfig = _token_kubeconfig(
        devenv, _token_for(kube_api_client, release), tmp_path / "kubeconfig"
    )
    # No JQ_* of the surrounding shell: the settings are the chart's and the lines below.
    inherited = {name: value for name, value in os.environ.items() if not name.startswith("JQ_")}
    environment = {
        **inherited,
        "KUBECONFIG": str(kubeconfig),
        "JQ_CONFIG": str(settings_file),
        "JQ_DATABASE_URL": database_url,
        "JQ_REDIS_URL": redis_url,
        "JQ_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "JQ_KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
        "JQ_OPERATOR_GRPC_ADDRESS": grpc_address,
        "JQ_OPERATOR_HTTP_ADDRESS": f"127.0.0.1:{free_port()}",
        "JQ_OPERATOR_TLS_CERT_FILE": str(cert_file),
        "JQ_OPERATOR_TLS_KEY_FILE": str(key_file),
        "JQ_OPERATOR_PEERING_NAME": f"rbac-{uuid.uuid4().hex[:8]}",
        # Other tests' resources elsewhere in the shared cluster are none of its business.
        "JQ_OPERATOR_NAMESPACES": namespace,
        "JQ_OPERATOR_STATUS_INTERVAL_S": "1",
        "JQ_LOGGING_FORMAT": "text",
        "POD_NAME": "operator-under-test",
    }
    log_path = tmp_path / "operator.log"
    with log_path.open("wb") as log:
        operator = subprocess.Popen(
            [sys.executable, "-m", "jobqueue.operator.main"],
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        for name in ("queue.yaml", "pool.yaml", "pool-autoscaling.yaml"):
            manifest = yaml.safe_load((EXAMPLES / name).read_text())
            plural = resources.PLURALS[manifest["kind"]]
            custom.create_namespaced_custom_object(group, version, namespace, plural, manifest)

        queue = _wait_for(
            custom.list_namespaced_custom_object, group, version, namespace,
            resources.JOB_QUEUE_PLURAL,
            predicate=lambda body: body["metadata"]["name"] == "emails"
            and _observed(body) and _condition(body, "Ready") == "True",
            what="the queue emails becoming Ready",
        )  # fmt: skip
        assert queue["status"]["conditions"]
        deployment = _wait_for(
            apps.list_namespaced_deployment, namespace,
            predicate=lambda body: body["metadata"]["name"] == "emails-workers",
            what="the Deployment of emails-workers",
        )  # fmt: skip
        owner = deployment["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"]) == (resources.WORKER_POOL_KIND, "emails-workers")
        assert deployment["spec"]["replicas"] == 2
        autoscaler = _wait_for(
            autoscaling.list_namespaced_horizontal_pod_autoscaler, namespace,
            predicate=lambda body: body["metadata"]["name"] == "emails-autoscaled",
            what="the HPA of emails-autoscaled",
        )  # fmt: skip
        assert autoscaler["spec"]["maxReplicas"] == 10
        assert autoscaler["spec"]["scaleTargetRef"]["kind"] == resources.WORKER_POOL_KIND
        pool = _wait_for(
            custom.list_namespaced_custom_object, group, version, namespace,
            resources.WORKER_POOL_PLURAL,
            predicate=lambda body: body["metadata"]["name"] == "emails-workers"
            and _observed(body),
            what="emails-workers' status catching up",
        )  # fmt: skip
        assert pool["status"]["selector"]

        _assert_callers_are_checked(kube_api_client, namespace, grpc_address, ca_file, tmp_path)

        # Deleting every queue here lets the operator run its finalizers before it stops, so
        # nothing is left waiting on an operator that is gone.
        _delete_and_wait(custom, namespace, resources.JOB_QUEUE_PLURAL)
    finally:
        operator.terminate()
        try:
            returncode = operator.wait(timeout=OPERATOR_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            operator.kill()
            returncode = operator.wait()
        log_text = log_path.read_text(errors="replace")
        print(log_text[-6000:])

    # Not one call of the operator was refused, reviews included: the role covers everything
    # it did. (A 403 as the API server reports it, "(403)" or "403 Forbidden": a bare 403
    # also matches a resourceVersion in kopf's debug lines.)
    refusals = re.findall(
        r".*(?:\(403\)|\b403 Forbidden|[Ff]orbidden|Callers cannot be checked).*", log_text
    )
    assert not refusals, "\n".join(refusals[:5])
    assert "Serving the gRPC API with TLS" in log_text
    assert returncode == 0, log_text[-4000:]
