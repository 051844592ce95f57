"""Retention, statistics, listing, queues and workers, against real PostgreSQL."""

from __future__ import annotations

import socket
from typing import Any

import psycopg
import pytest

from jobqueue.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    UnavailableError,
)
from jobqueue.store import (
    AttemptRef,
    AttemptResult,
    JobKind,
    JobState,
    JobStore,
    ManualClock,
    Outcome,
    RateLimit,
    WorkerInfo,
)
from tests.integration.store.helpers import command, policy, table_count

pytestmark = pytest.mark.integration


async def _finish(store: JobStore, count: int, outcome: Outcome = Outcome.SUCCEEDED) -> list[str]:
    await store.submit_batch([command() for _ in range(count)])
    jobs = await store.claim("default", ["w"] * count, lease_s=30)
    await store.report_results("w", [AttemptResult(job.id, 1, outcome) for job in jobs])
    return [job.id for job in jobs]


def _publish_all(database: psycopg.Connection[Any]) -> None:
    """What the relay does once it has published every event: move its progress past them."""
    database.execute(
        "UPDATE outbox_progress SET (xid, event_id, updated_at) ="
        " (SELECT xid, id, now() FROM job_events ORDER BY xid DESC, id DESC LIMIT 1)"
    )


# Retention ---------------------------------------------------------------------------


async def test_purge_deletes_old_succeeded_jobs_in_bounded_batches(
    store: JobStore, clock: ManualClock, database: psycopg.Connection[Any]
) -> None:
    await store.apply_queue(policy(retention_succeeded_s=3600))
    old = await _finish(store, 25)
    _publish_all(database)
    clock.advance(3000)
    recent = await _finish(store, 5)
    _publish_all(database)
    clock.advance(700)  # the old ones are 3700 s old, the recent ones 700 s

    purged = await store.purge_finished(batch_size=10)

    assert purged == 25
    remaining = {str(job_id) for (job_id,) in database.execute("SELECT id FROM jobs")}
    assert remaining == set(recent)
    event_jobs = {str(j) for (j,) in database.execute("SELECT DISTINCT job_id FROM job_events")}
    assert event_jobs == set(recent)
    assert not set(old) & event_jobs
    assert await store.purge_finished(batch_size=10) == 0


async def test_purge_keeps_jobs_whose_events_are_unpublished(
    store: JobStore, clock: ManualClock, database: psycopg.Connection[Any]
) -> None:
    await store.apply_queue(policy(retention_succeeded_s=60))
    published = await _finish(store, 3)
    _publish_all(database)
    unpublished = await _finish(store, 2)
    clock.advance(120)

    assert await store.purge_finished() == 3

    remaining = {str(job_id) for (job_id,) in database.execute("SELECT id FROM jobs")}
    assert remaining == set(unpublished)
    assert not set(published) & remaining


async def test_purge_uses_the_failed_retention_for_dead_letters(
    store: JobStore, clock: ManualClock, database: psycopg.Connection[Any]
) -> None:
    await store.apply_queue(
        policy(max_attempts=1, retention_succeeded_s=60, retention_failed_s=600)
    )
    await _finish(store, 2, Outcome.FAILED)
    _publish_all(database)
    clock.advance(120)
    assert await store.purge_finished() == 0
    clock.advance(600)
    assert await store.purge_finished() == 2
    assert table_count(database, "jobs") == 0


async def test_purge_keeps_unfinished_jobs(store: JobStore, clock: ManualClock) -> None:
    await store.apply_queue(policy(retention_succeeded_s=0))
    await store.submit(command())
    clock.advance(10)
    assert await store.purge_finished() == 0


# Statistics --------------------------------------------------------------------------


