"""The start a worker reports is the one recorded, kept between assignment and arrival.

Each way a start reaches the store is covered: a Started report, a success that carries
the start (both one statement in SQL), and a failure that does (judged in Python), plus
a Started batch naming a job twice, which is judged in Python too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

import pytest

from jobqueue.store import (
    AttemptRef,
    AttemptResult,
    EventKind,
    JobStore,
    ManualClock,
    Outcome,
    ReportOutcome,
)
from tests.integration.store.helpers import command, policy

pytestmark = pytest.mark.integration

WORKER = "worker-a"

Report = Callable[[JobStore, str, datetime | None], Awaitable[ReportOutcome]]


async def _started(store: JobStore, job_id: str, at: datetime | None) -> ReportOutcome:
    (outcome,) = await store.report_started(WORKER, [AttemptRef(job_id, 1, at)], lease_s=30)
    return outcome


async def _started_twice_in_one_batch(
    store: JobStore, job_id: str, at: datetime | None
) -> ReportOutcome:
    first, second = await store.report_started(
        WORKER, [AttemptRef(job_id, 1, at), AttemptRef(job_id, 1, at)], lease_s=30
    )
    assert not second.accepted
    return first


async def _succeeded(store: JobStore, job_id: str, at: datetime | None) -> ReportOutcome:
    result = AttemptResult(job_id, 1, Outcome.SUCCEEDED, run_time_s=0.5, started_at=at)
    (outcome,) = await store.report_results(WORKER, [result])
    return outcome


async def _failed(store: JobStore, job_id: str, at: datetime | None) -> ReportOutcome:
    result = AttemptResult(job_id, 1, Outcome.FAILED, error="boom", started_at=at)
    (outcome,) = await store.report_results(WORKER, [result])
    return outcome


REPORTS = pytest.mark.parametrize(
    "report",
    [_started, _started_twice_in_one_batch, _succeeded, _failed],
    ids=["started", "started-judged", "succeeded", "failed"],
)


@REPORTS
@pytest.mark.parametrize(
    ("stamp_s", "recorded_s"),
    [
        (1.25, 1.25),  # the worker's own stamp
        (-5.0, 0.0),  # a clock behind: not before the assignment
        (60.0, 3.0),  # a clock ahead: not after the report's arrival
        (None, 3.0),  # no stamp (an older worker): the arrival
    ],
    ids=["stamp", "before-assignment", "after-arrival", "none"],
)
async def test_the_recorded_start_is_the_workers_within_bounds(
    store: JobStore,
    clock: ManualClock,
    report: Report,
    stamp_s: float | None,
    recorded_s: float,
) -> None:
    await store.apply_queue(policy())
    job_id = (await store.submit(command())).job.id
    (claimed,) = await store.claim("default", [WORKER], lease_s=30)
    assigned_at = claimed.assigned_at
    assert assigned_at is not None
    clock.advance(3)  # the report arrives 3 s after the assignment

    stamp = None if stamp_s is None else assigned_at + timedelta(seconds=stamp_s)
    outcome = await report(store, job_id, stamp)

    assert outcome.accepted
    recorded = assigned_at + timedelta(seconds=recorded_s)
    assert (await store.get(job_id)).started_at == recorded
    (started,) = [event for event in await store.events(job_id) if event.kind is EventKind.STARTED]
    assert started.occurred_at == recorded


async def test_a_started_job_keeps_its_start_when_its_result_comes(
    store: JobStore, clock: ManualClock
) -> None:
    await store.apply_queue(policy())
    job_id = (await store.submit(command())).job.id
    (claimed,) = await store.claim("default", [WORKER], lease_s=30)
    assert claimed.assigned_at is not None
    began = claimed.assigned_at + timedelta(seconds=0.5)
    clock.advance(1)
    await _started(store, job_id, began)
    clock.advance(1)

    # A result's stamp counts only for a job whose Started report never came.
    later = claimed.assigned_at + timedelta(seconds=1.5)
    assert (await _succeeded(store, job_id, later)).accepted

    job = await store.get(job_id)
    assert job.started_at == began
    assert job.finished_at == clock.now()
