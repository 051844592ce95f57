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

kopf runs in a thread of its own, with its own event loop and database pool: it treats
the loop it runs in as its own and, when it stops, cancels every task it did not start,
which would include the gRPC calls in flight. The scheduler, which lives in the main
loop, is reached through ``SchedulerLink``, which hands each call over to that loop.

kopf keeps its own progress in annotations under ``jobqueue.dev/`` rather than in status,
whose schema does not allow foreign fields. Several replicas peer through the
ClusterKopfPeering ``operator.peering_name``: each gets a random priority, so exactly one
reconciles at a time (equal priorities would make them all pause), while every replica
serves gRPC and dispatches.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import random
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
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


class SchedulerLink:
    """The scheduler of the main loop, called from kopf's thread; each call is handed over."""

    def __init__(self, scheduler: Scheduler, loop: asyncio.AbstractEventLoop) -> None:
        self._scheduler = scheduler
        self._loop = loop

    def announce(self, queues: Sequence[str]) -> None:
        """Wake dispatch for ``queues`` here and, through Redis, in the other replicas."""
        future = asyncio.run_coroutine_threadsafe(self._scheduler.announce(queues), self._loop)
        future.add_done_callback(_log_failure)

    def tell_to_stop(self, worker_id: str, attempts: Sequence[AttemptRef], why: str) -> None:
        self._loop.call_soon_threadsafe(self._scheduler.tell_to_stop, worker_id, attempts, why)


