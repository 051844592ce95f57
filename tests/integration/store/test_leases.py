"""Leases, timeouts and released workers: attempts the store takes back."""

from __future__ import annotations

from datetime import timedelta

import pytest

from jobqueue.store import (
    AttemptRef,
    AttemptResult,
    EventKind,
    JobState,
    JobStore,
    ManualClock,
    Outcome,
)
from tests.integration.store.helpers import command, policy

pytestmark = pytest.mark.integration


async def test_expired_lease_returns_the_job_as_a_new_attempt(
    store: JobStore, clock: ManualClock
) -> None:
    await store.apply_queue(policy(max_attempts=3))
    job_id = (await store.submit(command())).job.id
    await store.claim("default", ["w1"], lease_s=30)
    await store.report_started("w1", [AttemptRef(job_id, 1)], lease_s=30)

    clock.advance(29)
    assert await store.recover_expired_leases() == []
    clock.advance(2)
    (lost,) = await store.recover_expired_leases()

    assert lost.worker_id == "w1"
    assert not lost.timed_out
    assert lost.job.state is JobState.PENDING
    assert lost.job.last_error == "lease expired: worker w1 stopped answering"
    (again,) = await store.claim("default", ["w2"], lease_s=30)
    assert again.id == job_id
    assert again.attempt == 2
    failed = (await store.events(job_id))[-1]
    assert failed.kind is EventKind.FAILED
    assert failed.data["lease_expired"] is True
    assert failed.attempt == 1


async def test_expired_lease_with_attempts_spent_dead_letters(
    store: JobStore, clock: ManualClock
) -> None:
    await store.apply_queue(policy(max_attempts=1))
    job_id = (await store.submit(command())).job.id
    await store.claim("default", ["w1"], lease_s=30)

    clock.advance(31)
    (lost,) = await store.recover_expired_leases()

    assert lost.job.state is JobState.DEAD_LETTERED
    kinds = [event.kind for event in await store.events(job_id)]
    assert kinds[-2:] == [EventKind.FAILED, EventKind.DEAD_LETTERED]


async def test_late_result_after_lease_expiry_is_refused(
    store: JobStore, clock: ManualClock
) -> None:
    await store.apply_queue(policy())
    job_id = (await store.submit(command())).job.id
    await store.claim("default", ["w1"], lease_s=30)
    clock.advance(31)
    await store.recover_expired_leases()

    (outcome,) = await store.report_results("w1", [AttemptResult(job_id, 1, Outcome.SUCCEEDED)])

    assert not outcome.accepted
    assert (await store.get(job_id)).state is JobState.PENDING


async def test_extend_leases_keeps_a_live_workers_jobs(store: JobStore, clock: ManualClock) -> None:
    await store.apply_queue(policy())
    await store.submit_batch([command(), command(), command()])
    jobs = await store.claim("default", ["w1", "w1", "w1"], lease_s=30)
    refs = [AttemptRef(job.id, job.attempt) for job in jobs]
    await store.cancel(jobs[2].id)

    clock.advance(20)
    stop = await store.extend_leases("w1", refs, lease_s=30)
    clock.advance(20)  # 40 s after the claim, 20 s after the extension

    assert stop == [refs[2]]
    assert await store.recover_expired_leases() == []
    assert await store.extend_leases("w2", refs[:1], lease_s=30) == refs[:1]
    assert await store.extend_leases("w1", [AttemptRef(jobs[0].id, 7)], 30) == [
        AttemptRef(jobs[0].id, 7)
    ]


async def test_timed_out_job_is_failed_with_backoff(store: JobStore, clock: ManualClock) -> None:
    await store.apply_queue(policy(max_attempts=2))
    job_id = (await store.submit(command(timeout_s=60))).job.id
    await store.claim("default", ["w1"], lease_s=600)
    await store.report_started("w1", [AttemptRef(job_id, 1)], lease_s=600)

    clock.advance(64)
    assert await store.recover_timed_out(grace_s=5) == []
    clock.advance(2)
    (lost,) = await store.recover_timed_out(grace_s=5)

    assert lost.timed_out
    assert lost.worker_id == "w1"
    assert lost.job.state is JobState.FAILED
    assert lost.job.run_after == clock.now() + timedelta(seconds=10)  # the first backoff
    failed = (await store.events(job_id))[-1]
    assert failed.kind is EventKind.FAILED
    assert failed.data["timed_out"] is True
    assert "timed out" in failed.data["error"]


async def test_release_worker_returns_its_jobs(store: JobStore) -> None:
    await store.apply_queue(policy())
    await store.submit_batch([command(), command(), command()])
    mine = await store.claim("default", ["w1", "w1"], lease_s=30)
    (theirs,) = await store.claim("default", ["w2"], lease_s=30)
    await store.report_started("w1", [AttemptRef(mine[0].id, 1)], lease_s=30)

    lost = await store.release_worker("w1")

    assert sorted(attempt.job.id for attempt in lost) == sorted(job.id for job in mine)
    assert {attempt.job.state for attempt in lost} == {JobState.PENDING}
    assert (await store.get(theirs.id)).state is JobState.ASSIGNED
    assert await store.release_worker("w1") == []


async def test_release_unheld_returns_only_started_attempts_the_worker_left_out(
    store: JobStore,
) -> None:
    await store.apply_queue(policy())
    await store.submit_batch([command(), command(), command(), command()])
    kept, dropped, waiting = await store.claim("default", ["w1", "w1", "w1"], lease_s=30)
    (theirs,) = await store.claim("default", ["w2"], lease_s=30)
    started = [AttemptRef(job.id, 1) for job in (kept, dropped)]
    await store.report_started("w1", started, lease_s=30)
    await store.report_started("w2", [AttemptRef(theirs.id, 1)], lease_s=30)

    (lost,) = await store.release_unheld("w1", [AttemptRef(kept.id, 1)])

    assert lost.job.id == dropped.id
    assert lost.worker_id == "w1"
    assert lost.job.state is JobState.PENDING
    assert lost.job.last_error == (
        "worker w1 registered again without this attempt (it had restarted)"
    )
    assert (await store.get(kept.id)).state is JobState.RUNNING
    # Not started: it may still be on its way to the worker.
    assert (await store.get(waiting.id)).state is JobState.ASSIGNED
    assert (await store.get(theirs.id)).state is JobState.RUNNING
    failed = (await store.events(dropped.id))[-1]
    assert failed.kind is EventKind.FAILED
    assert failed.attempt == 1
    assert await store.release_unheld("w1", [AttemptRef(kept.id, 1)]) == []