async def test_queue_stats_count_states_age_run_time_and_errors(
    store: JobStore, clock: ManualClock
) -> None:
    await store.apply_queue(policy("default", max_attempts=1))
    await store.apply_queue(policy("other"))
    await store.apply_queue(policy("empty"))
    await store.submit_batch([command() for _ in range(10)])
    await store.submit_batch([command("other") for _ in range(2)])
    clock.advance(30)

    jobs = await store.claim("default", ["w"] * 6, lease_s=300)
    await store.report_started("w", [AttemptRef(job.id, 1) for job in jobs[:5]], lease_s=300)
    results = [
        AttemptResult(job.id, 1, Outcome.SUCCEEDED, run_time_s=float(n + 1))
        for n, job in enumerate(jobs[:3])
    ] + [AttemptResult(jobs[3].id, 1, Outcome.FAILED, error="x", run_time_s=9.0)]
    await store.report_results("w", results)
    await store.cancel(jobs[5].id)

    stats = await store.queue_stats(["default", "other", "empty", "missing"], window_s=300)

    assert set(stats) == {"default", "other", "empty"}
    default = stats["default"]
    assert default.counts == {
        JobState.PENDING: 4,
        JobState.ASSIGNED: 0,
        JobState.RUNNING: 1,
        JobState.SUCCEEDED: 3,
        JobState.FAILED: 0,
        JobState.DEAD_LETTERED: 1,
        JobState.CANCELLED: 1,
    }
    assert default.oldest_pending_age_s == 30
    assert default.run_time_mean_s == pytest.approx(2.0)
    assert default.run_time_p95_s == pytest.approx(2.9)  # percentile_cont of 1, 2, 3
    assert default.error_rate == pytest.approx(1 / 4)
    assert stats["other"].counts[JobState.PENDING] == 2
    assert stats["other"].error_rate is None
    assert stats["empty"].counts == dict.fromkeys(JobState, 0)
    assert stats["empty"].oldest_pending_age_s is None
    assert set(await store.queue_stats()) == {"default", "other", "empty"}


async def test_queue_stats_window_excludes_old_outcomes(
    store: JobStore, clock: ManualClock
) -> None:
    await store.apply_queue(policy())
    await _finish(store, 2)
    clock.advance(600)

    stats = (await store.queue_stats(["default"], window_s=300))["default"]

    assert stats.counts[JobState.SUCCEEDED] == 2
    assert stats.run_time_mean_s is None
    assert stats.error_rate is None


# Listing ----------------------------------------------------------------------------


async def test_list_jobs_newest_first_in_pages_with_filters(
    store: JobStore, clock: ManualClock
) -> None:
    await store.apply_queue(policy())
    await store.apply_queue(policy("other"))
    ids = []
    for n in range(7):
        ids.append((await store.submit(command(labels={"n": str(n % 2)}))).job.id)
        clock.advance(1)
    await store.submit(command("other"))

    first, token = await store.list_jobs(queue="default", limit=3)
    second, token2 = await store.list_jobs(queue="default", limit=3, page_token=token)
    third, token3 = await store.list_jobs(queue="default", limit=3, page_token=token2)

    assert [job.id for job in first + second + third] == ids[::-1]
    assert token3 is None
    odd, _ = await store.list_jobs(labels={"n": "1"})
    assert [job.id for job in odd] == [ids[5], ids[3], ids[1]]
    await store.cancel(ids[0])
    cancelled, _ = await store.list_jobs(states=[JobState.CANCELLED])
    assert [job.id for job in cancelled] == [ids[0]]
    everything, _ = await store.list_jobs()
    assert len(everything) == 8
    with pytest.raises(InvalidInputError):
        await store.list_jobs(limit=0)


# Queues ---------------------------------------------------------------------------------


async def test_queue_policy_round_trips(store: JobStore) -> None:
    written = policy(
        "q",
        namespace="team-a",
        max_attempts=5,
        timeout_s=30.0,
        concurrency_limit=4,
        rate_limit=RateLimit(10.0, 20),
        allowed_kinds=frozenset({JobKind.PYTHON}),
        payload_limit_bytes=4096,
    )
    await store.apply_queue(written)

    assert await store.get_queue("q") == written
    assert await store.list_queues() == [written]
    with pytest.raises(NotFoundError):
        await store.get_queue("nope")


async def test_queue_name_owned_by_another_namespace_is_a_conflict(store: JobStore) -> None:
    await store.apply_queue(policy("q", namespace="team-a"))

    with pytest.raises(ConflictError, match="team-a"):
        await store.apply_queue(policy("q", namespace="team-b"))


async def test_invalid_queue_policy_is_refused(store: JobStore) -> None:
    with pytest.raises(InvalidInputError, match="max_attempts"):
        await store.apply_queue(policy("q", max_attempts=0))


