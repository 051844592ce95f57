"""Many claimers on one queue: each attempt claimed once, every job finished once."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import psycopg
import pytest

from jobqueue.store import (
    AttemptRef,
    AttemptResult,
    Backoff,
    JobState,
    JobStore,
    ManualClock,
    Outcome,
)
from tests.integration.store.helpers import command, policy

pytestmark = pytest.mark.integration

JOBS = 3000


@pytest.mark.parametrize("claimers", [4, 8])
async def test_concurrent_claimers_claim_each_attempt_once(
    database_url: str, database: psycopg.Connection[Any], claimers: int
) -> None:
    clock = ManualClock()
    stores = [
        await JobStore.open(database_url, clock=clock, min_size=1, max_size=2)
        for _ in range(claimers)
    ]
    try:
        await stores[0].apply_queue(policy(max_attempts=2, backoff=_no_backoff()))
        for start in range(0, JOBS, 1000):
            await stores[0].submit_batch([command() for _ in range(start, start + 1000)])

        claimed = await asyncio.gather(
            *(_work(store, clock, f"w{n}") for n, store in enumerate(stores))
        )
    finally:
        for store in stores:
            await store.close()

    attempts = [attempt for per_worker in claimed for attempt in per_worker]
    assert len(attempts) == len(set(attempts)), "an attempt was claimed twice"
    states = Counter(state for (state,) in database.execute("SELECT state FROM jobs").fetchall())
    assert sum(states.values()) == JOBS
    assert set(states) <= {"succeeded", "dead_lettered"}
    assert states["dead_lettered"] > 0  # some jobs failed twice
    events = dict(
        database.execute("SELECT kind, count(*) FROM job_events GROUP BY kind").fetchall()
    )
    assert events["submitted"] == JOBS
    assert events["succeeded"] + events["dead_lettered"] == JOBS
    assert events["succeeded"] == states["succeeded"]
    assert events["dead_lettered"] == states["dead_lettered"]
    per_job_terminal = database.execute(
        "SELECT count(*) FROM (SELECT job_id FROM job_events"
        " WHERE kind IN ('succeeded', 'dead_lettered', 'cancelled')"
        " GROUP BY job_id HAVING count(*) <> 1) AS odd"
    ).fetchone()
    assert per_job_terminal == (0,)
    assert events["started"] == len(attempts)


def _no_backoff() -> Backoff:
    return Backoff(initial_s=1, multiplier=1, max_s=1, jitter=0)


async def _work(store: JobStore, clock: ManualClock, worker_id: str) -> list[tuple[str, int]]:
    """Claim batches until the queue is empty; fail every attempt of every seventh job."""
    claimed: list[tuple[str, int]] = []
    idle_rounds = 0
    while idle_rounds < 3:
        await store.promote_due_retries()
        jobs = await store.claim("default", [worker_id] * 25, lease_s=60)
        if not jobs:
            # Retries wait 1 s of clock time; nothing else reads the clock here (leases
            # are never recovered in this test), so moving it on is harmless.
            idle_rounds += 1
            clock.advance(1)
            await asyncio.sleep(0)  # let the other claimers finish their batches
            continue
        idle_rounds = 0
        claimed.extend((job.id, job.attempt) for job in jobs)
        refs = [AttemptRef(job.id, job.attempt) for job in jobs]
        started = await store.report_started(worker_id, refs, lease_s=60)
        assert all(outcome.accepted for outcome in started)
        results = [
            AttemptResult(
                job.id,
                job.attempt,
                Outcome.FAILED if int(job.id[-8:], 16) % 7 == 0 else Outcome.SUCCEEDED,
                error="unlucky",
            )
            for job in jobs
        ]
        outcomes = await store.report_results(worker_id, results)
        assert all(outcome.accepted for outcome in outcomes)
        assert {outcome.state for outcome in outcomes} <= {
            JobState.SUCCEEDED,
            JobState.FAILED,
            JobState.DEAD_LETTERED,
        }
    return claimed
