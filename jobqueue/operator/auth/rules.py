"""The table: which verb each gRPC method needs, and on which queue.

Every method of the contract has exactly one rule; a method without one is refused (a
test checks the table covers the contract). A rule names the verb and how to find the
queues of a request: from a field, from the job or worker it names (``directory``), or
none at all, which means the check is cluster-wide (a ClusterRole bound with a
ClusterRoleBinding). WorkerService calls are special: ``Register`` also proves the
worker belongs to its pool, and the later calls are checked against the queue of the
registration they name (see ``workers``).

    method                         verb      queue checked
    JobService/Submit              submit    job.queue
    JobService/SubmitBatch         submit    every distinct jobs[].queue
    JobService/SubmitStream        submit    submit.job.queue, message by message
    JobService/Get, Events         get       the job's queue
    JobService/List                list      queue; cluster-wide when empty
    JobService/Cancel              cancel    the job's queue
    JobService/Retry               retry     the job's queue
    JobService/Watch               watch     the job's queue
    WorkerService/Register         work      queue (and the pod's pool, see workers)
    WorkerService/(the others)     work      the registered worker's queue
    AdminService/GetQueueStats     status    queue
    AdminService/ListQueues        status    cluster-wide
    AdminService/ListWorkers       status    queue; cluster-wide when empty
    AdminService/SystemStatus      status    cluster-wide
    AdminService/PauseQueue        pause     queue
    AdminService/ResumeQueue       resume    queue
    AdminService/DrainWorker       drain     the worker's queue
    AdminService/ShutdownWorker    shutdown  the worker's queue

docs/security.md repeats the table for people who write Roles; keep the two in step.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from jobqueue.api.v1 import admin_pb2, jobs_pb2, workers_pb2
from jobqueue.errors import InvalidInputError
from jobqueue.operator.auth.directory import QueueDirectory

# The queues a request touches; None means every queue (a cluster-wide check).
QueueFinder = Callable[[Any, QueueDirectory], Awaitable[Sequence[str] | None]]


class WorkerStep(enum.Enum):
    NONE = "none"  # not a worker call
    REGISTER = "register"  # prove the pool, then remember who registered the worker id
    REGISTERED = "registered"  # the caller must be who registered request.worker_id


@dataclass(frozen=True)
class Rule:
    verb: str
    queues: QueueFinder | None  # None: the registration decides (worker calls)
    worker: WorkerStep = WorkerStep.NONE
    # A stream whose method answers each message itself: a message refused is handed to
    # the method as ``rpc.RefusedMessage`` to be answered, and the stream goes on. On
    # other streams a refused message ends the stream.
    answers_each: bool = False


def _named(read: Callable[[Any], str], what: str) -> QueueFinder:
    async def find(request: Any, directory: QueueDirectory) -> Sequence[str] | None:
        queue = read(request)
        if not queue:
            raise InvalidInputError(f"{what}: must name a queue")
        return [queue]

    return find


def _named_or_every(read: Callable[[Any], str]) -> QueueFinder:
    async def find(request: Any, directory: QueueDirectory) -> Sequence[str] | None:
        queue = read(request)
        return [queue] if queue else None

    return find


async def _every_queue(request: Any, directory: QueueDirectory) -> Sequence[str] | None:
    return None


async def _batch_queues(
    request: jobs_pb2.SubmitBatchRequest, directory: QueueDirectory
) -> Sequence[str] | None:
    for index, spec in enumerate(request.jobs):
        if not spec.queue:
            raise InvalidInputError(f"jobs[{index}].queue: must name a queue")
    return sorted({spec.queue for spec in request.jobs})


async def _job_queue(request: Any, directory: QueueDirectory) -> Sequence[str] | None:
    return [await directory.queue_of_job(request.id)]


async def _worker_queue(request: Any, directory: QueueDirectory) -> Sequence[str] | None:
    return [await directory.queue_of_worker(request.worker_id)]


def _path(module: Any, service: str, method: str) -> str:
    return f"/{module.DESCRIPTOR.services_by_name[service].full_name}/{method}"


def _jobs(method: str) -> str:
    return _path(jobs_pb2, "JobService", method)


def _workers(method: str) -> str:
    return _path(workers_pb2, "WorkerService", method)


def _admin(method: str) -> str:
    return _path(admin_pb2, "AdminService", method)


_REGISTERED = Rule("work", None, WorkerStep.REGISTERED)

RULES: Mapping[str, Rule] = MappingProxyType(
    {
        _jobs("Submit"): Rule("submit", _named(lambda r: r.job.queue, "job.queue")),
        _jobs("SubmitBatch"): Rule("submit", _batch_queues),
        _jobs("SubmitStream"): Rule(
            "submit", _named(lambda r: r.submit.job.queue, "submit.job.queue"), answers_each=True
        ),
        _jobs("Get"): Rule("get", _job_queue),
        _jobs("Events"): Rule("get", _job_queue),
        _jobs("List"): Rule("list", _named_or_every(lambda r: r.queue)),
        _jobs("Cancel"): Rule("cancel", _job_queue),
        _jobs("Retry"): Rule("retry", _job_queue),
        _jobs("Watch"): Rule("watch", _job_queue),
        _workers("Register"): Rule("work", _named(lambda r: r.queue, "queue"), WorkerStep.REGISTER),
        _workers("Stream"): _REGISTERED,
        _workers("Started"): _REGISTERED,
        _workers("Result"): _REGISTERED,
        _workers("Report"): _REGISTERED,
        _workers("Heartbeat"): _REGISTERED,
        _workers("Deregister"): _REGISTERED,
        _admin("GetQueueStats"): Rule("status", _named(lambda r: r.queue, "queue")),
        _admin("ListQueues"): Rule("status", _every_queue),
        _admin("ListWorkers"): Rule("status", _named_or_every(lambda r: r.queue)),
        _admin("SystemStatus"): Rule("status", _every_queue),
        _admin("PauseQueue"): Rule("pause", _named(lambda r: r.queue, "queue")),
        _admin("ResumeQueue"): Rule("resume", _named(lambda r: r.queue, "queue")),
        _admin("DrainWorker"): Rule("drain", _worker_queue),
        _admin("ShutdownWorker"): Rule("shutdown", _worker_queue),
    }
)

DEREGISTER = _workers("Deregister")

# Every verb a Role may grant on jobqueues/jobs, for docs and the example Roles.
VERBS = tuple(sorted({rule.verb for rule in RULES.values()}))
