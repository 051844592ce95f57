"""Step 3 for workers: a worker is one of the pool it claims, and keeps its identity.

RBAC can say that a ServiceAccount may ``work`` on a queue, but pools often share one
ServiceAccount, and a ServiceAccount's token is only as private as the pods that mount
it. So ``Register`` also proves the pool: a pod's ServiceAccount token is bound to the
pod (the TokenReview returns the pod's name and uid as extras), and the operator reads
that pod and requires

- its uid to match the token's (the pod is the one the token was issued for),
- its labels ``jobqueue.dev/pool`` and ``jobqueue.dev/queue``, which the pool's
  Deployment sets, to equal the pool and queue the worker registers for,
- the QueueWorkerPool of that name, in the pod's namespace, to serve that queue, and
  the queue to live in the same namespace.

A worker whose token is not bound to a pod (a local process in development or tests)
may register only if its user is listed in ``operator.auth.unbound_workers``; it still
needs the ``work`` verb, and its pool is taken on trust.

Later calls (Stream, Started, Result, Heartbeat, Deregister) name a worker id. The id
belongs to the identity (user and pod) that registered it here, so another caller, even
one allowed to work on the same queue, cannot report results for it, extend its leases
or take its stream. Registrations live in the replica that took them, like the
scheduler's sessions; after an operator restart every worker registers again anyway.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass

from jobqueue.api.v1 import workers_pb2
from jobqueue.errors import NotFoundError, PermissionDeniedError
from jobqueue.operator.auth.directory import QueueDirectory
from jobqueue.operator.auth.model import Identity, PodRef
from jobqueue.operator.auth.reviews import Reviews
from jobqueue.operator.workloads import POOL_LABEL, QUEUE_LABEL

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Registration:
    worker_id: str
    owner: Identity
    queue: str
    pool: str


@dataclass(frozen=True)
class Admission:
    registration: Registration
    previous: Registration | None  # what the worker id was registered as before, if anything


def same_owner(first: Identity, second: Identity) -> bool:
    """One user, and the same pod (or no pod for both): tokens may rotate in between."""
    first_pod, second_pod = first.pod, second.pod
    return first.username == second.username and (
        (first_pod.uid if first_pod else None) == (second_pod.uid if second_pod else None)
    )


class WorkerRegistrations:
    def __init__(
        self,
        reviews: Reviews,
        directory: QueueDirectory,
        *,
        unbound_workers: Collection[str],
        known_workers: Callable[[], Collection[str]],
    ) -> None:
        self._reviews = reviews
        self._directory = directory
        self.unbound_workers = frozenset(unbound_workers)
        # The worker ids the scheduler still has sessions for; the others are forgotten.
        self._known_workers = known_workers
        self._registrations: dict[str, Registration] = {}
        self._registering: set[str] = set()  # admitted, Register still running

    async def admit(self, identity: Identity, request: workers_pb2.RegisterRequest) -> Admission:
        """Check and record a registration before Register runs; PermissionDeniedError if not.

        It is recorded at once, so two callers racing for one worker id cannot both pass;
        ``undo`` takes it back if Register then fails.
        """
        existing = self._registrations.get(request.worker_id)
        if existing is not None and not same_owner(existing.owner, identity):
            raise PermissionDeniedError(
                f"worker id {request.worker_id} is registered with this operator by "
                f"{existing.owner.describe()}; {identity.describe()} cannot take it over"
            )
        pod = identity.pod
        if pod is None:
            self._check_unbound(identity, request)
        else:
            await self._check_pod(pod, request)

        # The checks awaited: another caller may have taken the id meanwhile.
        current = self._registrations.get(request.worker_id)
        if current is not None and current is not existing:
            raise PermissionDeniedError(
                f"worker id {request.worker_id} was registered meanwhile by "
                f"{current.owner.describe()}"
            )
        registration = Registration(request.worker_id, identity, request.queue, request.pool)
        self._forget_unknown()
        self._registrations[request.worker_id] = registration
        self._registering.add(request.worker_id)
        return Admission(registration, existing)

    def confirm(self, admission: Admission) -> None:
        """Register succeeded: the scheduler knows the worker now."""
        self._registering.discard(admission.registration.worker_id)
        logger.debug(
            "Worker %s registered by %s.",
            admission.registration.worker_id, admission.registration.owner.describe(),
        )  # fmt: skip

    def undo(self, admission: Admission) -> None:
        """Register failed: the worker id goes back to whoever held it before."""
        worker_id = admission.registration.worker_id
        self._registering.discard(worker_id)
        if self._registrations.get(worker_id) is not admission.registration:
            return
        if admission.previous is None:
            del self._registrations[worker_id]
        else:
            self._registrations[worker_id] = admission.previous

    def _forget_unknown(self) -> None:
        known = set(self._known_workers()) | self._registering
        for worker_id in [w for w in self._registrations if w not in known]:
            del self._registrations[worker_id]

    def _check_unbound(self, identity: Identity, request: workers_pb2.RegisterRequest) -> None:
        if identity.username in self.unbound_workers:
            return
        raise PermissionDeniedError(
            f"{identity.username} may not register worker {request.worker_id} for queue "
            f"{request.queue}: its token is not bound to a pod, so its pool cannot be checked. "
            "Workers run in the pods of their QueueWorkerPool with the pod's ServiceAccount "
            "token; a worker outside a pod needs its user listed in "
            "operator.auth.unbound_workers"
        )

    async def _check_pod(self, pod: PodRef, request: workers_pb2.RegisterRequest) -> None:
        where = f"pod {pod.namespace}/{pod.name}"
        refuse = f"worker {request.worker_id} may not serve queue {request.queue}"
        facts = await self._reviews.read_pod(pod.namespace, pod.name)
        if facts is None or facts.uid != pod.uid:
            raise PermissionDeniedError(f"{refuse}: {where}, its token's pod, no longer exists")

        pool_label, queue_label = facts.labels.get(POOL_LABEL), facts.labels.get(QUEUE_LABEL)
        if not pool_label or not queue_label:
            raise PermissionDeniedError(
                f"{refuse}: {where} is not a worker pool's pod (no {POOL_LABEL} and "
                f"{QUEUE_LABEL} labels)"
            )
        if request.pool != pool_label:
            raise PermissionDeniedError(
                f"{refuse}: it registers for pool {request.pool or '(none)'}, but {where} "
                f"belongs to pool {pool_label}"
            )
        if request.queue != queue_label:
            raise PermissionDeniedError(
                f"{refuse}: {where} belongs to pool {pool_label}, which serves queue {queue_label}"
            )

        # The labels are what the pod claims; the pool resource is what the platform set.
        served = await self._reviews.pool_queue(pod.namespace, request.pool)
        if served != request.queue:
            found = f"serves queue {served}" if served else "does not exist"
            raise PermissionDeniedError(
                f"{refuse}: QueueWorkerPool {pod.namespace}/{request.pool} {found}"
            )
        namespace = await self._directory.namespace_of(request.queue)
        if namespace != pod.namespace:
            raise PermissionDeniedError(
                f"{refuse}: the queue is in namespace {namespace or '(none)'}, the pool in "
                f"{pod.namespace}"
            )

    def of(self, identity: Identity, worker_id: str) -> Registration:
        """The registration a call names; only its owner may use it."""
        registration = self._registrations.get(worker_id)
        if registration is None:
            # NOT_FOUND tells the worker to register again (after an operator restart).
            raise NotFoundError(f"worker {worker_id} is not registered with this operator")
        if not same_owner(registration.owner, identity):
            raise PermissionDeniedError(
                f"worker {worker_id} was registered by {registration.owner.describe()}; "
                f"{identity.describe()} may not act for it"
            )
        return registration

    def forget(self, worker_id: str) -> None:
        self._registrations.pop(worker_id, None)
