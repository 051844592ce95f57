"""Claims: order, pause, concurrency limit, run_after; against real PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from jobqueue.errors import NotFoundError
from jobqueue.store import AttemptResult, JobState, JobStore, ManualClock, Outcome
from tests.integration.store.helpers import command, policy

pytestmark = pytest.mark.integration


async def test_claims_take_priority_first_then_oldest(store: JobStore, clock: ManualClock) -> None:
    await store.apply_queue(policy())
    old_low = (await store.submit(command(priority=0))).job.id
    clock.advance(1)
    new_high = (await store.submit(command(priority=5))).job.id
    clock.advance(1)
    new_low = (await store.submit(command(priority=0))).job.id
    clock.advance(1)
    newest_high = (await store.submit(command(priority=5))).job.id

    claimed = await store.claim("default", ["w1", "w2", "w3"], lease_s=30)

    assert [job.id for job in claimed] == [new_high, newest_high, old_low]
    assert [job.worker_id for job in claimed] == ["w1", "w2", "w3"]
    (last,) = await store.claim("default", ["w4", "w5"], lease_s=30)
    assert last.id == new_low


async def test_paused_queue_yields_nothing(store: JobStore) -> None:
    await store.apply_queue(policy(paused=True))
    await store.submit(command())

    assert await store.claim("default", ["w1"], lease_s=30) == []

    resumed = await store.set_paused("default", False)
    assert not resumed.paused
    assert len(await store.claim("default", ["w1"], lease_s=30)) == 1


async def test_claim_of_an_unknown_queue_is_not_found(store: JobStore) -> None:
    with pytest.raises(NotFoundError):
        await store.claim("nope", ["w1"], lease_s=30)


async def test_future_run_after_is_not_claimed(store: JobStore, clock: ManualClock) -> None:
    await store.apply_queue(policy())
    later = clock.now() + timedelta(seconds=60)
    job_id = (await store.submit(command(run_after=later))).job.id

    assert await store.claim("default", ["w1"], lease_s=30) == []
    clock.advance(60)
    (claimed,) = await store.claim("default", ["w1"], lease_s=30)
    assert claimed.id == job_id


async def test_concurrency_limit_is_respected(store: JobStore) -> None:
    await store.apply_queue(policy(concurrency_limit=3))
    await store.submit_batch([command() for _ in range(10)])

    first = await store.claim("default", ["w"] * 2, lease_s=30)
    second = await store.claim("default", ["w"] * 5, lease_s=30)
    third = await store.claim("default", ["w"] * 5, lease_s=30)

    assert (len(first), len(second), len(third)) == (2, 1, 0)
    await store.report_results("w", [AttemptResult(first[0].id, 1, Outcome.SUCCEEDED)])
    assert len(await store.claim("default", ["w"] * 5, lease_s=30)) == 1


async def test_concurrency_limit_holds_with_concurrent_claimers(
    database_url: str, clock: ManualClock
) -> None:
    limit = 7
    stores = [await JobStore.open(database_url, clock=clock) for _ in range(2)]
    try:
        await stores[0].apply_queue(policy(concurrency_limit=limit))
        await stores[0].submit_batch([command() for _ in range(200)])

        async def claim_repeatedly(store: JobStore, rounds: int) -> int:
            total = 0
            for _ in range(rounds):
                total += len(await store.claim("default", ["w"] * 3, lease_s=30))
            return total

        # Many rounds each, interleaved on separate connections: any overshoot shows.
        claimed = await asyncio.gather(*(claim_repeatedly(store, 20) for store in stores))

        assert sum(claimed) == limit
        stats = await stores[0].queue_stats(["default"])
        assert stats["default"].counts[JobState.ASSIGNED] == limit
    finally:
        for store in stores:
            await store.close()


async def test_claims_do_not_record_events(store: JobStore) -> None:
    await store.apply_queue(policy())
    job_id = (await store.submit(command())).job.id

    await store.claim("default", ["w1"], lease_s=30)

    assert len(await store.events(job_id)) == 1
