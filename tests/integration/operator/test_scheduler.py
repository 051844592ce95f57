"""The scheduler's cycles against a real store, driven by hand: when it claims, and when not,
and when a new job goes to a worker at submit without a claim.

No gRPC and no worker processes here: sessions are registered directly and each test runs
``dispatch_once`` itself, so it can count the claims the scheduler makes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal

import pytest

from jobqueue.operator.dispatch import Scheduler, WorkerSession
from jobqueue.store import (
    AttemptRef,
    AttemptResult,
    Claimed,
    Job,
    JobKind,
    JobState,
    JobStore,
    NewJob,
    Outcome,
    WorkerInfo,
)
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
    claim = store.claim_for_dispatch

    async def counted(queue: str, worker_slots: Sequence[str], lease_s: float) -> list[Claimed]:
        made.append(queue)
        return await claim(queue, worker_slots, lease_s)

    monkeypatch.setattr(store, "claim_for_dispatch", counted)
    return made


async def connected(scheduler: Scheduler, slots: int) -> WorkerSession:
    session = await scheduler.register(WorkerInfo("w", QUEUE, concurrency=slots), [])
    session.streaming = True  # what opening the stream does
    return session


async def submit(scheduler: Scheduler) -> None:
    job = NewJob(QUEUE, JobKind.PYTHON, {"handler": "tasks:run"})
    submitted = await scheduler.store.submit(job)
    await scheduler.announce_jobs([submitted.job.queue])


async def submit_through_api(scheduler: Scheduler, jobs: int = 1) -> list[Job]:
    """What JobService's Submit and SubmitBatch do: offer free slots, then hand the jobs on."""
    new = [NewJob(QUEUE, JobKind.PYTHON, {"handler": "tasks:run"}) for _ in range(jobs)]
    with scheduler.reserving([job.queue for job in new]) as direct:
        submitted = await scheduler.store.submit_batch(new, direct)
        await scheduler.submitted(submitted)
    return [item.job for item in submitted]


def assigned_ids(session: WorkerSession) -> list[str]:
    """The job ids pushed down the session's stream so far."""
    ids = []
    while not session.commands.empty():
        command = session.commands.get_nowait()
        ids += [assignment.job_id for assignment in command.assignments.jobs]
    return ids


async def one_job_sent(scheduler: Scheduler) -> tuple[WorkerSession, AttemptRef]:
    """A worker with two slots, and the attempt of one job pushed down its stream."""
    session = await connected(scheduler, slots=2)
    await submit(scheduler)
    assert await scheduler.dispatch_once() == 1
    (attempt,) = session.in_flight
    assert assigned_ids(session) == [attempt.job_id]  # what the stream carried
    return session, attempt


async def drained(scheduler: Scheduler, slots: int) -> WorkerSession:
    """A worker with ``slots`` free, on a queue its last claim found empty."""
    session = await connected(scheduler, slots=slots)
    await submit(scheduler)
    assert await scheduler.dispatch_once() == 1  # one job, more slots: the queue is empty
    await finish_all(scheduler, session)
    assigned_ids(session)  # what that claim pushed
    return session


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


async def test_a_job_submitted_to_a_drained_queue_goes_to_a_worker_without_a_claim(
    store: JobStore, claims: list[str]
) -> None:
    scheduler = Scheduler(store, operator_id="test")
    session = await drained(scheduler, slots=2)

    (job,) = await submit_through_api(scheduler)

    assert job.state is JobState.ASSIGNED
    assert assigned_ids(session) == [job.id]
    assert [attempt.job_id for attempt in session.in_flight] == [job.id]
    assert await scheduler.dispatch_once() == 0  # nothing woke the queue
    assert claims == [QUEUE]


async def test_a_queue_not_known_to_be_empty_is_offered_no_slot(
    store: JobStore, claims: list[str]
) -> None:
    scheduler = Scheduler(store, operator_id="test")
    session = await connected(scheduler, slots=2)

    (job,) = await submit_through_api(scheduler)

    assert job.state is JobState.PENDING
    assert await scheduler.dispatch_once() == 1
    assert assigned_ids(session) == [job.id]
    assert claims == [QUEUE]