async def test_delete_queue_refused_while_unfinished_then_removes_finished(
    store: JobStore, database: psycopg.Connection[Any]
) -> None:
    await store.apply_queue(policy())
    await _finish(store, 2)
    pending = (await store.submit(command())).job.id
    assert await store.unfinished_count("default") == 1

    with pytest.raises(ConflictError, match="1 unfinished"):
        await store.delete_queue("default")
    assert table_count(database, "jobs") == 3  # refused: nothing was deleted

    (cancelled,) = await store.cancel_unfinished("default", reason="queue deleted")
    assert cancelled.job.id == pending
    assert await store.unfinished_count("default") == 0
    _publish_all(database)
    await store.delete_queue("default")
    assert table_count(database, "jobs") == 0
    assert table_count(database, "queues") == 0
    with pytest.raises(NotFoundError):
        await store.delete_queue("default")


async def test_delete_queue_deletes_finished_jobs_in_chunks_and_keeps_unpublished_events(
    store: JobStore, database: psycopg.Connection[Any]
) -> None:
    await store.apply_queue(policy())
    await _finish(store, 5)
    _publish_all(database)
    late = await _finish(store, 3)  # their events are not published yet

    await store.delete_queue("default", chunk=3)  # chunks of three, three and two

    assert table_count(database, "jobs") == 0
    assert table_count(database, "queues") == 0
    rows = database.execute("SELECT DISTINCT job_id::text FROM job_events").fetchall()
    assert sorted(row[0] for row in rows) == sorted(late)  # left for the relay


# Workers --------------------------------------------------------------------------------


async def test_workers_register_touch_drain_and_leave(store: JobStore, clock: ManualClock) -> None:
    info = WorkerInfo("w1", "default", pool="p", hostname="h", concurrency=4, handlers=("a:b",))
    await store.register_worker(info)
    await store.register_worker(WorkerInfo("w2", "other"))
    registered_at = clock.now()

    clock.advance(5)
    await store.touch_workers(["w1"])
    await store.set_worker_state("w1", "draining")
    (record,) = await store.list_workers("default")

    assert record.info == info
    assert record.state == "draining"
    assert record.registered_at == registered_at
    assert record.last_seen_at == clock.now()
    await store.deregister_worker("w2")
    assert [(r.info.id, r.state) for r in await store.list_workers()] == [
        ("w1", "draining"),
        ("w2", "gone"),
    ]
    with pytest.raises(NotFoundError):
        await store.set_worker_state("nobody", "active")
    with pytest.raises(InvalidInputError):
        await store.set_worker_state("w1", "sleeping")


async def test_check_answers(store: JobStore) -> None:
    await store.check()


async def test_unreachable_database_is_unavailable() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    with pytest.raises(UnavailableError, match="cannot connect"):
        await JobStore.open(f"postgresql://nobody@127.0.0.1:{port}/none", open_timeout_s=1)


async def test_the_finished_count_can_be_read_apart_from_the_other_stats(
    store: JobStore, clock: ManualClock
) -> None:
    await store.apply_queue(policy())
    await store.submit_batch([command() for _ in range(3)])
    (job,) = await store.claim("default", ["w"], lease_s=300)
    await store.report_results("w", [AttemptResult(job.id, 1, Outcome.SUCCEEDED)])

    counted = (await store.queue_stats(["default"]))["default"]
    uncounted = (await store.queue_stats(["default"], count_finished=False))["default"]

    assert counted.counts[JobState.SUCCEEDED] == 1
    assert uncounted.counts == {
        JobState.PENDING: 2,
        JobState.ASSIGNED: 0,
        JobState.RUNNING: 0,
        JobState.FAILED: 0,
    }
    assert uncounted.oldest_pending_age_s == counted.oldest_pending_age_s
    assert await store.finished_counts(["default", "missing"]) == {
        "default": {JobState.SUCCEEDED: 1, JobState.DEAD_LETTERED: 0, JobState.CANCELLED: 0},
        "missing": {JobState.SUCCEEDED: 0, JobState.DEAD_LETTERED: 0, JobState.CANCELLED: 0},
    }
