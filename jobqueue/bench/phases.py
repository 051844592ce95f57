"""The measured phases: submit rates, draining a backlog, dispatch latency at a steady rate.

Every figure comes from timestamps of the machine's one wall clock, so no clock skew
between processes enters it: the store stamps ``created_at`` when it accepts a job and
``finished_at`` when its Result reaches it; ``started_at`` is when the worker began the
job, as the worker stamped it (``JobAttempt.started_at`` in workers.proto; until the
evening of 4 December 2026 it was when the report of the start reached the store, which
put the report's way back into every latency); the relay stamps its progress
(``outbox_progress.updated_at``) each time it moves it. The benchmark adds only its own
send times for the client-side latency.

- Submit rates are timed in the benchmark around the calls, on a paused queue, so
  dispatch does not compete with them.
- A drain starts from a paused queue holding the whole backlog; the clock starts when the
  benchmark resumes it and stops at the last ``finished_at``. The steady rate leaves out
  the first and last tenth of the jobs (workers filling up, the tail running down).
- Latency is open loop: Submit calls leave on a fixed schedule whether or not earlier ones
  have returned, so a slow operator shows up as latency, not as a lower offered rate.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, LiteralString

import psycopg
from psycopg.rows import dict_row

from jobqueue.api.v1 import jobs_pb2
from jobqueue.bench import cpu
from jobqueue.client import AsyncClient, Client, job_spec
from jobqueue.errors import JobQueueError, TemporaryError

# Seconds between two looks at whether a phase has finished.
_POLL_S = 0.05
# Seconds the relay gets, after the last job finished, to publish every event.
_OUTBOX_TIMEOUT_S = 120.0

# Whether a queue has an unfinished job. One look per partial index (jobs_ready,
# jobs_in_flight, jobs_retries: the run_after condition lets the planner pick it), each
# stopping at its first row, so polling costs the
# database next to nothing while a drain is being timed. (One EXISTS over the four states
# is planned on jobs_listing and walks every finished job of the queue: about 6 ms of
# database time per look near the end of a drain of 20,000 jobs.)
_ANY_UNFINISHED: LiteralString = """
SELECT EXISTS (SELECT 1 FROM jobs WHERE queue = %(queue)s AND state = 'pending')
    OR EXISTS (SELECT 1 FROM jobs WHERE queue = %(queue)s AND state IN ('assigned', 'running'))
    OR EXISTS (
      SELECT 1 FROM jobs WHERE state = 'failed' AND run_after > '-infinity' AND queue = %(queue)s
    ) AS unfinished
"""

# How the jobs of a queue submitted since %(since)s ended, and when they finished.
_DRAIN_TIMES: LiteralString = """
SELECT count(*) AS jobs,
       count(*) FILTER (WHERE state = 'succeeded') AS succeeded,
       max(finished_at) AS last_finished,
       percentile_disc(0.1) WITHIN GROUP (ORDER BY finished_at) AS tenth_finished,
       percentile_disc(0.9) WITHIN GROUP (ORDER BY finished_at) AS ninetieth_finished