async def test_jobs_beyond_the_free_slots_wait_for_a_claim(
    store: JobStore, claims: list[str]
) -> None:
    scheduler = Scheduler(store, operator_id="test")
    session = await drained(scheduler, slots=2)

    jobs = await submit_through_api(scheduler, jobs=3)

    assert [job.state for job in jobs] == [JobState.ASSIGNED, JobState.ASSIGNED, JobState.PENDING]
    assert session.free_slots == 0
    await finish_all(scheduler, session)
    assert await scheduler.dispatch_once() == 1
    assert assigned_ids(session) == [job.id for job in jobs]


async def test_offered_slots_are_held_for_the_submit_and_then_freed(store: JobStore) -> None:
    scheduler = Scheduler(store, operator_id="test")
    session = await drained(scheduler, slots=3)
    assert session.free_slots == 3

    with scheduler.reserving([QUEUE, QUEUE]) as direct:
        assert direct is not None
        assert direct.workers == {QUEUE: ["w", "w"]}
        assert session.free_slots == 1
        # A second submit meanwhile is offered only what is left.
        with scheduler.reserving([QUEUE, QUEUE]) as second:
            assert second is not None
            assert second.workers == {QUEUE: ["w"]}

    assert session.free_slots == 3


async def test_assignments_not_yet_sent_follow_the_worker_to_its_new_session(
    store: JobStore,
) -> None:
    scheduler = Scheduler(store, operator_id="test")
    first = await connected(scheduler, slots=2)
    await submit(scheduler)
    assert await scheduler.dispatch_once() == 1  # queued on the stream, not sent yet
    (attempt,) = first.in_flight

    # The worker lost its session and registers again, naming nothing it runs.
    again = await scheduler.register(WorkerInfo("w", QUEUE, concurrency=2), [])

    assert again is not first
    assert assigned_ids(again) == [attempt.job_id]
    assert list(again.in_flight) == [attempt]


async def test_an_assignment_lost_with_the_old_stream_is_sent_again(store: JobStore) -> None:
    scheduler = Scheduler(store, operator_id="test")
    _, attempt = await one_job_sent(scheduler)  # down the old stream, which then died
    sent = attempt.job_id

    again = await scheduler.register(WorkerInfo("w", QUEUE, concurrency=2), [])

    assert assigned_ids(again) == [sent]
    assert [attempt.job_id for attempt in again.in_flight] == [sent]


async def test_a_lost_assignment_whose_job_moved_on_frees_its_slot(store: JobStore) -> None:
    scheduler = Scheduler(store, operator_id="test")
    _, attempt = await one_job_sent(scheduler)
    await store.cancel(attempt.job_id, "changed my mind")

    again = await scheduler.register(WorkerInfo("w", QUEUE, concurrency=2), [])

    assert assigned_ids(again) == []
    assert again.in_flight == {}


async def test_a_started_attempt_the_worker_no_longer_names_goes_back_at_once(
    store: JobStore,
) -> None:
    scheduler = Scheduler(store, operator_id="test")
    _, attempt = await one_job_sent(scheduler)  # and the worker started it
    assert all(outcome.accepted for outcome in await scheduler.started("w", [attempt]))

    # The worker's process restarted: it registers again running nothing.
    again = await scheduler.register(WorkerInfo("w", QUEUE, concurrency=2), [])

    assert again.in_flight == {}
    job = await store.get(attempt.job_id)
    assert job.state is JobState.PENDING
    assert "registered again without this attempt" in (job.last_error or "")
    again.streaming = True
    assert await scheduler.dispatch_once() == 1
    assert assigned_ids(again) == [attempt.job_id]
    assert [ref.attempt for ref in again.in_flight] == [2]


async def test_a_started_attempt_the_worker_names_keeps_its_slot(store: JobStore) -> None:
    scheduler = Scheduler(store, operator_id="test")
    _, attempt = await one_job_sent(scheduler)
    await scheduler.started("w", [attempt])

    again = await scheduler.register(WorkerInfo("w", QUEUE, concurrency=2), [attempt])

    assert list(again.in_flight) == [attempt]
    assert (await store.get(attempt.job_id)).state is JobState.RUNNING


