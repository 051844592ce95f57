"""The kopf side of the operator: JobQueue and QueueWorkerPool resources, reconciled.

What each resource becomes:

- A JobQueue is its row in PostgreSQL (the queue policy). Create, update and resume
  write the row; a finalizer carries out ``spec.deletionPolicy`` before the row goes:
  ``Cancel`` cancels every unfinished job (running ones are told to stop), ``Drain``
  closes the queue to new jobs, resumes it if paused, and waits until nothing is left.
- A QueueWorkerPool is a Deployment it owns (and an HPA with ``autoscaling``), built in
  ``workloads`` and applied server-side, so a second apply changes nothing and nobody
  else's fields are touched. ``kubectl scale`` and an HPA set the pool's
  ``spec.replicas`` through the scale subresource; that is an update like any other.

Status is the only thing written on the resources (GitOps owns spec): the reconcile
handlers write ``observedGeneration`` and ``Ready``; timers fold the ``QueueMonitor``'s
latest snapshot into counts and conditions every ``operator.status_interval_s``, patching
only what changed. A pool's Deployment status and the set of existing queues come from
kopf indexes (watch streams), so a timer makes no API read of its own. Notable changes are
also posted as Kubernetes Events.

kopf keeps its own progress in annotations under ``jobqueue.dev/`` rather than in status,
whose schema does not allow foreign fields. Several replicas peer through the
ClusterKopfPeering ``operator.peering_name``: each gets a random priority, so exactly one
reconciles at a time (equal priorities would make them all pause), while every replica
serves gRPC and dispatches.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import kopf
from kubernetes import client as kube_client

from jobqueue import resources
from jobqueue.config import Settings
from jobqueue.errors import (
    ConflictError,
    InvalidInputError,
    JobQueueError,
    NotFoundError,
    PermissionDeniedError,
    TemporaryError,
)
from jobqueue.operator import status as status_rules
from jobqueue.operator import workloads
from jobqueue.operator.dispatch import Scheduler
from jobqueue.operator.monitor import QueueMonitor
from jobqueue.resources import (
    GROUP,
    JOB_QUEUE_PLURAL,
    VERSION,
    WORKER_POOL_PLURAL,
    JobQueueSpec,
    WorkerPoolSpec,
)
from jobqueue.store import AttemptRef, Backoff, JobKind, JobStore, QueuePolicy, RateLimit

logger = logging.getLogger(__name__)

FINALIZER: Final = "jobqueue.dev/finalizer"
ANNOTATION_PREFIX: Final = "jobqueue.dev"
# Seconds between two looks at a draining queue being deleted.
DRAIN_RECHECK_S: Final = 5.0
# Seconds before a handler that met a passing failure (the database away) runs again.
RETRY_DELAY_S: Final = 5.0

_KINDS: Final[Mapping[str, JobKind]] = {"Command": JobKind.COMMAND, "Python": JobKind.PYTHON}


@dataclass
class Context:
    """What the handlers work with; one per operator process."""

    store: JobStore
    api: kube_client.ApiClient
    monitor: QueueMonitor
    settings: Settings
    scheduler: Scheduler | None = None


def queue_policy(name: str, namespace: str, spec: JobQueueSpec) -> QueuePolicy:
    """A JobQueue's spec as the store's policy row."""
    backoff = spec.backoff
    rate = spec.rate_limit
    return QueuePolicy(
        name=name,
        namespace=namespace,
        max_attempts=spec.max_attempts,
        backoff=Backoff(backoff.initial_s, backoff.multiplier, backoff.max_s, backoff.jitter),
        timeout_s=spec.timeout_s,
        paused=spec.paused,
        concurrency_limit=spec.concurrency_limit,
        rate_limit=RateLimit(rate.per_second, rate.burst) if rate else None,
        retention_succeeded_s=spec.retention.succeeded_s,
        retention_failed_s=spec.retention.failed_s,
        allowed_kinds=frozenset(_KINDS[kind] for kind in spec.allowed_kinds),
        payload_limit_bytes=spec.payload_limit_bytes,
    )


def kopf_settings(settings: Settings) -> kopf.OperatorSettings:
    configured = kopf.OperatorSettings()
    configured.persistence.finalizer = FINALIZER
    configured.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=ANNOTATION_PREFIX
    )
    configured.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    # kopf would post every handler's log line as an Event; only warnings go there, and
    # the notable changes are posted on purpose by the handlers below.
    configured.posting.level = logging.WARNING
    configured.peering.name = settings.operator.peering_name
    configured.peering.clusterwide = True
    configured.peering.standalone = settings.operator.standalone
    configured.peering.priority = random.randint(1, 2**31 - 1)
    configured.peering.stealth = True
    return configured


def _now() -> datetime:
    return datetime.now(UTC)


def _temporary(error: JobQueueError) -> kopf.TemporaryError:
    delay_s = error.retry_after_s if isinstance(error, TemporaryError) else RETRY_DELAY_S
    return kopf.TemporaryError(str(error), delay=max(delay_s, 1.0))


# JobQueue --------------------------------------------------------------------------------


async def reconcile_queue(
    context: Context,
    *,
    body: kopf.Body,
    name: str,
    namespace: str,
    patch: kopf.Patch,
    reason: str,
) -> None:
    """Write the queue's policy row; report the outcome in Ready."""
    generation = body.metadata.get("generation")
    previous = body.status.get("conditions")
    patch.status["observedGeneration"] = generation

    def ready(condition: status_rules.Condition) -> None:
        patch.status["conditions"] = status_rules.merge_conditions(
            previous, [condition], generation=generation, now=_now()
        )

    try:
        spec = JobQueueSpec.from_manifest(body.get("spec"))
        await context.store.apply_queue(queue_policy(name, namespace, spec))
    except InvalidInputError as error:
        ready(status_rules.Condition("Ready", "False", "InvalidSpec", str(error)))
        raise kopf.PermanentError(str(error)) from error
    except ConflictError as error:
        ready(status_rules.Condition("Ready", "False", "NameTaken", str(error)))
        kopf.warn(body, reason="NameTaken", message=str(error))
        raise kopf.PermanentError(str(error)) from error
    except JobQueueError as error:
        raise _temporary(error) from error

    ready(status_rules.Condition("Ready", "True", "PolicyApplied", "the queue policy is in force"))
    if context.scheduler is not None:
        # A resumed queue, or a raised limit, may have work to hand out at once.
        await context.scheduler.announce([name])
    if reason != "resume":
        kopf.info(body, reason="PolicyApplied", message=f"generation {generation} in force")


