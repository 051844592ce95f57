"""The reference: what PostgreSQL alone does with rows shaped like jobs, measured in the run.

The machine is shared and its database throughput swings severalfold within an hour, so a
jobs-per-second figure means little on its own. The reference runs the same kind of row
work as the queue, on the same server and database, minutes apart from it, with no queue
in between: batched statements from one connection on scratch copies of ``jobs`` and
``job_events`` (``LIKE ... INCLUDING ALL``, so every index and default comes along).

- inserts: a batch of jobs and their ``submitted`` events per statement, as a SubmitBatch
  does;
- lifecycle: per batch, the writes a job's run makes: claim it (``SKIP LOCKED`` in
  dispatch order), mark it running with a ``started`` event, mark it succeeded with a
  ``succeeded`` event, and publish its events as the relay does: read the next ones in
  the relay's (xid, id) order and move a one-row progress past them.

Each figure is rows (jobs) per second. The queue's own figures are reported as a ratio to
the matching one, which is the number to compare across runs and machines. The reference
does no locking round trips, no transactions of several statements and no Python per
row, so a ratio near 1 would mean the queue costs little beyond its writes; it can pass 1
because the queue spreads its work over several connections and both cores.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import LiteralString

import psycopg

# Scratch copies of the two tables, dropped first in case an earlier pass left them.
_CREATE_TABLES: tuple[LiteralString, ...] = (
    "DROP TABLE IF EXISTS bench_reference_jobs, bench_reference_events, bench_reference_progress",
    "CREATE TABLE bench_reference_jobs (LIKE jobs INCLUDING ALL)",
    "CREATE TABLE bench_reference_events (LIKE job_events INCLUDING ALL)",
    "CREATE TABLE bench_reference_progress (LIKE outbox_progress INCLUDING ALL)",
    "INSERT INTO bench_reference_progress (xid, event_id, updated_at) VALUES ('1', 0, now())",
)

# Drop the scratch tables.
_DROP_TABLES: LiteralString = (
    "DROP TABLE bench_reference_jobs, bench_reference_events, bench_reference_progress"
)

# Insert a batch of pending no-op jobs and their submitted events in one statement.
_INSERT: LiteralString = """
WITH inserted AS (
  INSERT INTO bench_reference_jobs (
    id, queue, kind, payload, priority, state, attempt, max_attempts, timeout_s, labels,
    run_after, created_at, updated_at
  )
  SELECT id, 'reference', 'python', %(payload)s::jsonb, 0, 'pending', 0, 3, 600, '{}',
         %(now)s, %(now)s, %(now)s
  FROM unnest(%(ids)b::uuid[]) AS i(id)
  RETURNING id, queue
)
INSERT INTO bench_reference_events (job_id, queue, kind, attempt, occurred_at)
SELECT id, queue, 'submitted', 0, %(now)s FROM inserted
"""

# Claim up to %(limit)s pending jobs, best first, skipping locked rows.
_CLAIM: LiteralString = """
UPDATE bench_reference_jobs SET
  state = 'assigned', attempt = attempt + 1, worker_id = 'reference', assigned_at = %(now)s,
  lease_expires_at = %(lease_expires_at)s, updated_at = %(now)s
WHERE id IN (
  SELECT id FROM bench_reference_jobs
  WHERE queue = 'reference' AND state = 'pending' AND run_after <= %(now)s
  ORDER BY priority DESC, run_after, id
  LIMIT %(limit)s
  FOR UPDATE SKIP LOCKED
)
RETURNING id
"""

# Mark claimed jobs running and record their started events.
_START: LiteralString = """
WITH changed AS (
  UPDATE bench_reference_jobs SET
    state = 'running', started_at = %(now)s, lease_expires_at = %(lease_expires_at)s,
    updated_at = %(now)s
  WHERE id = ANY(%(ids)b::uuid[])
  RETURNING id, queue, attempt
)
INSERT INTO bench_reference_events (job_id, queue, kind, attempt, occurred_at, data)
SELECT id, queue, 'started', attempt, %(now)s, '{"worker_id": "reference"}' FROM changed
"""

# Mark running jobs succeeded and record their succeeded events.
_FINISH: LiteralString = """
WITH changed AS (
  UPDATE bench_reference_jobs SET
    state = 'succeeded', finished_at = %(now)s, lease_expires_at = NULL, output = 'null',
    exit_code = 0, updated_at = %(now)s
  WHERE id = ANY(%(ids)b::uuid[])
  RETURNING id, queue, attempt
)
INSERT INTO bench_reference_events (job_id, queue, kind, attempt, occurred_at, data)
SELECT id, queue, 'succeeded', attempt, %(now)s, '{"worker_id": "reference"}' FROM changed
"""

# Read up to %(limit)s events after the progress, in the relay's order, and move the
# progress past them.
_PUBLISH: LiteralString = """
WITH published AS (
  SELECT e.xid, e.id FROM bench_reference_events AS e, bench_reference_progress AS p
  WHERE (e.xid, e.id) > (p.xid, p.event_id)
  ORDER BY e.xid, e.id
  LIMIT %(limit)s
),
last AS (SELECT xid, id FROM published ORDER BY xid DESC, id DESC LIMIT 1)
UPDATE bench_reference_progress SET xid = last.xid, event_id = last.id, updated_at = %(now)s
FROM last
"""

_PAYLOAD = '{"handler": "jobqueue.bench.handlers:noop", "arguments": {}}'
_LEASE = timedelta(seconds=30)


@dataclass(frozen=True)
class Reference:
    rows: int
    insert_rows_per_s: float
    lifecycle_jobs_per_s: float


async def measure_reference(database_url: str, *, rows: int, batch_size: int) -> Reference:
    """Insert ``rows`` jobs, then run them all through their lifecycle, in batches."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as connection:
        for statement in _CREATE_TABLES:
            await connection.execute(statement)
        try:
            insert_s = await _insert_all(connection, rows, batch_size)
            lifecycle_s = await _run_all(connection, rows, batch_size)
        finally:
            await connection.execute(_DROP_TABLES)
    return Reference(rows, rows / insert_s, rows / lifecycle_s)


async def _insert_all(
    connection: psycopg.AsyncConnection[tuple[object, ...]], rows: int, batch_size: int
) -> float:
    began = time.perf_counter()
    for start in range(0, rows, batch_size):
        ids = [uuid.uuid4() for _ in range(min(batch_size, rows - start))]
        params = {"ids": ids, "payload": _PAYLOAD, "now": datetime.now(UTC)}
        await connection.execute(_INSERT, params)
    return time.perf_counter() - began


async def _run_all(
    connection: psycopg.AsyncConnection[tuple[object, ...]], rows: int, batch_size: int
) -> float:
    began = time.perf_counter()
    done = 0
    while done < rows:
        now = datetime.now(UTC)
        times = {"now": now, "lease_expires_at": now + _LEASE}
        cursor = await connection.execute(_CLAIM, {**times, "limit": batch_size})
        ids = [row[0] for row in await cursor.fetchall()]
        if not ids:
            break
        await connection.execute(_START, {**times, "ids": ids})
        await connection.execute(_FINISH, {**times, "ids": ids})
        # Two events per job were written above; the relay publishes them.
        await connection.execute(_PUBLISH, {"now": now, "limit": 2 * len(ids)})
        done += len(ids)
    return time.perf_counter() - began
