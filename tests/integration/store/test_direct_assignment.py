"""Jobs assigned at submit to offered worker slots (``DirectSlots``); real PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest

from jobqueue.store import (
    AttemptRef,
    AttemptResult,
    DirectSlots,
    JobState,
    JobStore,
    ManualClock,
    Outcome,
    RateLimit,
)
from tests.integration.store.helpers import command, policy

pytestmark = pytest.mark.integration


def offer(*workers: str, queue: str = "default") -> DirectSlots:
    return DirectSlots({queue: list(workers)}, lease_s=30)


async def test_an_offered_slot_makes_the_job_that_workers_first_attempt(
    store: JobStore, clock: ManualClock
) -> None:
    await store.apply_queue(policy())

    submitted = await store.submit(command(), offer("w1"))

    job = submitted.job
    assert submitted.created
    assert (job.state, job.attempt, job.worker_id) == (JobState.ASSIGNED, 1, "w1")
    assert job.assigned_at == clock.now()
    assert job.lease_expires_at == clock.now() + timedelta(seconds=30)
    # What the submit answered is what the database holds.
    assert await store.get(job.id) == job
    # Nothing is left to claim, and the worker can run it as if it had been claimed.
    assert await store.claim("default", ["w2"], lease_s=30) == []
    (started,) = await store.report_started("w1", [AttemptRef(job.id, 1)], lease_s=30)
    assert started.accepted
    result = AttemptResult(job.id, 1, Outcome.SUCCEEDED, run_time_s=0.1)
    (finished,) = await store.report_results("w1", [result])
    assert finished.accepted
    kinds = [event.kind.value for event in await store.events(job.id)]
    assert kinds == ["submitted", "started", "succeeded"]


async def test_a_batch_takes_as_many_slots_as_are_offered(store: JobStore) -> None:
    await store.apply_queue(policy())

    submitted = await store.submit_batch([command() for _ in range(3)], offer("w1", "w2"))

    assert [item.job.worker_id for item in submitted] == ["w1", "w2", None]
    assert [item.job.state for item in submitted] == [
        JobState.ASSIGNED,
        JobState.ASSIGNED,
        JobState.PENDING,
    ]
    (claimed,) = await store.claim("default", ["w3"], lease_s=30)
    assert claimed.id == submitted[2].job.id


@pytest.mark.parametrize(
    "overrides",
    [
        {"paused": True},
        {"concurrency_limit": 5},
        {"rate_limit": RateLimit(per_second=10, burst=10)},
    ],
    ids=["paused", "concurrency-limit", "rate-limit"],
)
async def test_a_queue_that_may_hold_jobs_back_takes_no_slot(
    store: JobStore, overrides: dict[str, object]
) -> None:
    await store.apply_queue(policy(**overrides))

    submitted = await store.submit(command(), offer("w1"))

    assert (submitted.job.state, submitted.job.worker_id) == (JobState.PENDING, None)


async def test_a_job_not_due_yet_takes_no_slot(store: JobStore, clock: ManualClock) -> None:
    await store.apply_queue(policy())

    later = await store.submit(command(run_after=clock.now() + timedelta(minutes=5)), offer("w1"))
    now = await store.submit(command(), offer("w1"))

    assert later.job.state is JobState.PENDING
    assert now.job.state is JobState.ASSIGNED


async def test_slots_of_another_queue_are_not_taken(store: JobStore) -> None:
    await store.apply_queue(policy())
    await store.apply_queue(policy("other"))

    submitted = await store.submit(command(), offer("w1", queue="other"))

    assert submitted.job.state is JobState.PENDING


async def test_a_known_idempotency_key_answers_the_first_job_unassigned(store: JobStore) -> None:
    await store.apply_queue(policy())
    first = await store.submit(command(idempotency_key="k"))

    again = await store.submit(command(idempotency_key="k"), offer("w1"))

    assert not again.created
    assert again.job.id == first.job.id
    assert (again.job.state, again.job.worker_id) == (JobState.PENDING, None)