async def delete_queue(context: Context, *, body: kopf.Body, name: str, namespace: str) -> None:
    """Carry out the deletion policy; return once the row is gone (kopf drops the finalizer)."""
    try:
        policy = await context.store.get_queue(name)
    except NotFoundError:
        return
    except JobQueueError as error:
        raise _temporary(error) from error
    if policy.namespace and policy.namespace != namespace:
        return  # the name belongs to another namespace's queue: not ours to delete

    deletion_policy = (body.get("spec") or {}).get("deletionPolicy", "Drain")
    try:
        if deletion_policy == "Cancel":
            await _cancel_unfinished(context, body, name)
        else:
            await _drain(context, body, policy)
        await context.store.delete_queue(name)
    except ConflictError as error:
        # Jobs arrived or remain; look again soon.
        raise kopf.TemporaryError(str(error), delay=DRAIN_RECHECK_S) from error
    except JobQueueError as error:
        raise _temporary(error) from error
    logger.info("Queue %s deleted (%s).", name, deletion_policy, extra={"queue": name})


async def _cancel_unfinished(context: Context, body: kopf.Body, name: str) -> None:
    cancelled = await context.store.cancel_unfinished(name, reason=f"JobQueue {name} deleted")
    if context.scheduler is not None:
        for item in cancelled:
            if item.worker_id:
                stopped = [AttemptRef(item.job.id, item.job.attempt)]
                context.scheduler.tell_to_stop(item.worker_id, stopped, "queue deleted")
    if cancelled:
        kopf.info(body, reason="JobsCancelled", message=f"{len(cancelled)} unfinished jobs")


