"""The rules for what the operator writes into status: conditions, counts, changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from jobqueue.operator import status
from jobqueue.resources import JobQueueSpec, WorkerPoolSpec
from jobqueue.store import JobState, QueueStats, WorkerCounts

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def stats(**counts: int) -> QueueStats:
    return QueueStats(
        queue="q",
        counts={state: counts.get(state.value, 0) for state in JobState},
        oldest_pending_age_s=12.7 if counts.get("pending") else None,
        run_time_mean_s=None,
        run_time_p95_s=None,
        error_rate=None,
        window_s=300,
    )


def pool_spec(replicas: int = 2) -> WorkerPoolSpec:
    return WorkerPoolSpec.from_manifest(
        {"queue": "q", "replicas": replicas, "template": {"image": "worker:1"}}
    )


def test_a_condition_keeps_its_transition_time_while_its_status_holds() -> None:
    first = status.merge_conditions(
        None, [status.Condition("Degraded", "True", "NoWorkers")], generation=1, now=NOW
    )
    later = NOW + timedelta(minutes=5)
    same = status.merge_conditions(
        first,
        [status.Condition("Degraded", "True", "NoWorkers", "3 pending")],
        generation=1,
        now=later,
    )
    flipped = status.merge_conditions(
        same, [status.Condition("Degraded", "False", "AsExpected")], generation=2, now=later
    )

    assert same[0]["lastTransitionTime"] == "2030-01-01T12:00:00Z"
    assert same[0]["message"] == "3 pending"
    assert flipped[0]["lastTransitionTime"] == "2030-01-01T12:05:00Z"
    assert flipped[0]["observedGeneration"] == 2


def test_conditions_not_updated_are_kept_and_the_list_is_ordered_by_type() -> None:
    previous = status.merge_conditions(
        None, [status.Condition("Ready", "True", "PolicyApplied")], generation=1, now=NOW
    )
    merged = status.merge_conditions(
        previous, [status.Condition("Degraded", "False", "AsExpected")], generation=1, now=NOW
    )
    assert [item["type"] for item in merged] == ["Degraded", "Ready"]


def test_pending_jobs_without_workers_degrade_the_queue_unless_it_is_paused() -> None:
    spec = JobQueueSpec.from_manifest({})
    paused = JobQueueSpec.from_manifest({"paused": True})
    none = WorkerCounts("q", "", 0, 0)

    (_, degraded) = status.queue_conditions(spec, stats(pending=3), none)
    (paused_condition, paused_degraded) = status.queue_conditions(paused, stats(pending=3), none)
    (_, served) = status.queue_conditions(spec, stats(pending=3), WorkerCounts("q", "", 1, 1))

    assert (degraded.status, degraded.reason) == ("True", "NoWorkers")
    assert "3 jobs are pending" in degraded.message
    assert (paused_condition.status, paused_degraded.status) == ("True", "False")
    assert served.status == "False"


def test_queue_status_counts_every_state_and_rounds_the_oldest_age() -> None:
    built = status.queue_status(
        JobQueueSpec.from_manifest({}),
        stats(pending=2, running=1, dead_lettered=4),
        WorkerCounts("q", "", 3, 1),
        previous=None,
        generation=5,
        now=NOW,
    )
    assert built["jobs"] == {
        "pending": 2,
        "assigned": 0,
        "running": 1,
        "failed": 0,
        "succeeded": 0,
        "deadLettered": 4,
        "cancelled": 0,
    }
    assert built["oldestPendingAgeSeconds"] == 12
    assert (built["connectedWorkers"], built["busyWorkers"]) == (3, 1)


def test_without_statistics_the_queue_status_says_degraded_is_unknown() -> None:
    built = status.queue_status(
        JobQueueSpec.from_manifest({}), None, None, previous=None, generation=1, now=NOW
    )
    assert "jobs" not in built
    degraded = next(item for item in built["conditions"] if item["type"] == "Degraded")
    assert degraded["status"] == "Unknown"


def test_only_changed_keys_are_patched() -> None:
    stored = {"connectedWorkers": 1, "jobs": {"pending": 3}, "selector": "a=b"}
    wanted = {"connectedWorkers": 1, "jobs": {"pending": 4}, "selector": "a=b"}
    assert status.changes(stored, wanted) == {"jobs": {"pending": 4}}
    assert status.changes(stored, stored) == {}
    assert status.changes(None, wanted) == wanted


def test_pool_status_reads_its_deployment_and_reports_missing_queues_and_failures() -> None:
    deployment = {
        "replicas": 2,
        "readyReplicas": 1,
        "conditions": [
            {"type": "ReplicaFailure", "status": "True", "message": "quota exceeded"},
        ],
    }
    built = status.pool_status(
        pool_spec(),
        selector="jobqueue.dev/pool=p",
        deployment=deployment,
        workers=WorkerCounts("q", "p", 1, 0),
        queue_found=False,
        previous=None,
        generation=3,
        now=NOW,
    )
    conditions = {item["type"]: item for item in built["conditions"]}

    assert (built["replicas"], built["readyReplicas"], built["connectedWorkers"]) == (2, 1, 1)
    assert conditions["QueueFound"]["status"] == "False"
    assert conditions["Ready"]["message"] == "1/2 worker pods ready"
    assert (conditions["Degraded"]["status"], conditions["Degraded"]["reason"]) == (
        "True",
        "ReplicaFailure",
    )


def test_a_pool_whose_pods_are_all_ready_is_ready() -> None:
    conditions = status.pool_conditions(
        pool_spec(replicas=2), queue_found=True, ready_replicas=2, replica_failure=None
    )
    assert [(item.type, item.status) for item in conditions] == [
        ("QueueFound", "True"),
        ("Ready", "True"),
        ("Degraded", "False"),
    ]
