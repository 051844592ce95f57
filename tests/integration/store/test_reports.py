"""Started and successful results: the one-statement path writes what the general one does.

The store records a batch of Started reports, or of successful results, with one SQL
statement when every report in it names a different job; otherwise it locks the rows and
lets ``lifecycle`` judge each report. A report naming the same job twice takes the general
path, so each test below sends the same report both ways, for two jobs in the same state,
and compares the jobs and events that result.
"""

from __future__ import annotations

import dataclasses

import pytest

from jobqueue.store import (
    AttemptRef,
    AttemptResult,
    EventKind,
    Job,
    JobEvent,
    JobState,
    JobStore,
    ManualClock,
    Outcome,
)
from tests.integration.store.helpers import command, policy

pytestmark = pytest.mark.integration

WORKER = "worker-a"


def success(job_id: str, **fields: object) -> AttemptResult:
    values: dict[str, object] = {"output": "done\n", "exit_code": 0, "run_time_s": 1.5} | fields
    return AttemptResult(job_id, 1, Outcome.SUCCEEDED, **values)  # type: ignore[arg-type]


def comparable(job: Job) -> Job:
    return dataclasses.replace(job, id="-")


def comparable_events(events: list[JobEvent]) -> list[tuple[object, ...]]:
    return [(e.kind, e.attempt, e.occurred_at, e.data) for e in events]


async def two_claimed_jobs(store: JobStore) -> tuple[str, str]:
    await store.apply_queue(policy())
    first = (await store.submit(command())).job.id
    second = (await store.submit(command())).job.id
    claimed = await store.claim("default", [WORKER, WORKER], lease_s=30)
    assert {job.id for job in claimed} == {first, second}
    return first, second


async def test_started_is_recorded_alike_on_both_paths(store: JobStore, clock: ManualClock) -> None:
    one_statement, general = await two_claimed_jobs(store)
    clock.advance(1)

    (fast,) = await store.report_started(WORKER, [AttemptRef(one_statement, 1)], lease_s=30)
    judged = await store.report_started(
        WORKER, [AttemptRef(general, 1), AttemptRef(general, 1)], lease_s=30
    )

    assert fast.accepted
    assert fast.state is JobState.RUNNING
    assert [outcome.accepted for outcome in judged] == [True, False]
    assert comparable(await store.get(one_statement)) == comparable(await store.get(general))
    assert comparable_events(await store.events(one_statement)) == comparable_events(
        await store.events(general)
    )


@pytest.mark.parametrize("started_first", [True, False], ids=["running", "assigned"])
async def test_success_is_recorded_alike_on_both_paths(
    store: JobStore, clock: ManualClock, started_first: bool
) -> None:
    one_statement, general = await two_claimed_jobs(store)
    if started_first:
        clock.advance(1)
        refs = [AttemptRef(one_statement, 1), AttemptRef(general, 1)]
        assert all(o.accepted for o in await store.report_started(WORKER, refs, lease_s=30))
    clock.advance(2)

    (fast,) = await store.report_results(WORKER, [success(one_statement)])
    judged = await store.report_results(WORKER, [success(general), success(general)])

    assert fast.accepted
    assert fast.state is JobState.SUCCEEDED
    assert [outcome.accepted for outcome in judged] == [True, False]
    job = await store.get(one_statement)
    assert comparable(job) == comparable(await store.get(general))
    events = await store.events(one_statement)
    assert comparable_events(events) == comparable_events(await store.events(general))
    assert [event.kind for event in events] == [
        EventKind.SUBMITTED,
        EventKind.STARTED,
        EventKind.SUCCEEDED,
    ]
    assert events[-1].data == {"worker_id": WORKER, "exit_code": 0, "run_time_s": 1.5}
    assert job.output == "done\n"
    assert job.lease_expires_at is None


async def test_one_statement_refusals_say_why_and_change_nothing(store: JobStore) -> None:
    job_id, other = await two_claimed_jobs(store)
    before = await store.get(job_id)

    outcomes = await store.report_results(
        "worker-b", [success(job_id), success("00000000-0000-4000-8000-000000000000")]
    )
    started = await store.report_started(WORKER, [AttemptRef(other, 2)], lease_s=30)

    assert [outcome.accepted for outcome in outcomes] == [False, False]
    assert "worker-b" in outcomes[0].reason
    assert outcomes[0].state is JobState.ASSIGNED
    assert outcomes[1].state is None
    assert not started[0].accepted
    assert "attempt 2" in started[0].reason
    assert await store.get(job_id) == before


async def test_a_batch_of_successes_is_recorded_in_one_go(store: JobStore) -> None:
    await store.apply_queue(policy())
    for _ in range(50):
        await store.submit(command())
    claimed = await store.claim("default", [WORKER] * 50, lease_s=30)

    outcomes = await store.report_results(
        WORKER, [success(job.id, output=job.id, exit_code=None) for job in claimed]
    )

    assert all(outcome.accepted for outcome in outcomes)
    assert [outcome.job_id for outcome in outcomes] == [job.id for job in claimed]
    for job in claimed[:5]:
        finished = await store.get(job.id)
        assert finished.output == job.id
        assert finished.exit_code is None
        kinds = [event.kind for event in await store.events(job.id)]
        assert kinds == [EventKind.SUBMITTED, EventKind.STARTED, EventKind.SUCCEEDED]
