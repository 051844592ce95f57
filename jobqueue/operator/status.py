"""What the operator writes into each resource's status: counts, conditions, generations.

Pure functions from what is known (queue statistics, worker counts, a Deployment's
status, the previous status) to the new status, so the rules are unit-tested without a
cluster, and ``reconcile`` only moves data in and out.

Conditions follow ``metav1.Condition``: a list keyed by ``type``, and
``lastTransitionTime`` changes only when ``status`` does, so ``kubectl describe`` says
since when a queue has been degraded, not when the operator last looked.

``changes`` compares the new status with the stored one, so a resource is patched only
when something a person would see moved: hundreds of idle queues cost no API calls.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from jobqueue.resources import JobQueueSpec, WorkerPoolSpec
from jobqueue.store import JobState, QueueStats, WorkerCounts

ConditionStatus = Literal["True", "False", "Unknown"]

# Status keys for the job counts, in the CRD's camelCase.
COUNT_KEYS: Mapping[JobState, str] = {
    JobState.PENDING: "pending",
    JobState.ASSIGNED: "assigned",
    JobState.RUNNING: "running",
    JobState.FAILED: "failed",
    JobState.SUCCEEDED: "succeeded",
    JobState.DEAD_LETTERED: "deadLettered",
    JobState.CANCELLED: "cancelled",
}


@dataclass(frozen=True)
class Condition:
    type: str
    status: ConditionStatus
    reason: str  # one CamelCase word
    message: str = ""


def timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with whole seconds, as Kubernetes writes its own times."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_conditions(
    previous: Sequence[Mapping[str, Any]] | None,
    updates: Iterable[Condition],
    *,
    generation: int | None,
    now: datetime,
) -> list[dict[str, Any]]:
    """The condition list with ``updates`` applied; types not updated are kept as they were."""
    merged = {str(item.get("type")): dict(item) for item in previous or () if item.get("type")}
    for condition in updates:
        before = merged.get(condition.type)
        transitioned = before is None or before.get("status") != condition.status
        entry: dict[str, Any] = {
            "type": condition.type,
            "status": condition.status,
            "reason": condition.reason,
            "message": condition.message,
            "lastTransitionTime": (
                timestamp(now) if transitioned or before is None else before["lastTransitionTime"]
            ),
        }
        if generation is not None:
            entry["observedGeneration"] = generation
        merged[condition.type] = entry
    return sorted(merged.values(), key=lambda item: str(item["type"]))


def changes(stored: Mapping[str, Any] | None, wanted: Mapping[str, Any]) -> dict[str, Any]:
    """The top-level status keys whose value differs from what is stored."""
    stored = stored or {}
    return {key: value for key, value in wanted.items() if stored.get(key) != value}


# JobQueue --------------------------------------------------------------------------------


def queue_conditions(
    spec: JobQueueSpec, stats: QueueStats | None, workers: WorkerCounts | None
) -> list[Condition]:
    """Paused and Degraded, from the spec and the latest statistics (Ready is the reconcile's)."""
    paused = (
        Condition("Paused", "True", "PausedBySpec", "spec.paused is true: nothing is dispatched")
        if spec.paused
        else Condition("Paused", "False", "Dispatching")
    )
    if stats is None:
        return [paused, Condition("Degraded", "Unknown", "NoStatistics", "not measured yet")]

    pending = stats.counts.get(JobState.PENDING, 0)
    connected = workers.connected if workers else 0
    if pending and not connected and not spec.paused:
        degraded = Condition(
            "Degraded",
            "True",
            "NoWorkers",
            f"{pending} jobs are pending and no worker is connected",
        )
    else:
        degraded = Condition("Degraded", "False", "AsExpected")
    return [paused, degraded]


def queue_status(
    spec: JobQueueSpec,
    stats: QueueStats | None,
    workers: WorkerCounts | None,
    *,
    previous: Mapping[str, Any] | None,
    generation: int | None,
    now: datetime,
) -> dict[str, Any]:
    """A JobQueue's mirrored status: counts, oldest pending age, workers, conditions."""
    status: dict[str, Any] = {
        "connectedWorkers": workers.connected if workers else 0,
        "busyWorkers": workers.busy if workers else 0,
    }
    if stats is not None:
        status["jobs"] = {key: stats.counts.get(state, 0) for state, key in COUNT_KEYS.items()}
        # Whole seconds: finer would change the status, and cost a patch, on every pass.
        age = stats.oldest_pending_age_s
        status["oldestPendingAgeSeconds"] = 0 if age is None else int(age)
    previous_conditions = (previous or {}).get("conditions")
    status["conditions"] = merge_conditions(
        previous_conditions,
        queue_conditions(spec, stats, workers),
        generation=generation,
        now=now,
    )
    return status


# QueueWorkerPool -------------------------------------------------------------------------


def pool_conditions(
    spec: WorkerPoolSpec,
    *,
    queue_found: bool,
    ready_replicas: int,
    replica_failure: str | None,
) -> list[Condition]:
    """QueueFound, Ready and Degraded of a pool."""
    if queue_found:
        found = Condition("QueueFound", "True", "QueueExists", f"JobQueue {spec.queue} exists")
    else:
        found = Condition(
            "QueueFound",
            "False",
            "QueueMissing",
            f"no JobQueue named {spec.queue} in this namespace; workers will find nothing to do",
        )

    message = f"{ready_replicas}/{spec.replicas} worker pods ready"
    if ready_replicas >= spec.replicas:
        ready = Condition("Ready", "True", "ReplicasReady", message)
    else:
        ready = Condition("Ready", "False", "ReplicasNotReady", message)

    if replica_failure:
        degraded = Condition("Degraded", "True", "ReplicaFailure", replica_failure)
    elif not queue_found:
        degraded = Condition("Degraded", "True", "QueueMissing", found.message)
    else:
        degraded = Condition("Degraded", "False", "AsExpected")
    return [found, ready, degraded]


def pool_status(
    spec: WorkerPoolSpec,
    *,
    selector: str,
    deployment: Mapping[str, Any] | None,
    workers: WorkerCounts | None,
    queue_found: bool,
    previous: Mapping[str, Any] | None,
    generation: int | None,
    now: datetime,
) -> dict[str, Any]:
    """A pool's status from its Deployment's status and the workers the operator sees."""
    deployment = deployment or {}
    ready_replicas = int(deployment.get("readyReplicas") or 0)
    failure = next(
        (
            str(condition.get("message") or "replica failure")
            for condition in deployment.get("conditions") or ()
            if condition.get("type") == "ReplicaFailure" and condition.get("status") == "True"
        ),
        None,
    )
    conditions = pool_conditions(
        spec, queue_found=queue_found, ready_replicas=ready_replicas, replica_failure=failure
    )
    return {
        "replicas": int(deployment.get("replicas") or 0),
        "readyReplicas": ready_replicas,
        "connectedWorkers": workers.connected if workers else 0,
        "busyWorkers": workers.busy if workers else 0,
        "selector": selector,
        "conditions": merge_conditions(
            (previous or {}).get("conditions"), conditions, generation=generation, now=now
        ),
    }
