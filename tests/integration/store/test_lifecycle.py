"""A job's life through the store, against real PostgreSQL, with a manual clock."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg
import pytest

from jobqueue.errors import ConflictError, InvalidInputError, NotFoundError
from jobqueue.store import (
    AttemptRef,
    AttemptResult,
    EventKind,
    JobState,
    JobStore,
    ManualClock,
    Outcome,
)
from tests.integration.store.helpers import command, policy, table_count

pytestmark = pytest.mark.integration

WORKER = "worker-a"


def succeeded(job_id: str, attempt: int = 1, **fields: Any) -> AttemptResult:
    return AttemptResult(job_id, attempt, Outcome.SUCCEEDED, **fields)


def failed(job_id: str, attempt: int = 1, error: str = "boom", **fields: Any) -> AttemptResult:
    return AttemptResult(job_id, attempt, Outcome.FAILED, error=error, **fields)


async def test_job_runs_from_submit_to_success(store: JobStore, clock: ManualClock) -> None:
    await store.apply_queue(policy())
    submitted = await store.submit(command("default", "echo", "hi", labels={"team": "a"}))
    assert submitted.created
    assert submitted.job.state is JobState.PENDING
    assert submitted.job.attempt == 0
    assert submitted.job.payload == {"argv": ["echo", "hi"], "env": {}, "working_directory": ""}

    (claimed,) = await store.claim("default", [WORKER], lease_s=30)
    assert claimed.id == submitted.job.id
    assert claimed.state is JobState.ASSIGNED
    assert claimed.attempt == 1
    assert claimed.worker_id == WORKER
    assert claimed.lease_expires_at == clock.now() + timedelta(seconds=30)

    clock.advance(1)
    (started,) = await store.report_started(WORKER, [AttemptRef(claimed.id, 1)], lease_s=30)
    assert started.accepted
    assert started.state is JobState.RUNNING

    clock.advance(2)
    result = succeeded(claimed.id, output="hi\n", exit_code=0, run_time_s=2.0)
    (outcome,) = await store.report_results(WORKER, [result])
    assert outcome.accepted
    assert outcome.state is JobState.SUCCEEDED

    job = await store.get(claimed.id)
    assert job.state is JobState.SUCCEEDED
    assert job.output == "hi\n"
    assert job.exit_code == 0
    assert job.finished_at == clock.now()
    assert job.lease_expires_at is None
    assert job.labels == {"team": "a"}
    events = await store.events(claimed.id)
    assert [event.kind for event in events] == [
        EventKind.SUBMITTED,
        EventKind.STARTED,
        EventKind.SUCCEEDED,
    ]
    assert [event.attempt for event in events] == [0, 1, 1]
    assert events[1].data == {"worker_id": WORKER}
    assert events[2].data == {"worker_id": WORKER, "exit_code": 0, "run_time_s": 2.0}


async def test_failure_backs_off_then_retries_as_the_next_attempt(
    store: JobStore, clock: ManualClock
) -> None:
    await store.apply_queue(policy(max_attempts=3))
    job_id = (await store.submit(command())).job.id
    await store.claim("default", [WORKER], lease_s=30)
    await store.report_started(WORKER, [AttemptRef(job_id, 1)], lease_s=30)

    (outcome,) = await store.report_results(WORKER, [failed(job_id, exit_code=3)])

    assert outcome.accepted
    assert outcome.state is JobState.FAILED
    job = await store.get(job_id)
    assert job.run_after == clock.now() + timedelta(seconds=10)  # initial_s, no jitter
    assert job.last_error == "boom"
    assert job.exit_code == 3
    assert await store.claim("default", [WORKER], lease_s=30) == []

    clock.advance(9)
    assert await store.promote_due_retries() == 0
    assert await store.claim("default", [WORKER], lease_s=30) == []

    clock.advance(1)
    assert await store.promote_due_retries() == 1
    (again,) = await store.claim("default", [WORKER], lease_s=30)
    assert again.id == job_id
    assert again.attempt == 2
    failed_event = (await store.events(job_id))[-1]
    assert failed_event.kind is EventKind.FAILED
    assert failed_event.data == {
        "worker_id": WORKER,
        "error": "boom",
        "exit_code": 3,
        "retry_at": job.run_after.isoformat(),
        "timed_out": False,
        "lease_expired": False,
    }

    # The second failure waits twice as long.
    await store.report_results(WORKER, [failed(job_id, attempt=2)])
    assert (await store.get(job_id)).run_after == clock.now() + timedelta(seconds=20)


async def test_spent_attempts_dead_letter_the_job(store: JobStore, clock: ManualClock) -> None:
    await store.apply_queue(policy(max_attempts=2))
    job_id = (await store.submit(command())).job.id
    for attempt in (1, 2):
        await store.claim("default", [WORKER], lease_s=30)
        (outcome,) = await store.report_results(WORKER, [failed(job_id, attempt, f"e{attempt}")])
        clock.advance(3600)
        await store.promote_due_retries()

    assert outcome.state is JobState.DEAD_LETTERED
    job = await store.get(job_id)
    assert job.state is JobState.DEAD_LETTERED
    assert job.finished_at is not None
    assert job.last_error == "e2"
    kinds = [event.kind for event in await store.events(job_id)]
    assert kinds == [
        EventKind.SUBMITTED,
        EventKind.STARTED,  # a result without Started records the start first
        EventKind.FAILED,
        EventKind.STARTED,
        EventKind.FAILED,
        EventKind.DEAD_LETTERED,
    ]
    last_failed = (await store.events(job_id))[-2]
    assert last_failed.data["retry_at"] is None


async def test_result_for_an_assigned_job_records_the_start_first(store: JobStore) -> None:
    await store.apply_queue(policy())
    job_id = (await store.submit(command())).job.id
    await store.claim("default", [WORKER], lease_s=30)

    (outcome,) = await store.report_results(WORKER, [succeeded(job_id)])

    assert outcome.accepted
    job = await store.get(job_id)
    assert job.started_at is not None
    events = await store.events(job_id)
    assert [event.kind for event in events][-2:] == [EventKind.STARTED, EventKind.SUCCEEDED]


async def test_cancel_pending_job(store: JobStore) -> None:
    await store.apply_queue(policy())
    job_id = (await store.submit(command())).job.id

    cancelled = await store.cancel(job_id, reason="not needed")

    assert cancelled.job.state is JobState.CANCELLED
    assert cancelled.worker_id is None
    assert await store.claim("default", [WORKER], lease_s=30) == []
    event = (await store.events(job_id))[-1]
    assert event.kind is EventKind.CANCELLED
    assert event.data == {"reason": "not needed", "worker_id": None}


async def test_cancel_running_job_refuses_its_later_result(store: JobStore) -> None:
    await store.apply_queue(policy())
    job_id = (await store.submit(command())).job.id
    await store.claim("default", [WORKER], lease_s=30)
    await store.report_started(WORKER, [AttemptRef(job_id, 1)], lease_s=30)

    cancelled = await store.cancel(job_id, reason="stop")
    (outcome,) = await store.report_results(WORKER, [succeeded(job_id)])

    assert cancelled.worker_id == WORKER
    assert not outcome.accepted
    assert outcome.state is JobState.CANCELLED
    assert "cancelled" in outcome.reason
    job = await store.get(job_id)
    assert job.state is JobState.CANCELLED
    assert job.output is None
    assert (await store.events(job_id))[-1].kind is EventKind.CANCELLED


async def test_cancel_of_a_finished_job_is_a_conflict(store: JobStore) -> None:
    await store.apply_queue(policy())
    job_id = (await store.submit(command())).job.id
    await store.claim("default", [WORKER], lease_s=30)
    await store.report_results(WORKER, [succeeded(job_id)])

    with pytest.raises(ConflictError, match="succeeded"):
        await store.cancel(job_id)


async def test_idempotent_submit_returns_the_first_job(
    store: JobStore, database: psycopg.Connection[Any]
) -> None:
    await store.apply_queue(policy())
    first = await store.submit(command(idempotency_key="order-1"))

    again = await store.submit(command("default", "other", idempotency_key="order-1"))

    assert first.created
    assert not again.created
    assert again.job.id == first.job.id
    assert again.job.payload["argv"] == ["true"]
    assert table_count(database, "jobs") == 1
    assert table_count(database, "job_events") == 1


async def test_idempotent_submit_within_one_batch(
    store: JobStore, database: psycopg.Connection[Any]
) -> None:
    await store.apply_queue(policy())
    await store.apply_queue(policy("other"))

    results = await store.submit_batch(
        [
            command(idempotency_key="k"),
            command(),
            command(idempotency_key="k"),
            command("other", idempotency_key="k"),  # same key, another queue: a new job
        ]
    )

    assert [result.created for result in results] == [True, True, False, True]
    assert results[2].job.id == results[0].job.id
    assert results[3].job.id != results[0].job.id
    assert table_count(database, "jobs") == 3
    assert table_count(database, "job_events") == 3


async def test_stale_reports_are_refused_and_leave_the_job_unchanged(
    store: JobStore,
) -> None:
    await store.apply_queue(policy())
    job_id = (await store.submit(command())).job.id
    await store.claim("default", [WORKER], lease_s=30)
    await store.report_started(WORKER, [AttemptRef(job_id, 1)], lease_s=30)
    before = await store.get(job_id)
    events_before = await store.events(job_id)

    wrong_attempt = await store.report_results(WORKER, [succeeded(job_id, attempt=2)])
    wrong_worker = await store.report_results("worker-b", [succeeded(job_id)])
    second_start = await store.report_started(WORKER, [AttemptRef(job_id, 1)], lease_s=30)
    unknown = await store.report_results(
        WORKER, [succeeded("00000000-0000-4000-8000-000000000000")]
    )

    assert not wrong_attempt[0].accepted
    assert "attempt 2" in wrong_attempt[0].reason
    assert not wrong_worker[0].accepted
    assert "worker-b" in wrong_worker[0].reason
    assert not second_start[0].accepted
    assert second_start[0].state is JobState.RUNNING
    assert not unknown[0].accepted
    assert unknown[0].state is None
    assert await store.get(job_id) == before
    assert await store.events(job_id) == events_before


async def test_duplicate_result_is_refused(store: JobStore) -> None:
    await store.apply_queue(policy())
    job_id = (await store.submit(command())).job.id
    await store.claim("default", [WORKER], lease_s=30)

    outcomes = await store.report_results(
        WORKER, [succeeded(job_id, output="first"), succeeded(job_id, output="second")]
    )
    later = await store.report_results(WORKER, [succeeded(job_id, output="third")])

    assert [outcome.accepted for outcome in outcomes] == [True, False]
    assert not later[0].accepted
    assert (await store.get(job_id)).output == "first"
    kinds = [event.kind for event in await store.events(job_id)]
    assert kinds.count(EventKind.SUCCEEDED) == 1


async def test_manual_retry_of_a_dead_lettered_job_gives_one_more_run(
    store: JobStore, clock: ManualClock
) -> None:
    await store.apply_queue(policy(max_attempts=1))
    job_id = (await store.submit(command())).job.id
    await store.claim("default", [WORKER], lease_s=30)
    await store.report_results(WORKER, [failed(job_id)])
    assert (await store.get(job_id)).state is JobState.DEAD_LETTERED

    clock.advance(60)
    retried = await store.retry(job_id)

    assert retried.state is JobState.PENDING
    assert retried.max_attempts == 2
    assert retried.finished_at is None
    assert retried.run_after == clock.now()
    (claimed,) = await store.claim("default", [WORKER], lease_s=30)
    assert claimed.attempt == 2
    (outcome,) = await store.report_results(WORKER, [failed(job_id, attempt=2)])
    assert outcome.state is JobState.DEAD_LETTERED
    retry_event = [e for e in await store.events(job_id) if e.kind is EventKind.SUBMITTED][-1]
    assert retry_event.data == {"manual_retry": True, "previous_state": "dead_lettered"}


async def test_manual_retry_of_a_failed_job_skips_the_backoff(store: JobStore) -> None:
    await store.apply_queue(policy())
    job_id = (await store.submit(command())).job.id
    await store.claim("default", [WORKER], lease_s=30)
    await store.report_results(WORKER, [failed(job_id)])

    await store.retry(job_id)

    (claimed,) = await store.claim("default", [WORKER], lease_s=30)
    assert claimed.attempt == 2
    assert claimed.max_attempts == 3


async def test_manual_retry_of_a_pending_job_is_a_conflict(store: JobStore) -> None:
    await store.apply_queue(policy())
    job_id = (await store.submit(command())).job.id

    with pytest.raises(ConflictError):
        await store.retry(job_id)


async def test_unknown_and_malformed_job_ids(store: JobStore) -> None:
    with pytest.raises(NotFoundError):
        await store.get("00000000-0000-4000-8000-000000000000")
    with pytest.raises(NotFoundError):
        await store.events("00000000-0000-4000-8000-000000000000")
    with pytest.raises(InvalidInputError):
        await store.get("not-a-uuid")
    with pytest.raises(NotFoundError):
        await store.cancel("00000000-0000-4000-8000-000000000000")


async def test_output_over_the_limit_is_truncated(store: JobStore) -> None:
    await store.apply_queue(policy())
    job_id = (await store.submit(command())).job.id
    await store.claim("default", [WORKER], lease_s=30)

    await store.report_results(WORKER, [succeeded(job_id, output="x" * (1024 * 1024 + 10))])

    job = await store.get(job_id)
    assert job.output_truncated
    assert job.output is not None
    assert len(job.output) == 1024 * 1024


async def test_worker_cancelled_outcome_returns_the_job(store: JobStore) -> None:
    await store.apply_queue(policy())
    job_id = (await store.submit(command())).job.id
    await store.claim("default", [WORKER], lease_s=30)

    (outcome,) = await store.report_results(
        WORKER, [AttemptResult(job_id, 1, Outcome.CANCELLED, error="draining")]
    )

    assert outcome.accepted
    assert outcome.state is JobState.PENDING
    (again,) = await store.claim("default", ["worker-b"], lease_s=30)
    assert again.attempt == 2
    assert "draining" in (again.last_error or "")


async def test_events_are_listed_in_order_with_their_kinds(store: JobStore) -> None:
    await store.apply_queue(policy(max_attempts=2))
    job_id = (await store.submit(command())).job.id
    await store.claim("default", [WORKER], lease_s=30)
    await store.report_started(WORKER, [AttemptRef(job_id, 1)], lease_s=30)
    await store.report_results(WORKER, [failed(job_id)])
    await store.retry(job_id)
    await store.claim("default", [WORKER], lease_s=30)
    await store.report_started(WORKER, [AttemptRef(job_id, 2)], lease_s=30)
    await store.cancel(job_id, "enough")

    events = await store.events(job_id)

    assert [(event.kind, event.attempt) for event in events] == [
        (EventKind.SUBMITTED, 0),
        (EventKind.STARTED, 1),
        (EventKind.FAILED, 1),
        (EventKind.SUBMITTED, 1),
        (EventKind.STARTED, 2),
        (EventKind.CANCELLED, 2),
    ]
    assert [event.id for event in events] == sorted(event.id for event in events)
    assert {event.job_id for event in events} == {job_id}
    assert {event.queue for event in events} == {"default"}