async def _drain(context: Context, body: kopf.Body, policy: QueuePolicy) -> None:
    if not policy.closed:
        await context.store.close_queue(policy.name)
        kopf.info(body, reason="Draining", message="closed to new jobs; finishing what it holds")
    unfinished = await context.store.unfinished_count(policy.name)
    if unfinished:
        raise kopf.TemporaryError(
            f"draining: {unfinished} unfinished jobs left", delay=DRAIN_RECHECK_S
        )


async def mirror_queue_status(
    context: Context, *, body: kopf.Body, name: str, patch: kopf.Patch
) -> None:
    """Fold the latest statistics into the queue's status, if anything changed."""
    snapshot = context.monitor.latest
    if snapshot is None:
        return
    try:
        spec = JobQueueSpec.from_manifest(body.get("spec"))
    except InvalidInputError:
        return  # the reconcile handler has said so in Ready
    wanted = status_rules.queue_status(
        spec,
        snapshot.stats.get(name),
        snapshot.queue_workers(name),
        previous=body.status,
        generation=body.metadata.get("generation"),
        now=_now(),
    )
    for key, value in status_rules.changes(body.status, wanted).items():
        patch.status[key] = value


# QueueWorkerPool -------------------------------------------------------------------------


async def reconcile_pool(
    context: Context,
    *,
    body: kopf.Body,
    name: str,
    namespace: str,
    patch: kopf.Patch,
    queues: kopf.Index[tuple[str, str], bool],
) -> None:
    """Apply the pool's Deployment (and HPA); say whether its queue exists."""
    generation = body.metadata.get("generation")
    try:
        spec = WorkerPoolSpec.from_manifest(body.get("spec"))
    except InvalidInputError as error:
        patch.status["conditions"] = status_rules.merge_conditions(
            body.status.get("conditions"),
            [status_rules.Condition("Ready", "False", "InvalidSpec", str(error))],
            generation=generation,
            now=_now(),
        )
        raise kopf.PermanentError(str(error)) from error

    address = context.settings.operator.service_address
    deployment = workloads.deployment(body, spec, operator_address=address)
    autoscaler = workloads.autoscaler(body, spec)
    try:
        await asyncio.to_thread(resources.apply_object, context.api, deployment)
        if autoscaler is not None:
            await asyncio.to_thread(resources.apply_object, context.api, autoscaler)
        else:
            await asyncio.to_thread(
                resources.delete_object,
                context.api,
                "autoscaling/v2",
                "HorizontalPodAutoscaler",
                name,
                namespace,
            )
    except (InvalidInputError, PermissionDeniedError) as error:
        raise kopf.PermanentError(str(error)) from error
    except JobQueueError as error:
        raise _temporary(error) from error

    queue_found = (namespace, spec.queue) in queues
    patch.status["selector"] = workloads.selector_string(name)
    patch.status["observedGeneration"] = generation
    patch.status["conditions"] = status_rules.merge_conditions(
        body.status.get("conditions"),
        status_rules.pool_conditions(
            spec,
            queue_found=queue_found,
            ready_replicas=int(body.status.get("readyReplicas") or 0),
            replica_failure=None,
        ),
        generation=generation,
        now=_now(),
    )
    if not queue_found:
        kopf.warn(body, reason="QueueMissing", message=f"no JobQueue named {spec.queue} here")
    kopf.info(body, reason="DeploymentApplied", message=f"{spec.replicas} replicas wanted")


async def mirror_pool_status(
    context: Context,
    *,
    body: kopf.Body,
    name: str,
    namespace: str,
    patch: kopf.Patch,
    queues: kopf.Index[tuple[str, str], bool],
    deployments: kopf.Index[tuple[str, str], dict[str, Any]],
) -> None:
    try:
        spec = WorkerPoolSpec.from_manifest(body.get("spec"))
    except InvalidInputError:
        return
    snapshot = context.monitor.latest
    deployment = next(iter(deployments.get((namespace, name), ())), None)
    wanted = status_rules.pool_status(
        spec,
        selector=workloads.selector_string(name),
        deployment=deployment,
        workers=snapshot.pool_workers(spec.queue, name) if snapshot else None,
        queue_found=(namespace, spec.queue) in queues,
        previous=body.status,
        generation=body.metadata.get("generation"),
        now=_now(),
    )
    for key, value in status_rules.changes(body.status, wanted).items():
        patch.status[key] = value


# Wiring -----------------------------------------------------------------------------------


