"""The queue monitor against PostgreSQL: what a snapshot holds, and when finished jobs
are counted again."""

from __future__ import annotations

import pytest

from jobqueue.operator.monitor import QueueMonitor
from jobqueue.store import AttemptResult, JobKind, JobState, JobStore, NewJob, Outcome, QueuePolicy

pytestmark = pytest.mark.integration


async def _finish_one(store: JobStore) -> None:
    (job,) = await store.claim("watched", ["w"], lease_s=300)
    await store.report_results("w", [AttemptResult(job.id, job.attempt, Outcome.SUCCEEDED)])


async def _monitored(store: JobStore, share: float) -> QueueMonitor:
    await store.apply_queue(QueuePolicy("watched"))
    await store.submit_batch([NewJob("watched", JobKind.COMMAND, {"argv": ["true"]})] * 3)
    await _finish_one(store)
    return QueueMonitor(store, interval_s=60, worker_seen_within_s=30, finished_count_share=share)


async def test_a_slow_finished_count_is_carried_over_until_it_is_due(database_url: str) -> None:
    async with await JobStore.open(database_url, min_size=1, max_size=2) as store:
        # A share this small puts the next count of finished jobs a minute (the most it
        # waits) away, beyond the test.
        monitor = await _monitored(store, share=1e-9)
        first = (await monitor.refresh()).stats["watched"]
        await _finish_one(store)
        second = (await monitor.refresh()).stats["watched"]

    assert first.counts[JobState.SUCCEEDED] == 1
    assert first.counts[JobState.PENDING] == 2
    assert second.counts[JobState.PENDING] == 1  # read again
    assert second.counts[JobState.SUCCEEDED] == 1  # carried over
    assert set(second.counts) == set(JobState)


async def test_a_cheap_finished_count_is_read_at_every_refresh(database_url: str) -> None:
    async with await JobStore.open(database_url, min_size=1, max_size=2) as store:
        # An unbounded share makes the next count due as soon as the last one ended.
        monitor = await _monitored(store, share=float("inf"))
        await monitor.refresh()
        await _finish_one(store)
        second = (await monitor.refresh()).stats["watched"]

    assert second.counts[JobState.SUCCEEDED] == 2
    assert second.counts[JobState.PENDING] == 1