FROM jobs WHERE queue = %(queue)s AND created_at >= %(since)s
"""

# Whether the relay has an event left to publish: one after its progress.
_ANY_UNPUBLISHED: LiteralString = """
SELECT EXISTS (
  SELECT 1 FROM job_events, outbox_progress AS p
  WHERE (job_events.xid, job_events.id) > (p.xid, p.event_id)
) AS unpublished
"""

# When the relay last moved its progress: once nothing is left to publish, when it
# published the last event.
_LAST_PUBLISHED: LiteralString = "SELECT updated_at AS last_published FROM outbox_progress"

# When each job of a queue submitted since %(since)s was accepted and started.
_START_TIMES: LiteralString = """
SELECT id::text AS id, created_at, started_at FROM jobs
WHERE queue = %(queue)s AND created_at >= %(since)s
"""

Connection = psycopg.AsyncConnection[dict[str, Any]]


class PhaseFailedError(TemporaryError):
    """A phase did not end as it must (jobs failed, or it ran out of time)."""


@dataclass(frozen=True)
class Percentiles:
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Percentiles:
        ordered = sorted(seconds)
        if not ordered:
            return cls(0.0, 0.0, 0.0, 0.0)

        def rank(fraction: float) -> float:
            # Nearest rank: the smallest value at or above the fraction of the sample.
            index = max(0, min(len(ordered) - 1, round(fraction * len(ordered)) - 1))
            return ordered[index] * 1000

        return cls(rank(0.50), rank(0.95), rank(0.99), ordered[-1] * 1000)


@dataclass(frozen=True)
class SubmitRate:
    method: str  # "Submit", "SubmitStream" (single submits on one call) or "SubmitBatch"
    jobs: int
    batch_size: int
    callers: int  # calls in flight at once
    seconds: float
    jobs_per_s: float
    call: Percentiles  # the duration of one call


@dataclass(frozen=True)
class Drain:
    jobs: int
    seconds: float  # from resuming the queue to the last job finished
    jobs_per_s: float
    steady_jobs_per_s: float  # between the 10th and the 90th percentile of finishes
    outbox_lag_s: float  # from the last job finished to its last event published
    cpu_cores: dict[str, float]  # cores each group of processes kept busy meanwhile
    cpu_us_per_job: dict[str, float]  # CPU microseconds each group spent per job


@dataclass(frozen=True)
class Latency:
    target_per_s: float
    achieved_per_s: float
    jobs: int
    failed_submits: int  # submits that failed (an overloaded operator refuses some)
    accepted_to_started: Percentiles  # the store's created_at to started_at
    sent_to_started: Percentiles  # the benchmark's send time to started_at
    cpu_cores: dict[str, float]  # cores each group of processes kept busy meanwhile


def noop_spec(queue: str, handler: str) -> jobs_pb2.JobSpec:
    return job_spec(queue, handler=handler)


async def _timed_calls(
    calls: Sequence[Callable[[], Awaitable[object]]], callers: int
) -> tuple[float, list[float]]:
    """Run ``calls`` with ``callers`` of them in flight at once; total and per-call seconds."""
    durations: list[float] = []
    pending = iter(calls)

    async def caller() -> None:
        for call in pending:
            began = time.perf_counter()
            await call()
            durations.append(time.perf_counter() - began)

    began = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for index in range(callers):
            group.create_task(caller(), name=f"bench-caller-{index}")
    return time.perf_counter() - began, durations


async def submit_singles(
    client: AsyncClient, spec: jobs_pb2.JobSpec, *, jobs: int, callers: int, method: str
) -> SubmitRate:
    """``jobs`` single submits, ``callers`` at a time, the way ``client`` sends them
    (``method`` names that way in the results)."""
    calls = [lambda: client.submit(spec) for _ in range(jobs)]
    seconds, durations = await _timed_calls(calls, callers)
    return SubmitRate(method, jobs, 1, callers, seconds, jobs / seconds, Percentiles.of(durations))


async def submit_batches(
    client: AsyncClient, spec: jobs_pb2.JobSpec, *, jobs: int, batch_size: int, callers: int
) -> SubmitRate:
    """``jobs`` jobs in SubmitBatch calls of ``batch_size``, ``callers`` at a time."""
    sizes = [min(batch_size, jobs - start) for start in range(0, jobs, batch_size)]
    calls = [lambda size=size: client.submit_batch([spec] * size) for size in sizes]
    seconds, durations = await _timed_calls(calls, callers)
    return SubmitRate(
        "SubmitBatch", jobs, batch_size, callers, seconds, jobs / seconds, Percentiles.of(durations)
    )


async def _scalar(connection: Connection, query: LiteralString, params: dict[str, Any]) -> Any:
    cursor = await connection.execute(query, params)
    row = await cursor.fetchone()
    assert row is not None  # every query above is an aggregate: always one row
    return next(iter(row.values()))


async def wait_until_empty(
    connection: Connection, queue: str, timeout_s: float, alive: Callable[[], None]
) -> None:
    """Return once ``queue`` has no unfinished job; ``alive`` raises if the stack died."""
    deadline = time.monotonic() + timeout_s
    while await _scalar(connection, _ANY_UNFINISHED, {"queue": queue}):
        alive()
        if time.monotonic() > deadline:
            raise PhaseFailedError(f"queue {queue} still had unfinished jobs after {timeout_s:g} s")
        await asyncio.sleep(_POLL_S)


async def wait_until_published(connection: Connection, alive: Callable[[], None]) -> None:
    deadline = time.monotonic() + _OUTBOX_TIMEOUT_S
    while await _scalar(connection, _ANY_UNPUBLISHED, {}):
        alive()
        if time.monotonic() > deadline:
            raise PhaseFailedError(
                f"the relay left events unpublished {_OUTBOX_TIMEOUT_S:g} s after the drain"
            )
        await asyncio.sleep(_POLL_S)


async def drain(
    admin: Client,
    connection: Connection,
    queue: str,
    *,
    jobs: int,
    since: datetime,
    timeout_s: float,
    alive: Callable[[], None],
    processes: Mapping[int, str],
) -> Drain:
    """Resume ``queue`` (paused, holding ``jobs`` jobs submitted since ``since``); time it
    until every job has succeeded and every event is published.

    ``processes`` names the process trees whose CPU use is measured (see ``cpu``).
    """
    cpu_before, cpu_began = cpu.snapshot(processes), time.monotonic()
    resumed_at = datetime.now(UTC)
    await asyncio.to_thread(admin.resume, queue)
    await wait_until_empty(connection, queue, timeout_s, alive)
    cpu_s = cpu.used(cpu_before, cpu.snapshot(processes))
    cpu_window_s = time.monotonic() - cpu_began
    await wait_until_published(connection, alive)

    cursor = await connection.execute(_DRAIN_TIMES, {"queue": queue, "since": since})
    times = await cursor.fetchone()
    assert times is not None
    if times["jobs"] != jobs or times["succeeded"] != jobs:
        raise PhaseFailedError(
            f"expected {jobs} jobs to succeed on queue {queue}; {times['succeeded']} of"
            f" {times['jobs']} did"
        )
    last_published = await _scalar(connection, _LAST_PUBLISHED, {})
    seconds = (times["last_finished"] - resumed_at).total_seconds()
    steady_s = (times["ninetieth_finished"] - times["tenth_finished"]).total_seconds()
    return Drain(
        jobs=jobs,
        seconds=seconds,
        jobs_per_s=jobs / seconds,
        steady_jobs_per_s=0.8 * jobs / steady_s if steady_s > 0 else jobs / seconds,
        outbox_lag_s=max(0.0, (last_published - times["last_finished"]).total_seconds()),
        cpu_cores={group: spent / cpu_window_s for group, spent in cpu_s.items()},
        cpu_us_per_job={group: spent / jobs * 1e6 for group, spent in cpu_s.items()},
    )


async def steady_latency(
    client: AsyncClient,
    connection: Connection,
    spec: jobs_pb2.JobSpec,
    *,
    rate_per_s: float,
    seconds: float,
    alive: Callable[[], None],
    processes: Mapping[int, str],
) -> Latency:
    """Submit at ``rate_per_s`` for ``seconds``, one job per call, and time each job's start.

    A start is when the worker began the job by its own clock, whether its Started report
    went alone or with the result (see ``jobqueue.worker.reporting``).
    """
    cpu_before, cpu_began = cpu.snapshot(processes), time.monotonic()
    since = datetime.now(UTC)
    sent_at: dict[str, datetime] = {}
    failures: list[JobQueueError] = []

    async def submit_one() -> None:
        sent = datetime.now(UTC)
        try:
            job = await client.submit(spec)
        except JobQueueError as error:
            failures.append(error)
            return
        sent_at[job.id] = sent

    count = max(1, round(rate_per_s * seconds))
    loop = asyncio.get_running_loop()
    began = loop.time()
    async with asyncio.TaskGroup() as group:
        for index in range(count):
            # Open loop: each call leaves at its slot, whatever the earlier ones are doing.
            await asyncio.sleep(max(0.0, began + index / rate_per_s - loop.time()))
            group.create_task(submit_one(), name=f"bench-submit-{index}")
    offered_s = loop.time() - began

    await wait_until_empty(connection, spec.queue, 60.0 + seconds, alive)
    cpu_s = cpu.used(cpu_before, cpu.snapshot(processes))
    cpu_window_s = time.monotonic() - cpu_began
    cursor = await connection.execute(_START_TIMES, {"queue": spec.queue, "since": since})
    rows = await cursor.fetchall()
    accepted = [(row["started_at"] - row["created_at"]).total_seconds() for row in rows]
    sent = [(row["started_at"] - sent_at[row["id"]]).total_seconds() for row in rows]
    return Latency(
        target_per_s=rate_per_s,
        achieved_per_s=count / offered_s if offered_s > 0 else float(count),
        jobs=len(rows),
        failed_submits=len(failures),
        accepted_to_started=Percentiles.of(accepted),
        sent_to_started=Percentiles.of(sent),
        cpu_cores={group: spent / cpu_window_s for group, spent in cpu_s.items()},
    )


async def open_connection(database_url: str) -> Connection:
    return await psycopg.AsyncConnection.connect(
        database_url, autocommit=True, row_factory=dict_row
    )
