"""The scheduler's cycles against a real store, driven by hand: when it claims, and when not.

No gRPC and no worker processes here: sessions are registered directly and each test runs
``dispatch_once`` itself, so it can count the claims the scheduler makes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest

from jobqueue.operator.dispatch import Scheduler, WorkerSession
from jobqueue.store import AttemptResult, Job, JobKind, JobStore, NewJob, Outcome, WorkerInfo
from tests.integration.operator.conftest import QUEUE, create_queue

pytestmark = pytest.mark.integration


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[JobStore]:
    async with await JobStore.open(database_url) as opened:
        await create_queue(opened)
        yield opened


@pytest.fixture
def claims(store: JobStore, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The queue of every claim the store runs, in order."""
    made: list[str] = []
    claim = store.claim

    async def counted(queue: str, worker_slots: Sequence[str], lease_s: float) -> list[Job]:
        made.append(queue)
        return await claim(queue, worker_slots, lease_s)

    monkeypatch.setattr(store, "claim", counted)
    return made


async def connected(scheduler: Scheduler, slots: int) -> WorkerSession:
    session = await scheduler.register(WorkerInfo("w", QUEUE, concurrency=slots), [])
    session.streaming = True  # what opening the stream does
    return session


async def submit(scheduler: Scheduler) -> None:
    job = NewJob(QUEUE, JobKind.PYTHON, {"handler": "tasks:run"})
    submitted = await scheduler.store.submit(job)
    await scheduler.announce_jobs([submitted.job.queue])


async def finish_all(scheduler: Scheduler, session: WorkerSession) -> None:
    results = [
        AttemptResult(attempt.job_id, attempt.attempt, Outcome.SUCCEEDED, run_time_s=0.0)
        for attempt in session.in_flight
    ]
    assert all(outcome.accepted for outcome in await scheduler.results("w", results))


async def test_a_slot_freed_on_a_drained_queue_runs_no_claim(
    store: JobStore, claims: list[str]
) -> None:
    scheduler = Scheduler(store, operator_id="test")
    session = await connected(scheduler, slots=2)
    await submit(scheduler)
    assert await scheduler.dispatch_once() == 1  # one job for two slots: nothing left

    await finish_all(scheduler, session)

    assert await scheduler.dispatch_once() == 0
    assert claims == [QUEUE]


async def test_a_job_submitted_while_no_slot_is_free_runs_when_one_frees(
    store: JobStore, claims: list[str]
) -> None:
    scheduler = Scheduler(store, operator_id="test")
    session = await connected(scheduler, slots=2)
    await submit(scheduler)
    assert await scheduler.dispatch_once() == 1
    session.streaming = False  # its stream is away for a moment: no slot is free
    await submit(scheduler)
    assert await scheduler.dispatch_once() == 0
    session.streaming = True

    await finish_all(scheduler, session)

    assert await scheduler.dispatch_once() == 1
    assert claims == [QUEUE, QUEUE]


async def test_a_job_submitted_to_a_drained_queue_is_claimed(
    store: JobStore, claims: list[str]
) -> None:
    scheduler = Scheduler(store, operator_id="test")
    session = await connected(scheduler, slots=2)
    await submit(scheduler)
    assert await scheduler.dispatch_once() == 1
    await finish_all(scheduler, session)

    await submit(scheduler)

    assert await scheduler.dispatch_once() == 1
