"""The operator's reconcilers against a real kube-apiserver, PostgreSQL, Redis and Kafka.

Each test runs an operator with kopf in its own event loop, reconciling only the test's
namespace (standalone: one replica), on a database of its own. Kubernetes calls go
through a thread so they never block the operator sharing the loop; what the operator
writes is read back until it shows, within a deadline.
"""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from kubernetes import client as kube_client

from jobqueue import errors, resources
from jobqueue.client import job_spec
from jobqueue.config import Settings
from jobqueue.devenv import Environment
from jobqueue.devenv.certificates import mint_serving_certificate
from jobqueue.devenv.processes import free_port
from jobqueue.store import AttemptRef, AttemptResult, JobKind, JobState, NewJob, Outcome
from tests.conftest import KafkaTarget
from tests.integration.operator.conftest import (
    HANDLERS,
    REPOSITORY,
    Operator,
    Workers,
    operator_running,
    operator_settings,
)
from tests.polling import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

EXAMPLES = REPOSITORY / "manifests" / "examples"
T = TypeVar("T")


@pytest.fixture(scope="module")
def crds(kube_api_client: kube_client.ApiClient) -> None:
    resources.install_crds(kube_api_client, REPOSITORY / "crds")


class Kube:
    """The few Kubernetes calls these tests make, each run in a thread."""

    def __init__(self, api: kube_client.ApiClient, namespace: str, devenv: Environment) -> None:
        self.custom = kube_client.CustomObjectsApi(api)
        self.apps = kube_client.AppsV1Api(api)
        self.autoscaling = kube_client.AutoscalingV2Api(api)
        self.core = kube_client.CoreV1Api(api)
        self.api = api
        self.namespace = namespace
        self.devenv = devenv

    async def call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.to_thread(function, *args, **kwargs)

    async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        return await self.call(
            resources.apply_resource, self.api, manifest, namespace=self.namespace
        )

    async def get(self, plural: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.call(
                self.custom.get_namespaced_custom_object,
                resources.GROUP, resources.VERSION, self.namespace, plural, name,
            )  # fmt: skip
        except kube_client.ApiException as error:
            if error.status == 404:
                return None
            raise

    async def patch_spec(self, plural: str, name: str, spec: dict[str, Any]) -> None:
        await self.call(
            self.custom.patch_namespaced_custom_object,
            resources.GROUP, resources.VERSION, self.namespace, plural, name, {"spec": spec},
        )  # fmt: skip

    async def delete(self, plural: str, name: str) -> None:
        await self.call(
            self.custom.delete_namespaced_custom_object,
            resources.GROUP, resources.VERSION, self.namespace, plural, name,
        )  # fmt: skip

    async def deployment(self, name: str) -> Any:
        try:
            return await self.call(self.apps.read_namespaced_deployment, name, self.namespace)
        except kube_client.ApiException as error:
            if error.status == 404:
                return None
            raise

    async def kubectl(self, *arguments: str) -> str:
        kubectl = str(self.devenv.endpoints.kube_bin_dir / "kubectl")
        command = [kubectl, "--kubeconfig", str(self.devenv.kubeconfig), "-n", self.namespace]
        completed = await self.call(
            subprocess.run, [*command, *arguments], capture_output=True, text=True, timeout=30
        )
        assert completed.returncode == 0, completed.stderr
        return completed.stdout


@pytest.fixture
def kube(
    kube_api_client: kube_client.ApiClient, namespace: str, devenv: Environment, crds: None
) -> Kube:
    return Kube(kube_api_client, namespace, devenv)


@pytest.fixture
def reconciling_settings(
    database_url: str,
    redis_url: str,
    kafka: KafkaTarget,
    namespace: str,
    devenv: Environment,
    crds: None,
    monkeypatch: pytest.MonkeyPatch,
) -> Settings:
    """An operator's settings for reconciling the test's namespace alone, on its database."""
    # kopf and the operator's own client both find the cluster through $KUBECONFIG.
    monkeypatch.setenv("KUBECONFIG", str(devenv.kubeconfig))
    return operator_settings(
        database_url,
        redis_url,
        kafka,
        free_port(),
        JQ_OPERATOR_NAMESPACES=namespace,
        JQ_OPERATOR_STANDALONE="true",
        JQ_OPERATOR_STATUS_INTERVAL_S="0.5",
        JQ_OPERATOR_SERVICE_ADDRESS="jobqueue-operator.jobqueue-system.svc:7070",
    )


@pytest.fixture
async def reconciler(reconciling_settings: Settings) -> AsyncIterator[Operator]:
    async with operator_running(reconciling_settings, with_kopf=True) as running:
        yield running


def example(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((EXAMPLES / name).read_text()))


def queue_manifest(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": resources.API_VERSION,
        "kind": resources.JOB_QUEUE_KIND,
        "metadata": {"name": name},
        "spec": spec,
    }


def pool_manifest(name: str, queue: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": resources.API_VERSION,
        "kind": resources.WORKER_POOL_KIND,
        "metadata": {"name": name},
        "spec": {"queue": queue, "template": {"image": "jobqueue/worker:test"}, **spec},
    }


def condition(body: dict[str, Any] | None, kind: str) -> dict[str, Any] | None:
    for item in ((body or {}).get("status") or {}).get("conditions") or ():
        if item["type"] == kind:
            return dict(item)
    return None


def noop_job(queue: str) -> NewJob:
    return NewJob(
        queue, JobKind.PYTHON, {"handler": f"{HANDLERS}:add", "arguments": {"a": 1, "b": 2}}
    )


# JobQueue ---------------------------------------------------------------------------------


async def test_applied_queue_becomes_its_policy_row_and_follows_spec_changes(
    reconciler: Operator, kube: Kube
) -> None:
    store = reconciler.parts.store
    await kube.apply(example("queue.yaml"))

    async def row_written() -> bool:
        try:
            return (await store.get_queue("emails")).max_attempts == 5
        except errors.NotFoundError:
            return False

    await eventually(row_written, what="the queue row")
    policy = await store.get_queue("emails")
    assert policy.namespace == kube.namespace
    assert policy.rate_limit is not None
    assert policy.rate_limit.per_second == 20
    assert policy.concurrency_limit == 50
    assert policy.allowed_kinds == frozenset({JobKind.PYTHON})

    async def observed(generation: int) -> bool:
        body = await kube.get(resources.JOB_QUEUE_PLURAL, "emails")
        ready = condition(body, "Ready")
        return (
            body is not None
            and (body.get("status") or {}).get("observedGeneration") == generation
            and ready is not None
            and ready["status"] == "True"
        )

    await eventually(lambda: observed(1), what="observedGeneration 1 and Ready")

    await kube.patch_spec(resources.JOB_QUEUE_PLURAL, "emails", {"maxAttempts": 7, "paused": True})
    await eventually(lambda: observed(2), what="observedGeneration 2")
    policy = await store.get_queue("emails")
    assert (policy.max_attempts, policy.paused) == (7, True)
    body = await kube.get(resources.JOB_QUEUE_PLURAL, "emails")
    assert condition(body, "Paused") is not None
    assert condition(body, "Paused")["status"] == "True"  # type: ignore[index]

    # Each applied generation is also told as an Event on the resource.
    async def events_posted() -> bool:
        events = await kube.call(
            kube.core.list_namespaced_event,
            kube.namespace,
            field_selector="involvedObject.name=emails",
        )
        reasons = [event.reason for event in events.items]
        return reasons.count("PolicyApplied") >= 2

    await eventually(events_posted, what="two PolicyApplied events")


async def test_deleting_a_queue_with_cancel_policy_cancels_its_jobs_then_it_goes(
    reconciler: Operator, kube: Kube
) -> None:
    store = reconciler.parts.store
    await kube.apply(queue_manifest("doomed", deletionPolicy="Cancel"))
    await eventually(lambda: _queue_exists(store, "doomed"), what="the queue row")
    submitted = await store.submit_batch([noop_job("doomed") for _ in range(3)])

    await kube.delete(resources.JOB_QUEUE_PLURAL, "doomed")

    async def gone() -> bool:
        return await kube.get(resources.JOB_QUEUE_PLURAL, "doomed") is None

    await eventually(gone, what="the deleted JobQueue to go")
    assert not await _queue_exists(store, "doomed")
    # The jobs went with the queue's row; their cancellation reached the outbox first.
    for item in submitted:
        with pytest.raises(errors.NotFoundError):
            await store.get(item.job.id)


async def test_deleting_a_queue_with_drain_policy_waits_for_its_jobs(
    reconciler: Operator, kube: Kube
) -> None:
    store = reconciler.parts.store
    await kube.apply(queue_manifest("draining", paused=True))
    await eventually(lambda: _queue_exists(store, "draining"), what="the queue row")
    (submitted,) = await store.submit_batch([noop_job("draining")])

    await kube.delete(resources.JOB_QUEUE_PLURAL, "draining")

    async def closed() -> bool:
        return (await store.get_queue("draining")).closed

    await eventually(closed, what="the queue to close")
    with pytest.raises(errors.ConflictError, match="being deleted"):
        await store.submit(noop_job("draining"))
    policy = await store.get_queue("draining")
    assert not policy.paused  # a drain resumes the queue, or it would never end
    assert await kube.get(resources.JOB_QUEUE_PLURAL, "draining") is not None

    # Finish the job as a worker would; then the finalizer lets the resource go.
    (job,) = await store.claim("draining", ["hand-worker"], lease_s=30)
    assert job.id == submitted.job.id
    attempt = AttemptRef(job.id, job.attempt)
    await store.report_started("hand-worker", [attempt], lease_s=30)
    await store.report_results(
        "hand-worker", [AttemptResult(job.id, job.attempt, Outcome.SUCCEEDED)]
    )

    async def gone() -> bool:
        return await kube.get(resources.JOB_QUEUE_PLURAL, "draining") is None

    await eventually(gone, timeout_s=30, what="the drained JobQueue to go")
    assert not await _queue_exists(store, "draining")


async def test_queue_status_and_printer_columns_show_the_job_counts(
    reconciler: Operator, kube: Kube, workers: Workers
) -> None:
    store = reconciler.parts.store
    await kube.apply(queue_manifest("counted"))
    await eventually(lambda: _queue_exists(store, "counted"), what="the queue row")
    await store.submit_batch([noop_job("counted") for _ in range(4)])

    async def counted(key: str, number: int) -> bool:
        body = await kube.get(resources.JOB_QUEUE_PLURAL, "counted")
        jobs = ((body or {}).get("status") or {}).get("jobs") or {}
        return jobs.get(key) == number

    await eventually(lambda: counted("pending", 4), what="4 pending in status")
    body = await kube.get(resources.JOB_QUEUE_PLURAL, "counted")
    degraded = condition(body, "Degraded")
    assert degraded is not None
    assert degraded["reason"] == "NoWorkers"
    table = await kube.kubectl("get", "jq", "counted")
    assert table.split("\n")[1].split()[:3] == ["counted", "4", "0"]  # NAME PENDING RUNNING

    await workers.start(reconciler.port, queue="counted")
    await eventually(lambda: counted("succeeded", 4), what="4 succeeded in status")
    body = await kube.get(resources.JOB_QUEUE_PLURAL, "counted")
    assert body is not None
    assert body["status"]["jobs"]["pending"] == 0
    assert body["status"]["connectedWorkers"] == 1
    assert condition(body, "Degraded")["status"] == "False"  # type: ignore[index]
    wide = await kube.kubectl("get", "jq", "counted", "-o", "wide")
    header, row = wide.split("\n")[:2]
    assert dict(zip(header.split(), row.split(), strict=False))["SUCCEEDED"] == "4"


# QueueWorkerPool -------------------------------------------------------------------------


async def test_pool_gets_an_owned_deployment_running_the_worker_for_its_queue(
    reconciler: Operator, kube: Kube
) -> None:
    await kube.apply(queue_manifest("emails"))
    pool = await kube.apply(example("pool.yaml"))

    async def deployed() -> bool:
        return await kube.deployment("emails-workers") is not None

    await eventually(deployed, what="the pool's Deployment")
    deployment = await kube.deployment("emails-workers")
    (owner,) = deployment.metadata.owner_references
    assert (owner.kind, owner.name, owner.uid) == (
        resources.WORKER_POOL_KIND, "emails-workers", pool["metadata"]["uid"]
    )  # fmt: skip
    assert owner.controller is True
    assert deployment.spec.replicas == 2
    (container,) = deployment.spec.template.spec.containers
    assert container.image == "ghcr.io/jobqueue/worker:0.1.0"
    arguments = container.args
    assert arguments[arguments.index("--queue") + 1] == "emails"
    assert arguments[arguments.index("--pool") + 1] == "emails-workers"
    assert arguments[arguments.index("--concurrency") + 1] == "8"
    assert arguments[arguments.index("--operator") + 1] == (
        "jobqueue-operator.jobqueue-system.svc:7070"
    )
    assert container.security_context.read_only_root_filesystem is True
    # This operator serves plaintext (a test set-up), so it tells its workers so.
    env = {item.name: item.value for item in container.env}
    assert env["JQ_WORKER_TLS_INSECURE_PLAINTEXT"] == "true"
    assert deployment.spec.template.spec.termination_grace_period_seconds == 60 + 15

    async def pool_ready_reported() -> bool:
        body = await kube.get(resources.WORKER_POOL_PLURAL, "emails-workers")
        found = condition(body, "QueueFound")
        status = (body or {}).get("status") or {}
        return (
            found is not None
            and found["status"] == "True"
            and status.get("selector") == "jobqueue.dev/pool=emails-workers"
            and status.get("replicas") == 2  # the Deployment's ReplicaSet made two pods
        )

    await eventually(pool_ready_reported, what="the pool's status")


async def test_an_operator_serving_tls_hands_its_ca_to_the_pool(
    reconciling_settings: Settings, kube: Kube, tmp_path: Path
) -> None:
    certificate = mint_serving_certificate(tmp_path / "tls")
    operator = dataclasses.replace(
        reconciling_settings.operator,
        tls=dataclasses.replace(
            reconciling_settings.operator.tls,
            insecure_plaintext=False,
            cert_file=str(certificate.cert_path),
            key_file=str(certificate.key_path),
            ca_file=str(certificate.ca_path),
        ),
    )
    settings = dataclasses.replace(reconciling_settings, operator=operator)

    async with operator_running(settings, with_kopf=True):
        await kube.apply(queue_manifest("secure"))
        await kube.apply(pool_manifest("secure-workers", "secure"))
        await eventually(lambda: _deployment_replicas(kube, "secure-workers", 1), what="deployed")

    config_map = await kube.call(
        kube.core.read_namespaced_config_map, "secure-workers-operator-ca", kube.namespace
    )
    assert config_map.data["ca.crt"] == certificate.ca_path.read_text()
    assert config_map.metadata.owner_references[0].name == "secure-workers"
    deployment = await kube.deployment("secure-workers")
    (container,) = deployment.spec.template.spec.containers
    env = {item.name: item.value for item in container.env}
    assert env["JQ_WORKER_TLS_CA_FILE"] == "/etc/jobqueue/operator-ca/ca.crt"
    volumes = {volume.name: volume for volume in deployment.spec.template.spec.volumes}
    assert volumes["operator-ca"].config_map.name == "secure-workers-operator-ca"


async def test_kubectl_scale_of_a_pool_reaches_its_deployment(
    reconciler: Operator, kube: Kube
) -> None:
    await kube.apply(queue_manifest("work"))
    await kube.apply(pool_manifest("scaled", "work", replicas=1))
    await eventually(lambda: _deployment_replicas(kube, "scaled", 1), what="1 replica")

    await kube.kubectl("scale", "qwp/scaled", "--replicas=3")

    await eventually(lambda: _deployment_replicas(kube, "scaled", 3), what="3 replicas")
    scale = await kube.kubectl("get", "qwp", "scaled", "-o", "jsonpath={.spec.replicas}")
    assert scale == "3"


async def test_pool_for_a_missing_queue_says_so_in_its_conditions(
    reconciler: Operator, kube: Kube
) -> None:
    await kube.apply(pool_manifest("orphan", "nowhere"))

    async def reported() -> bool:
        found = condition(await kube.get(resources.WORKER_POOL_PLURAL, "orphan"), "QueueFound")
        return found is not None and found["status"] == "False"

    await eventually(reported, what="QueueFound False")
    body = await kube.get(resources.WORKER_POOL_PLURAL, "orphan")
    degraded = condition(body, "Degraded")
    assert degraded is not None
    assert degraded["reason"] == "QueueMissing"

    # The queue appears: the pool notices without being touched.
    await kube.apply(queue_manifest("nowhere"))

    async def found() -> bool:
        found = condition(await kube.get(resources.WORKER_POOL_PLURAL, "orphan"), "QueueFound")
        return found is not None and found["status"] == "True"

    await eventually(found, what="QueueFound True")


async def test_autoscaling_pool_gets_an_autoscaler_on_its_scale_subresource(
    reconciler: Operator, kube: Kube
) -> None:
    await kube.apply(queue_manifest("bursty"))
    await kube.apply(
        pool_manifest(
            "bursty-workers",
            "bursty",
            autoscaling={"minReplicas": 1, "maxReplicas": 5, "targetPendingPerWorker": 20},
        )
    )

    async def autoscaler() -> Any:
        try:
            return await kube.call(
                kube.autoscaling.read_namespaced_horizontal_pod_autoscaler,
                "bursty-workers",
                kube.namespace,
            )
        except kube_client.ApiException as error:
            if error.status == 404:
                return None
            raise

    async def exists() -> bool:
        return await autoscaler() is not None

    await eventually(exists, what="the HPA")
    hpa = await autoscaler()
    target = hpa.spec.scale_target_ref
    assert (target.kind, target.name) == (resources.WORKER_POOL_KIND, "bursty-workers")
    assert (hpa.spec.min_replicas, hpa.spec.max_replicas) == (1, 5)
    (metric,) = hpa.spec.metrics
    assert metric.external.metric.selector.match_labels == {"queue": "bursty", "state": "pending"}

    # Autoscaling removed from the spec: the HPA goes.
    await kube.patch_spec(resources.WORKER_POOL_PLURAL, "bursty-workers", {"autoscaling": None})

    async def removed() -> bool:
        return await autoscaler() is None

    await eventually(removed, what="the HPA to go")


# Restarts --------------------------------------------------------------------------------


async def test_operator_restarted_mid_load_loses_nothing_and_status_resumes(
    reconciling_settings: Settings, kube: Kube, workers: Workers
) -> None:
    settings = reconciling_settings
    total = 60
    async with operator_running(settings, with_kopf=True) as first:
        await kube.apply(queue_manifest("steady"))
        await eventually(lambda: _queue_exists(first.parts.store, "steady"), what="the row")
        await workers.start(first.port, queue="steady", concurrency=2)
        specs = [
            job_spec("steady", handler=f"{HANDLERS}:add", arguments={"a": index, "b": 1})
            for index in range(total)
        ]
        submitted = await first.client.submit_batch(specs)

        async def some_succeeded() -> bool:
            stats = await first.parts.store.queue_stats(["steady"])
            return stats["steady"].counts[JobState.SUCCEEDED] >= 5

        await eventually(some_succeeded, what="a few jobs to finish")

    # The workers reconnect to the new operator on the same port, with their leases.
    async with operator_running(settings, with_kopf=True) as second:

        async def all_succeeded() -> bool:
            body = await kube.get(resources.JOB_QUEUE_PLURAL, "steady")
            jobs = ((body or {}).get("status") or {}).get("jobs") or {}
            return jobs.get("succeeded") == total

        await eventually(all_succeeded, timeout_s=60, what="every job in status")
        for item in submitted:
            events = await second.parts.store.events(item.id)
            succeeded = [event for event in events if event.kind == "succeeded"]
            assert len(succeeded) == 1, f"job {item.id} finished {len(succeeded)} times"


async def _queue_exists(store: Any, name: str) -> bool:
    try:
        await store.get_queue(name)
    except errors.NotFoundError:
        return False
    return True


async def _deployment_replicas(kube: Kube, name: str, replicas: int) -> bool:
    deployment = await kube.deployment(name)
    return deployment is not None and deployment.spec.replicas == replicas
