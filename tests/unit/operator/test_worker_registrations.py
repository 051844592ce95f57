"""Which worker may register for which pool, and who may then act for a worker id."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from jobqueue.api.v1 import workers_pb2
from jobqueue.errors import NotFoundError, PermissionDeniedError
from jobqueue.operator.auth.model import (
    POD_NAME_EXTRA,
    POD_UID_EXTRA,
    Access,
    Decision,
    Identity,
    PodFacts,
    TokenVerdict,
)
from jobqueue.operator.auth.workers import WorkerRegistrations
from jobqueue.operator.workloads import POOL_LABEL, QUEUE_LABEL

NAMESPACE = "team"


def pod_identity(pod: str, uid: str | None = None) -> Identity:
    return Identity.of(
        f"system:serviceaccount:{NAMESPACE}:workers",
        extra={POD_NAME_EXTRA: [pod], POD_UID_EXTRA: [uid or f"uid-{pod}"]},
    )


class Cluster:
    """Pods, pools and queue namespaces, as the API server and the store would answer."""

    def __init__(self) -> None:
        self.pods: dict[str, PodFacts] = {}
        self.pools: dict[str, str] = {"pool-a": "queue-a", "pool-b": "queue-b"}
        self.namespaces: dict[str, str] = {"queue-a": NAMESPACE, "queue-b": NAMESPACE}

    def add_pod(self, name: str, pool: str, queue: str) -> None:
        labels = {POOL_LABEL: pool, QUEUE_LABEL: queue}
        self.pods[name] = PodFacts(uid=f"uid-{name}", service_account="workers", labels=labels)

    async def review_token(self, token: str, audiences: Sequence[str]) -> TokenVerdict:
        raise NotImplementedError

    async def review_access(self, identity: Identity, access: Access) -> Decision:
        raise NotImplementedError

    async def read_pod(self, namespace: str, name: str) -> PodFacts | None:
        return self.pods.get(name) if namespace == NAMESPACE else None

    async def pool_queue(self, namespace: str, pool: str) -> str | None:
        return self.pools.get(pool) if namespace == NAMESPACE else None

    async def namespace_of(self, queue: str) -> str:
        return self.namespaces[queue]

    async def queue_of_job(self, job_id: str) -> str:
        raise NotImplementedError

    async def queue_of_worker(self, worker_id: str) -> str:
        raise NotImplementedError


@pytest.fixture
def cluster() -> Cluster:
    made = Cluster()
    made.add_pod("pool-a-1", "pool-a", "queue-a")
    made.add_pod("pool-a-2", "pool-a", "queue-a")
    return made


def registrations(cluster: Cluster, unbound: Sequence[str] = ()) -> WorkerRegistrations:
    return WorkerRegistrations(
        cluster, cluster, unbound_workers=unbound, known_workers=lambda: ["pool-a-1"]
    )


def register(worker_id: str, queue: str = "queue-a", pool: str = "pool-a") -> Any:
    return workers_pb2.RegisterRequest(worker_id=worker_id, queue=queue, pool=pool, concurrency=1)


async def test_a_pod_of_the_pool_registers_and_owns_its_worker_id(cluster: Cluster) -> None:
    workers = registrations(cluster)
    owner = pod_identity("pool-a-1")

    workers.confirm(await workers.admit(owner, register("pool-a-1")))

    assert workers.of(owner, "pool-a-1").queue == "queue-a"
    with pytest.raises(PermissionDeniedError, match="may not act for it"):
        workers.of(pod_identity("pool-a-2"), "pool-a-1")
    with pytest.raises(PermissionDeniedError, match="cannot take it over"):
        await workers.admit(pod_identity("pool-a-2"), register("pool-a-1"))
    with pytest.raises(NotFoundError, match="not registered"):
        workers.of(owner, "someone-else")


@pytest.mark.parametrize(
    ("identity", "request_", "message"),
    [
        (pod_identity("pool-a-1"), register("w", "queue-b", "pool-b"), "belongs to pool pool-a"),
        (pod_identity("pool-a-1"), register("w", "queue-b", "pool-a"), "serves queue queue-a"),
        (pod_identity("pool-a-1"), register("w", "queue-a", ""), "registers for pool (none)"),
        (pod_identity("pool-a-1", uid="a-new-pod"), register("w"), "no longer exists"),
        (pod_identity("gone"), register("w"), "no longer exists"),
        (Identity.of("system:serviceaccount:team:laptop"), register("w"), "unbound_workers"),
    ],
    ids=["other pool", "other queue", "no pool", "recreated pod", "deleted pod", "no pod"],
)
async def test_a_worker_that_cannot_prove_its_pool_is_refused(
    cluster: Cluster, identity: Identity, request_: workers_pb2.RegisterRequest, message: str
) -> None:
    with pytest.raises(
        PermissionDeniedError, match=message.replace("(", r"\(").replace(")", r"\)")
    ):
        await registrations(cluster).admit(identity, request_)


async def test_pod_labels_are_not_enough_without_the_pool_resource(cluster: Cluster) -> None:
    cluster.add_pod("forged", "pool-c", "queue-a")

    with pytest.raises(PermissionDeniedError, match="pool-c does not exist"):
        await registrations(cluster).admit(pod_identity("forged"), register("w", pool="pool-c"))


async def test_a_pool_cannot_serve_a_queue_of_another_namespace(cluster: Cluster) -> None:
    cluster.namespaces["queue-a"] = "elsewhere"

    with pytest.raises(PermissionDeniedError, match="namespace elsewhere"):
        await registrations(cluster).admit(pod_identity("pool-a-1"), register("w"))


async def test_a_listed_user_registers_without_a_pod(cluster: Cluster) -> None:
    laptop = Identity.of("system:serviceaccount:team:laptop")
    workers = registrations(cluster, unbound=[laptop.username])

    admission = await workers.admit(laptop, register("laptop-1", pool=""))

    assert admission.registration.owner == laptop


async def test_a_failed_register_gives_the_worker_id_back(cluster: Cluster) -> None:
    workers = registrations(cluster)
    owner = pod_identity("pool-a-1")
    workers.confirm(await workers.admit(owner, register("pool-a-1")))

    again = await workers.admit(owner, register("pool-a-1"))
    workers.undo(again)
    fresh = await workers.admit(owner, register("brand-new"))
    workers.undo(fresh)

    assert workers.of(owner, "pool-a-1").owner == owner
    with pytest.raises(NotFoundError):
        workers.of(owner, "brand-new")