def build_registry(context: Context) -> kopf.OperatorRegistry:
    """Every handler, bound to ``context``, in a registry of its own (no module globals)."""
    registry = kopf.OperatorRegistry()
    interval_s = context.settings.operator.status_interval_s
    queue_kind = (GROUP, VERSION, JOB_QUEUE_PLURAL)
    pool_kind = (GROUP, VERSION, WORKER_POOL_PLURAL)

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_via_client(**kwargs)

    @kopf.index(*queue_kind, registry=registry)
    def queues(namespace: str | None, name: str, **_: Any) -> dict[tuple[str, str], bool]:
        return {(namespace or "", name): True}

    @kopf.index(
        "apps", "v1", "deployments", labels={workloads.POOL_LABEL: kopf.PRESENT}, registry=registry
    )
    def deployments(
        namespace: str | None, name: str, status: kopf.Status, **_: Any
    ) -> dict[tuple[str, str], dict[str, Any]]:
        return {(namespace or "", name): dict(status)}

    @kopf.on.resume(*queue_kind, registry=registry)
    @kopf.on.create(*queue_kind, registry=registry)
    @kopf.on.update(*queue_kind, registry=registry)
    async def queue_changed(
        body: kopf.Body, name: str, namespace: str | None, patch: kopf.Patch, reason: str, **_: Any
    ) -> None:
        await reconcile_queue(
            context, body=body, name=name, namespace=namespace or "", patch=patch, reason=reason
        )

    @kopf.on.delete(*queue_kind, registry=registry)
    async def queue_deleted(body: kopf.Body, name: str, namespace: str | None, **_: Any) -> None:
        await delete_queue(context, body=body, name=name, namespace=namespace or "")

    @kopf.timer(*queue_kind, interval=interval_s, registry=registry)
    async def queue_status(body: kopf.Body, name: str, patch: kopf.Patch, **_: Any) -> None:
        await mirror_queue_status(context, body=body, name=name, patch=patch)

    @kopf.on.resume(*pool_kind, registry=registry)
    @kopf.on.create(*pool_kind, registry=registry)
    @kopf.on.update(*pool_kind, registry=registry)
    async def pool_changed(
        body: kopf.Body, name: str, namespace: str | None, patch: kopf.Patch, **indexes: Any
    ) -> None:
        await reconcile_pool(
            context,
            body=body,
            name=name,
            namespace=namespace or "",
            patch=patch,
            queues=indexes["queues"],
        )

    @kopf.timer(*pool_kind, interval=interval_s, registry=registry)
    async def pool_status(
        body: kopf.Body, name: str, namespace: str | None, patch: kopf.Patch, **indexes: Any
    ) -> None:
        # kopf passes each index by its function's name: queues and deployments.
        await mirror_pool_status(
            context,
            body=body,
            name=name,
            namespace=namespace or "",
            patch=patch,
            queues=indexes["queues"],
            deployments=indexes["deployments"],
        )

    return registry


def ensure_peering(api: kube_client.ApiClient, name: str) -> bool:
    """Create the ClusterKopfPeering replicas meet in; False if its CRD is not installed."""
    manifest = {
        "apiVersion": "kopf.dev/v1",
        "kind": "ClusterKopfPeering",
        "metadata": {"name": name},
    }
    try:
        resources.apply_object(api, manifest)
    except NotFoundError:
        return False
    return True


async def run_reconcilers(
    context: Context, stop: asyncio.Event, ready: asyncio.Event | None = None
) -> None:
    """Run kopf until ``stop`` is set; ``ready`` is set once it watches the resources."""
    settings = kopf_settings(context.settings)
    if not settings.peering.standalone:
        peered = await asyncio.to_thread(ensure_peering, context.api, settings.peering.name)
        if not peered:
            logger.warning(
                "The ClusterKopfPeering CRD is not installed: reconciling without peering, "
                "so only one operator replica may run."
            )
            settings.peering.standalone = True
    await kopf.operator(
        registry=build_registry(context),
        settings=settings,
        clusterwide=True,
        standalone=settings.peering.standalone,
        peering_name=settings.peering.name,
        priority=settings.peering.priority,
        stop_flag=stop,
        ready_flag=ready,
    )