def _log_failure(future: concurrent.futures.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.warning("A wake-up from the reconcilers failed.", exc_info=future.exception())


@dataclass
class Context:
    """What the handlers work with; one per operator process."""

    store: JobStore
    api: kube_client.ApiClient
    monitor: QueueMonitor
    settings: Settings
    scheduler: SchedulerLink | None = None


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


class _QuietKopf(logging.Filter):
    """Drops two kopf lines: one per resource and interval for each successful timer run,
    and the warning that OS signals are ignored in a thread (the operator handles them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("Timer ") and message.endswith(" succeeded."):
            return False
        return not message.startswith("OS signals are ignored")


def _announce(body: kopf.Body, *, reason: str, message: str) -> None:
    """A Normal Event on the resource. (kopf.info would be held back by posting.level.)"""
    kopf.event(body, type="Normal", reason=reason, message=message)


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

    def ready(*conditions: status_rules.Condition) -> None:
        patch.status["conditions"] = status_rules.merge_conditions(
            previous, conditions, generation=generation, now=_now()
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

    # Paused is shown at once; the status timer adds Degraded from the statistics.
    (paused, _) = status_rules.queue_conditions(spec, None, None)
    ready(
        status_rules.Condition("Ready", "True", "PolicyApplied", "the policy is in force"), paused
    )
    if context.scheduler is not None:
        # A resumed queue, or a raised limit, may have work to hand out at once.
        context.scheduler.announce([name])
    if reason != "resume":
        _announce(body, reason="PolicyApplied", message=f"generation {generation} in force")


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
        _announce(body, reason="JobsCancelled", message=f"{len(cancelled)} unfinished jobs")


async def _drain(context: Context, body: kopf.Body, policy: QueuePolicy) -> None:
    if not policy.closed:
        await context.store.close_queue(policy.name)
        _announce(body, reason="Draining", message="closed to new jobs; finishing what it holds")
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
    trust, ca_config_map = _operator_trust(context.settings, body)
    deployment = workloads.deployment(body, spec, operator_address=address, trust=trust)
    autoscaler = workloads.autoscaler(body, spec)
    try:
        if ca_config_map is not None:
            await asyncio.to_thread(resources.apply_object, context.api, ca_config_map)
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
    _announce(body, reason="DeploymentApplied", message=f"{spec.replicas} replicas wanted")


def _operator_trust(
    settings: Settings, body: kopf.Body
) -> tuple[workloads.OperatorTrust, dict[str, Any] | None]:
    """How the pool's workers will trust this operator, and the CA ConfigMap to apply."""
    tls = settings.operator.tls
    if tls.insecure_plaintext:
        return workloads.OperatorTrust(plaintext=True), None
    if settings.operator.worker_ca_configmap:
        return workloads.OperatorTrust(ca_config_map=settings.operator.worker_ca_configmap), None
    if not tls.ca_file:
        return workloads.OperatorTrust(), None
    try:
        ca_pem = Path(tls.ca_file).read_text()
    except OSError as error:
        # Read at every reconcile: a rotated CA reaches the pools on their next update.
        raise kopf.TemporaryError(f"operator.tls.ca_file: cannot read it: {error}") from error
    manifest = workloads.ca_config_map(body, ca_pem)
    name = str(manifest["metadata"]["name"])
    return workloads.OperatorTrust(ca_config_map=name), manifest


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

    @kopf.on.login(id="login", registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info(resources.kube_configuration())

    # An index is passed to handlers as a keyword named by its id.
    @kopf.index(*queue_kind, id="queues", registry=registry)
    def queues(namespace: str | None, name: str, **_: Any) -> dict[tuple[str, str], bool]:
        return {(namespace or "", name): True}

    @kopf.index(
        "apps",
        "v1",
        "deployments",
        id="deployments",
        labels={workloads.POOL_LABEL: kopf.PRESENT},
        registry=registry,
    )
    def deployments(
        namespace: str | None, name: str, status: kopf.Status, **_: Any
    ) -> dict[tuple[str, str], dict[str, Any]]:
        return {(namespace or "", name): dict(status)}

    @kopf.on.resume(*queue_kind, id="reconcile", registry=registry)
    @kopf.on.create(*queue_kind, id="reconcile", registry=registry)
    @kopf.on.update(*queue_kind, id="reconcile", registry=registry)
    async def queue_changed(
        body: kopf.Body, name: str, namespace: str | None, patch: kopf.Patch, reason: str, **_: Any
    ) -> None:
        await reconcile_queue(
            context, body=body, name=name, namespace=namespace or "", patch=patch, reason=reason
        )

    @kopf.on.delete(*queue_kind, id="delete", registry=registry)
    async def queue_deleted(body: kopf.Body, name: str, namespace: str | None, **_: Any) -> None:
        await delete_queue(context, body=body, name=name, namespace=namespace or "")

    @kopf.timer(*queue_kind, id="status", interval=interval_s, registry=registry)
    async def queue_status(body: kopf.Body, name: str, patch: kopf.Patch, **_: Any) -> None:
        await mirror_queue_status(context, body=body, name=name, patch=patch)

    @kopf.on.resume(*pool_kind, id="reconcile", registry=registry)
    @kopf.on.create(*pool_kind, id="reconcile", registry=registry)
    @kopf.on.update(*pool_kind, id="reconcile", registry=registry)
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

    @kopf.timer(*pool_kind, id="status", interval=interval_s, registry=registry)
    async def pool_status(
        body: kopf.Body, name: str, namespace: str | None, patch: kopf.Patch, **indexes: Any
    ) -> None:
        # kopf passes each index as a keyword named by its id: queues and deployments.
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


def connection_info(configuration: kube_client.Configuration) -> kopf.ConnectionInfo:
    """kopf's credentials from the client library's: the same cluster, user and CA."""
    header = configuration.get_api_key_with_prefix("BearerToken") or ""
    scheme, _, token = header.partition(" ")
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        scheme=scheme or None,
        token=token or None,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
    )


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


async def run_kopf(
    context: Context, stop: threading.Event, ready: threading.Event | None = None
) -> None:
    """Run kopf until ``stop`` is set; ``ready`` is set once it watches the resources."""
    settings = kopf_settings(context.settings)
    namespaces = [item.strip() for item in context.settings.operator.namespaces.split(",")]
    namespaces = [item for item in namespaces if item]
    settings.peering.clusterwide = not namespaces
    if namespaces and not settings.peering.standalone:
        # Peering across a namespace list would need one KopfPeering per namespace.
        logger.warning("Reconciling namespaces %s without peering.", ", ".join(namespaces))
        settings.peering.standalone = True
    if not settings.peering.standalone:
        peered = await asyncio.to_thread(ensure_peering, context.api, settings.peering.name)
        if not peered:
            logger.warning(
                "The ClusterKopfPeering CRD is not installed: reconciling without peering, "
                "so only one operator replica may run."
            )
            settings.peering.standalone = True
    # With peering on, kopf waits for the peering object rather than run unpeered.
    settings.peering.mandatory = not settings.peering.standalone
    await kopf.operator(
        registry=build_registry(context),
        settings=settings,
        clusterwide=not namespaces,
        namespaces=namespaces,
        stop_flag=stop,
        ready_flag=ready,
    )


_QUIET_KOPF: Final = _QuietKopf()


class Reconcilers:
    """kopf in a thread of its own: ``start``, then ``stop`` (awaitable) when done.

    ``ready`` is set once kopf watches the resources; ``failure`` holds what ended the
    thread early, if anything did (it is logged too).
    """

    # Seconds kopf gets to finish the handlers in flight when told to stop.
    STOP_TIMEOUT_S: Final = 20.0

    def __init__(
        self, settings: Settings, dsn: str, monitor: QueueMonitor, scheduler: SchedulerLink | None
    ) -> None:
        self.settings = settings
        self.dsn = dsn
        self.monitor = monitor
        self.scheduler = scheduler
        self.ready = threading.Event()
        self.failure: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reconcilers", daemon=True)

    def start(self) -> None:
        for name in ("kopf.objects", "kopf._core.reactor.running"):
            logging.getLogger(name).addFilter(_QUIET_KOPF)
        self._thread.start()

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.to_thread(self._thread.join, self.STOP_TIMEOUT_S)
        if self._thread.is_alive():
            logger.error("The reconcilers did not stop within %g s.", self.STOP_TIMEOUT_S)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as error:  # the thread's last word: record and log, never lose
            self.failure = error
            logger.exception("The reconcilers stopped on an error.")

    async def _main(self) -> None:
        # kopf's loop gets a small pool of its own: connections belong to one loop.
        store = await JobStore.open(self.dsn, min_size=1, max_size=4)
        api = resources.api_client_from_environment()
        try:
            context = Context(store, api, self.monitor, self.settings, self.scheduler)
            await run_kopf(context, self._stop, self.ready)
        finally:
            api.close()
            await store.close()
