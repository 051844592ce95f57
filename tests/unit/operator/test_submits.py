"""SubmitCoalescer: single submits that arrive together share one store call."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from jobqueue.errors import InvalidInputError
from jobqueue.operator.submits import SubmitCoalescer
from jobqueue.store import Job, JobKind, JobState, NewJob, Submitted

WAIT_S = 10.0


def new_job(name: str) -> NewJob:
    return NewJob("q", JobKind.PYTHON, {"handler": name})


def submitted(job: NewJob) -> Submitted:
    now = datetime.now(UTC)
    return Submitted(
        Job(
            id=str(job.payload["handler"]),
            queue=job.queue,
            kind=job.kind,
            payload=dict(job.payload),
            priority=0,
            state=JobState.PENDING,
            attempt=0,
            max_attempts=1,
            timeout_s=1.0,
            idempotency_key=None,
            labels={},
            run_after=now,
            created_at=now,
            updated_at=now,
            assigned_at=None,
            started_at=None,
            finished_at=None,
            worker_id=None,
            lease_expires_at=None,
            last_error=None,
            output=None,
            output_truncated=False,
            exit_code=None,
        ),
        created=True,
    )


class FakeStore:
    """Records each batch; ``hold`` keeps a batch in flight until the test releases it."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.hold: asyncio.Event | None = None
        self.entered = asyncio.Event()
        self.refuse: set[str] = set()

    async def submit_batch(self, jobs: Sequence[NewJob]) -> list[Submitted]:
        names = [str(job.payload["handler"]) for job in jobs]
        self.batches.append(names)
        self.entered.set()
        if self.hold is not None:
            await self.hold.wait()
        refused = self.refuse.intersection(names)
        if refused:
            raise InvalidInputError(f"payload: {sorted(refused)[0]} is refused")
        return [submitted(job) for job in jobs]


async def test_a_job_submitted_while_nothing_is_in_flight_goes_at_once_alone() -> None:
    store = FakeStore()
    coalescer = SubmitCoalescer(store.submit_batch)

    result = await asyncio.wait_for(coalescer.submit(new_job("a")), WAIT_S)

    assert result.job.id == "a"
    assert store.batches == [["a"]]


async def first_insert_held() -> tuple[FakeStore, SubmitCoalescer, asyncio.Task[Submitted]]:
    """A coalescer whose first submit ("a") is in the store, held there until released."""
    store = FakeStore()
    store.hold = asyncio.Event()
    coalescer = SubmitCoalescer(store.submit_batch)
    first = asyncio.create_task(coalescer.submit(new_job("a")))
    await asyncio.wait_for(store.entered.wait(), WAIT_S)
    return store, coalescer, first


async def test_jobs_submitted_during_an_insert_go_together_in_the_next() -> None:
    store, coalescer, first = await first_insert_held()

    later = [asyncio.create_task(coalescer.submit(new_job(name))) for name in "bcd"]
    await asyncio.sleep(0)  # they queue behind the held batch
    store.hold.set()
    results = await asyncio.wait_for(asyncio.gather(first, *later), WAIT_S)

    assert [result.job.id for result in results] == ["a", "b", "c", "d"]
    assert store.batches == [["a"], ["b", "c", "d"]]


async def test_a_refused_batch_is_retried_job_by_job_so_only_the_bad_one_fails() -> None:
    store, coalescer, first = await first_insert_held()
    store.refuse = {"bad"}
    later = [asyncio.create_task(coalescer.submit(new_job(name))) for name in ("b", "bad", "c")]
    await asyncio.sleep(0)
    store.hold.set()

    await asyncio.wait_for(first, WAIT_S)
    good_b, bad, good_c = await asyncio.wait_for(
        asyncio.gather(*later, return_exceptions=True), WAIT_S
    )

    assert isinstance(good_b, Submitted)
    assert isinstance(good_c, Submitted)
    assert isinstance(bad, InvalidInputError)
    assert "bad is refused" in str(bad)
    assert store.batches == [["a"], ["b", "bad", "c"], ["b"], ["bad"], ["c"]]


async def test_a_caller_that_gives_up_leaves_the_others_their_answers() -> None:
    store, coalescer, first = await first_insert_held()
    quitter = asyncio.create_task(coalescer.submit(new_job("b")))
    stayer = asyncio.create_task(coalescer.submit(new_job("c")))
    await asyncio.sleep(0)

    quitter.cancel()
    store.hold.set()

    assert (await asyncio.wait_for(stayer, WAIT_S)).job.id == "c"
    await asyncio.wait_for(first, WAIT_S)
    with pytest.raises(asyncio.CancelledError):
        await quitter
    assert store.batches == [["a"], ["b", "c"]]  # the job of the one who left is in