async def test_a_worker_that_moves_replica_gets_what_the_last_one_sent_it_in_vain(
    store: JobStore,
) -> None:
    failed = Scheduler(store, operator_id="failed")
    _, sent = await one_job_sent(failed)  # down a stream that then died with its replica

    other = Scheduler(store, operator_id="other")
    moved = await other.register(WorkerInfo("w", QUEUE, concurrency=2), [])

    assert assigned_ids(moved) == [sent.job_id]
    assert list(moved.in_flight) == [sent]  # the same attempt: nothing was lost
    assert (await store.get(sent.job_id)).state is JobState.ASSIGNED


async def test_a_worker_that_moves_replica_is_not_sent_what_it_runs(store: JobStore) -> None:
    failed = Scheduler(store, operator_id="failed")
    _, sent = await one_job_sent(failed)

    other = Scheduler(store, operator_id="other")
    moved = await other.register(WorkerInfo("w", QUEUE, concurrency=2), [sent])

    assert assigned_ids(moved) == []
    assert list(moved.in_flight) == [sent]


async def test_a_worker_back_at_a_replica_that_still_knows_it_gets_what_another_sent_in_vain(
    store: JobStore,
) -> None:
    stale = Scheduler(store, operator_id="stale")
    await connected(stale, slots=2)  # it never saw the worker leave for the other replica
    failed = Scheduler(store, operator_id="failed")
    _, sent = await one_job_sent(failed)  # down a stream that then died with its replica

    back = await stale.register(WorkerInfo("w", QUEUE, concurrency=2), [])

    assert assigned_ids(back) == [sent.job_id]
    assert list(back.in_flight) == [sent]
    assert (await store.get(sent.job_id)).state is JobState.ASSIGNED


class _WatchedEvent(asyncio.Event):
    """An event that says when something began to wait for it."""

    def __init__(self) -> None:
        super().__init__()
        self.waited = asyncio.Event()

    async def wait(self) -> Literal[True]:
        self.waited.set()
        return await super().wait()


async def test_a_claim_under_way_when_its_worker_registers_again_is_pushed_once(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    scheduler = Scheduler(store, operator_id="test")
    first = await connected(scheduler, slots=2)
    await submit(scheduler)
    claimed, go_on = asyncio.Event(), asyncio.Event()
    claim = store.claim_for_dispatch

    async def paused_after_commit(queue: str, slots: Sequence[str], lease_s: float) -> Any:
        jobs = await claim(queue, slots, lease_s)
        claimed.set()
        await go_on.wait()  # committed, not pushed yet
        return jobs

    monkeypatch.setattr(store, "claim_for_dispatch", paused_after_commit)
    first.settled = _WatchedEvent()
    first.settled.set()
    async with asyncio.timeout(10), asyncio.TaskGroup() as group:
        dispatching = group.create_task(scheduler.dispatch_once())
        await claimed.wait()
        registering = group.create_task(
            scheduler.register(WorkerInfo("w", QUEUE, concurrency=2), [])
        )
        await first.settled.waited.wait()  # the new registration waits for the claim
        go_on.set()

    assert dispatching.result() == 1
    again = registering.result()
    (attempt,) = again.in_flight
    assert assigned_ids(again) == [attempt.job_id]  # once, not once more as "lost"


async def test_jobs_that_come_one_at_a_time_go_round_the_workers(store: JobStore) -> None:
    scheduler = Scheduler(store, operator_id="test")
    sessions = {}
    for worker_id in ("w1", "w2"):
        info = WorkerInfo(worker_id, QUEUE, concurrency=2)
        sessions[worker_id] = await scheduler.register(info, [])
        sessions[worker_id].streaming = True

    async def finish_everything() -> None:
        for worker_id, session in sessions.items():
            results = [
                AttemptResult(ref.job_id, ref.attempt, Outcome.SUCCEEDED, run_time_s=0.0)
                for ref in session.in_flight
            ]
            await scheduler.results(worker_id, results)

    await submit(scheduler)
    assert await scheduler.dispatch_once() == 1  # one job for four slots: the queue drained
    await finish_everything()

    taken_by = []
    for _ in range(4):
        (job,) = await submit_through_api(scheduler)
        assert job.state is JobState.ASSIGNED
        taken_by.append(job.worker_id)
        await finish_everything()

    assert taken_by in (["w1", "w2", "w1", "w2"], ["w2", "w1", "w2", "w1"])
