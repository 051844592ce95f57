"""``JobStore``: jobs, queues and workers in PostgreSQL, over an async connection pool.

Shape of every state change: lock the rows (in id order, or skipping locked rows for
background sweeps), let ``jobqueue.store.lifecycle`` decide what each job becomes, then
write all of it — new job states and their events — with one set-based statement in the
same transaction. The hot paths are single statements where the state machine allows:
a submit batch is one ``INSERT`` (its events in a CTE of the same statement), a claim is
one ``UPDATE ... FOR UPDATE SKIP LOCKED`` and records no event, a lease extension is one
``UPDATE``.

Connections are in autocommit mode; anything of more than one statement runs in an
explicit transaction. Errors from psycopg are wrapped here, at the edge: an unreachable
database is ``UnavailableError``, a deadlock or serialisation failure a
``TemporaryError`` to retry, anything else ``PermanentError``; the driver's exception is
chained.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import random as random_module
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, LiteralString, Self

import psycopg
from psycopg import AsyncConnection, AsyncCursor
from psycopg.rows import AsyncRowFactory, DictRow, Row, dict_row, tuple_row
from psycopg_pool import AsyncConnectionPool

from jobqueue.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PermanentError,
    TemporaryError,
    UnavailableError,
)
from jobqueue.logs import job_fields
from jobqueue.store import lifecycle, queries
from jobqueue.store.lifecycle import Change, PreparedJob
from jobqueue.store.model import (
    IN_FLIGHT_STATES,
    TERMINAL_STATES,
    WORKER_STATES,
    AttemptRef,
    AttemptResult,
    Backoff,
    Cancelled,
    Claimed,
    Clock,
    DirectSlots,
    EventKind,
    Job,
    JobEvent,
    JobKind,
    JobState,
    LostAttempt,
    NewJob,
    Outcome,
    QueuePolicy,
    QueueStats,
    RateLimit,
    ReportOutcome,
    StoreLimits,
    Submitted,
    SystemClock,
    WorkerCounts,
    WorkerInfo,
    WorkerRecord,
    new_job_id,
)

logger = logging.getLogger(__name__)

# How a recovery settles one locked attempt: its job, its queue's backoff, the time.
Decision = Callable[[Job, Backoff, datetime], Change]

Connection = AsyncConnection[DictRow]

# How many finished jobs one transaction of delete_queue deletes.
_DELETE_CHUNK = 5000

# How many jobs one transaction of cancel_unfinished handles: bounded, so a queue with a
# million pending jobs does not hold a million row locks at once.
_CANCEL_CHUNK = 1000
_LIST_LIMIT_MAX = 1000
# The state a Started report expects its attempt in.
_STARTABLE = frozenset({JobState.ASSIGNED})
_KINDS = {kind.value: kind for kind in JobKind}
# Compact JSON for parameters, one encoder for all: json.dumps with options builds one per
# call, which costs more than encoding a job's row.
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))


# Seconds a queue policy read for submits is used before it is read again. Every use also
# checks that the queue's row is still the version read, so this only bounds how long an
# entry can live; it is not how stale a policy may be.
_POLICY_TRUST_S = 30.0


@dataclass(frozen=True)
class _KnownPolicy:
    """A queue's policy as read for submits, and which version of its row that was."""

    policy: QueuePolicy
    version: str  # the row's xmin, as text
    read_at: float  # time.monotonic()


class JobStore:
    """The store's API; see the module docstring for how it talks to PostgreSQL."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Connection],
        *,
        clock: Clock,
        limits: StoreLimits,
        random: Callable[[], float],
    ) -> None:
        self._pool = pool
        self._clock = clock
        self._limits = limits
        self._random = random
        self._policies: dict[str, _KnownPolicy] = {}

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        clock: Clock | None = None,
        limits: StoreLimits | None = None,
        min_size: int = 2,
        max_size: int = 10,
        random: Callable[[], float] = random_module.random,
        open_timeout_s: float = 30.0,
    ) -> JobStore:
        """Open a pool of connections to ``dsn``; UnavailableError if none can be made."""
        pool = AsyncConnectionPool(
            dsn,
            connection_class=Connection,
            kwargs={"autocommit": True, "row_factory": dict_row},
            min_size=min_size,
            max_size=max_size,
            configure=_configure_connection,
            open=False,
            name="jobqueue-store",
        )
        try:
            await pool.open(wait=True, timeout=open_timeout_s)
        except psycopg.OperationalError as error:
            await pool.close()
            raise UnavailableError(f"cannot connect to the database: {error}") from error
        return cls(
            pool,
            clock=clock or SystemClock(),
            limits=limits or StoreLimits(),
            random=random,
        )

    async def close(self) -> None:
        await self._pool.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        """A pooled connection; psycopg errors raised in the block are wrapped."""
        try:
            async with self._pool.connection() as connection:
                yield connection
        except psycopg.errors.TransactionRollback as error:
            # Deadlock or serialisation failure: the transaction was rolled back whole.
            raise TemporaryError(
                f"database conflict, try again: {error}", retry_after_s=0.1
            ) from error
        except psycopg.OperationalError as error:
            raise UnavailableError(f"database unavailable: {error}") from error
        except psycopg.Error as error:
            raise PermanentError(f"database error: {error}") from error

    async def check(self) -> None:
        """Raise UnavailableError unless the database answers a query."""
        async with self._connection() as connection:
            await connection.execute(queries.PING)

    # Queues -------------------------------------------------------------------------

    async def apply_queue(self, policy: QueuePolicy) -> None:
        """Create or update a queue; ConflictError if another namespace owns the name."""
        lifecycle.validate_queue_policy(policy, self._limits)
        async with self._connection() as connection:
            cursor = await connection.execute(
                queries.UPSERT_QUEUE, _queue_params(policy, self._clock.now())
            )
            if await cursor.fetchone() is not None:
                return
            cursor = await connection.execute(queries.SELECT_QUEUE_NAMESPACE, {"name": policy.name})
            owner = await cursor.fetchone()
        owner_namespace = owner["namespace"] if owner else "?"
        raise ConflictError(
            f"queue {policy.name} belongs to namespace {owner_namespace!r}, not"
            f" {policy.namespace!r}; queue names are unique across namespaces"
        )

    async def get_queue(self, name: str) -> QueuePolicy:
        async with self._connection() as connection:
            cursor = await connection.execute(queries.SELECT_QUEUE, {"name": name})
            row = await cursor.fetchone()
        if row is None:
            raise NotFoundError(f"unknown queue {name!r}")
        return _queue_from_row(row)

    async def list_queues(self) -> list[QueuePolicy]:
        async with self._connection() as connection:
            cursor = await connection.execute(queries.SELECT_QUEUES)
            return [_queue_from_row(row) for row in await cursor.fetchall()]

    async def set_paused(self, name: str, paused: bool) -> QueuePolicy:
        params = {"name": name, "paused": paused, "now": self._clock.now()}
        async with self._connection() as connection:
            cursor = await connection.execute(queries.SET_QUEUE_PAUSED, params)
            row = await cursor.fetchone()
        if row is None:
            raise NotFoundError(f"unknown queue {name!r}")
        logger.info("Queue %s %s.", name, "paused" if paused else "resumed", extra={"queue": name})
        return _queue_from_row(row)

    async def close_queue(self, name: str) -> QueuePolicy:
        """Refuse new jobs on a queue from now on, and resume it: what it holds runs down."""
        params = {"name": name, "now": self._clock.now()}
        async with self._connection() as connection:
            cursor = await connection.execute(queries.CLOSE_QUEUE, params)
            row = await cursor.fetchone()
        if row is None:
            raise NotFoundError(f"unknown queue {name!r}")
        logger.info("Queue %s closed to new jobs.", name, extra={"queue": name})
        return _queue_from_row(row)

    async def unfinished_count(self, name: str) -> int:
        async with self._connection() as connection:
            cursor = await connection.execute(queries.COUNT_UNFINISHED, {"name": name})
            row = await cursor.fetchone()
        if row is None:
            raise NotFoundError(f"unknown queue {name!r}")
        return int(row["unfinished"])

    async def cancel_unfinished(self, name: str, reason: str) -> list[Cancelled]:
        """Cancel every unfinished job of a queue, a bounded chunk per transaction."""
        await self.get_queue(name)
        cancelled: list[Cancelled] = []
        while True:
            chunk = await self._cancel_chunk(name, reason)
            cancelled.extend(chunk)
            if len(chunk) < _CANCEL_CHUNK:
                break
        logger.info(
            "Cancelled %d unfinished jobs of queue %s.", len(cancelled), name, extra={"queue": name}
        )
        return cancelled

    async def _cancel_chunk(self, name: str, reason: str) -> list[Cancelled]:
        now = self._clock.now()
        params = {"queue": name, "limit": _CANCEL_CHUNK}
        async with self._connection() as connection, connection.transaction():
            cursor = await connection.execute(queries.LOCK_UNFINISHED_OF_QUEUE, params)
            jobs = [_job_from_row(row) for row in await cursor.fetchall()]
            changes = [lifecycle.cancel(job, reason, now) for job in jobs]
            await _apply(cursor, changes)
        return [
            Cancelled(change.job, job.worker_id if job.state in IN_FLIGHT_STATES else None)
            for job, change in zip(jobs, changes, strict=True)
        ]

    async def delete_queue(self, name: str, chunk: int = _DELETE_CHUNK) -> None:
        """Delete a queue and its finished jobs; ConflictError while unfinished jobs remain.

        The finished jobs go ``chunk`` per transaction first, so a queue that retains
        millions is not deleted in one long transaction holding a lock per row; the last
        transaction locks the queue, checks again that nothing is unfinished, and deletes
        what is left and the queue. Refused at the start, nothing is deleted; refused at
        the end (a job submitted meanwhile is unfinished), the queue and that job stay.

        Events the relay has not published yet stay (they have no foreign key) and are
        published as usual.
        """
        self._refuse_unfinished(name, await self.unfinished_count(name))
        deleted = chunk
        while deleted == chunk:
            async with self._connection() as connection:
                cursor = await connection.execute(
                    queries.DELETE_QUEUE_FINISHED_CHUNK, {"name": name, "limit": chunk}
                )
                deleted = cursor.rowcount
        async with self._connection() as connection, connection.transaction():
            cursor = await connection.execute(queries.LOCK_QUEUE_FOR_DELETE, {"name": name})
            if await cursor.fetchone() is None:
                raise NotFoundError(f"unknown queue {name!r}")
            cursor = await connection.execute(queries.COUNT_UNFINISHED, {"name": name})
            row = await cursor.fetchone()
            self._refuse_unfinished(name, int(row["unfinished"]) if row else 0)
            await cursor.execute(queries.DELETE_QUEUE_PUBLISHED_EVENTS, {"name": name})
            await cursor.execute(queries.DELETE_QUEUE_JOBS, {"name": name})
            await cursor.execute(queries.DELETE_QUEUE, {"name": name})
        logger.info("Deleted queue %s.", name, extra={"queue": name})

    @staticmethod
    def _refuse_unfinished(name: str, unfinished: int) -> None:
        if unfinished:
            raise ConflictError(
                f"queue {name} still has {unfinished} unfinished jobs; cancel them or"
                " wait for them to finish before deleting it"
            )

    # Jobs -----------------------------------------------------------------------------

    async def submit(self, job: NewJob, direct: DirectSlots | None = None) -> Submitted:
        (submitted,) = await self.submit_batch([job], direct)
        return submitted

    async def submit_batch(
        self, jobs: Sequence[NewJob], direct: DirectSlots | None = None
    ) -> list[Submitted]:
        """Insert jobs, all or none; one result per job, in order.

        A job whose idempotency key is already used on its queue (earlier, or earlier in
        the same batch) is answered with the first job and ``created=False``.

        ``direct`` offers free worker slots: a new job that nothing would hold back takes
        one and is inserted already assigned (see ``DirectSlots``), which spares it the
        claim. The caller pushes such jobs to their workers; a slot not taken stays free.

        The jobs are validated against their queues' policies as this store last read
        them, and inserted by one statement that checks those rows are still the versions
        read; a batch for a queue not read lately, or whose policy changed, or that those
        policies refuse, is validated again in a transaction that reads the policies
        afresh, under a lock that keeps the queues from being deleted meanwhile.
        """
        if not jobs:
            return []
        if direct is not None and not direct.lease_s > 0:
            raise InvalidInputError(f"lease_s: must be over 0, got {direct.lease_s}")
        now = self._clock.now()
        names = sorted({job.queue for job in jobs})
        known = self._known_policies(names)
        if known is not None:
            submitted = await self._submit_to_known_queues(jobs, known, direct, now)
            if submitted is not None:
                return submitted

        async with self._connection() as connection, connection.transaction():
            cursor = await connection.execute(queries.SELECT_QUEUES_FOR_SUBMIT, {"names": names})
            known = self._remember_policies(names, await cursor.fetchall())
            policies = {name: entry.policy for name, entry in known.items()}
            prepared = lifecycle.validate_batch(jobs, policies, self._limits, now)
            workers = _direct_workers(prepared, policies, direct, now)
            # No version to check: the lock keeps the queues from being deleted, and a
            # pause or other change committed meanwhile does not undo this validation.
            submitted = await _insert_jobs(
                cursor, prepared, now, {}, workers=workers, lease_s=_lease_s(direct)
            )
        if submitted is None:
            raise PermanentError("store: a submit with no versions to check found them stale")
        return submitted

    async def _submit_to_known_queues(
        self,
        jobs: Sequence[NewJob],
        known: Mapping[str, _KnownPolicy],
        direct: DirectSlots | None,
        now: datetime,
    ) -> list[Submitted] | None:
        """Submit in one statement if the remembered policies still hold; None if not."""
        policies = {name: entry.policy for name, entry in known.items()}
        try:
            prepared = lifecycle.validate_batch(jobs, policies, self._limits, now)
        except PermanentError:
            # Perhaps refused by a policy that has changed since: the locked path decides.
            return None
        workers = _direct_workers(prepared, policies, direct, now)
        versions = {name: entry.version for name, entry in known.items()}
        async with self._connection() as connection:
            cursor = connection.cursor()
            return await _insert_jobs(
                cursor, prepared, now, versions, workers=workers, lease_s=_lease_s(direct)
            )

    def _known_policies(self, names: Sequence[str]) -> dict[str, _KnownPolicy] | None:
        """The remembered policies of ``names``, if every one was read lately."""
        oldest = time.monotonic() - _POLICY_TRUST_S
        known = {}
        for name in names:
            entry = self._policies.get(name)
            if entry is None or entry.read_at < oldest:
                return None
            known[name] = entry
        return known

    def _remember_policies(
        self, names: Sequence[str], rows: Sequence[DictRow]
    ) -> dict[str, _KnownPolicy]:
        read_at = time.monotonic()
        found = {
            row["name"]: _KnownPolicy(_queue_from_row(row), row["row_version"], read_at)
            for row in rows
        }
        for name in names:
            if name in found:
                self._policies[name] = found[name]
            else:
                self._policies.pop(name, None)
        return found

    async def get(self, job_id: str) -> Job:
        async with self._connection() as connection:
            cursor = await connection.execute(queries.SELECT_JOB, {"id": _job_uuid(job_id)})
            row = await cursor.fetchone()
        if row is None:
            raise NotFoundError(f"unknown job {job_id}")
        return _job_from_row(row)

    async def get_many(self, job_ids: Sequence[str]) -> list[Job]:
        """The jobs of ``job_ids`` that exist, in no particular order; ids that are not
        UUIDs name no job."""
        ids = [key for key in (_canonical_id(job_id) for job_id in job_ids) if key]
        if not ids:
            return []
        async with self._connection() as connection:
            cursor = await connection.execute(queries.SELECT_JOBS, {"ids": ids})
            rows = await cursor.fetchall()
        return [_job_from_row(row) for row in rows]

    async def list_jobs(
        self,
        *,
        queue: str | None = None,
        states: Collection[JobState] = (),
        labels: Mapping[str, str] | None = None,
        limit: int = 100,
        page_token: str | None = None,
    ) -> tuple[list[Job], str | None]:
        """A page of jobs, newest first, and the token of the next page (None: last page)."""
        if not 1 <= limit <= _LIST_LIMIT_MAX:
            raise InvalidInputError(f"limit: must be from 1 to {_LIST_LIMIT_MAX}, got {limit}")
        conditions: list[LiteralString] = []
        params: dict[str, Any] = {"limit": limit + 1}
        if queue:
            conditions.append(queries.LIST_JOBS_BY_QUEUE)
            params["queue"] = queue
        if states:
            conditions.append(queries.LIST_JOBS_BY_STATES)
            params["states"] = _state_names(states)
        if labels:
            conditions.append(queries.LIST_JOBS_BY_LABELS)
            params["labels"] = json.dumps(dict(labels))
        if page_token:
            conditions.append(queries.LIST_JOBS_AFTER)
            params["after_created_at"], params["after_id"] = _decode_page_token(page_token)
        where: LiteralString = " WHERE " + " AND ".join(conditions) if conditions else ""
        query = queries.LIST_JOBS_HEAD + where + queries.LIST_JOBS_TAIL

        async with self._connection() as connection:
            cursor = await connection.execute(query, params)
            jobs = [_job_from_row(row) for row in await cursor.fetchall()]
        if len(jobs) <= limit:
            return jobs, None
        jobs = jobs[:limit]
        return jobs, _encode_page_token(jobs[-1])

    async def events(self, job_id: str) -> list[JobEvent]:
        """A job's events, oldest first; NotFoundError if there is neither job nor event."""
        key = _job_uuid(job_id)
        async with self._connection() as connection:
            cursor = await connection.execute(queries.SELECT_EVENTS, {"id": key})
            events = [_event_from_row(row) for row in await cursor.fetchall()]
            if not events:
                cursor = await connection.execute(queries.JOB_EXISTS, {"id": key})
                row = await cursor.fetchone()
                if row is None or not row["found"]:
                    raise NotFoundError(f"unknown job {job_id}")
        return events

    async def cancel(self, job_id: str, reason: str = "") -> Cancelled:
        """Cancel an unfinished job at once; ConflictError if it has finished."""
        now = self._clock.now()
        async with self._connection() as connection, connection.transaction():
            job, cursor = await _lock_one(connection, job_id)
            change = lifecycle.cancel(job, reason, now)
            await _apply(cursor, [change])
        worker_id = job.worker_id if job.state in IN_FLIGHT_STATES else None
        logger.info("Cancelled job.", extra=job_fields(job.id, job.queue, reason=reason))
        return Cancelled(change.job, worker_id)

    async def retry(self, job_id: str) -> Job:
        """Run a failed, dead-lettered or cancelled job again now; ConflictError otherwise."""
        now = self._clock.now()
        async with self._connection() as connection, connection.transaction():
            job, cursor = await _lock_one(connection, job_id)
            change = lifecycle.retry(job, now)
            await _apply(cursor, [change])
        logger.info("Job retried by hand.", extra=job_fields(job.id, job.queue))
        return change.job

    # Dispatch -------------------------------------------------------------------------

    async def claim(self, queue: str, worker_slots: Sequence[str], lease_s: float) -> list[Job]:
        """Claim up to ``len(worker_slots)`` ready jobs, the i-th for ``worker_slots[i]``.

        One statement. Returns [] for a paused queue; takes fewer under a concurrency
        limit; NotFoundError for an unknown queue.
        """
        rows = await self._claim(queries.CLAIM, queue, worker_slots, lease_s, dict_row)
        rows.sort(key=lambda row: int(row["slot"]))
        return [_job_from_row(row) for row in rows]

    async def claim_for_dispatch(
        self, queue: str, worker_slots: Sequence[str], lease_s: float
    ) -> list[Claimed]:
        """``claim``, answering with only what the jobs' assignments need (``Claimed``).

        Its rows are read as tuples: a dict per row cost more than the rest of reading it.
        """
        rows = await self._claim(
            queries.CLAIM_FOR_DISPATCH, queue, worker_slots, lease_s, tuple_row
        )
        rows.sort(key=lambda row: int(row[-1]))  # the slot
        return [
            Claimed(
                id=job_id,
                queue=job_queue,
                attempt=attempt,
                worker_id=worker_id,
                kind=_KINDS[kind],
                timeout_s=timeout_s,
                assigned_at=assigned_at,
                run_after=run_after,
                labels=labels or {},
                handler=handler,
                arguments_json=arguments_json,
                command=command,
            )
            for (
                job_id, job_queue, attempt, worker_id, kind, timeout_s, assigned_at, run_after,
                labels, handler, arguments_json, command, _slot,
            ) in rows
        ]  # fmt: skip

    async def _claim(
        self,
        query: LiteralString,
        queue: str,
        worker_slots: Sequence[str],
        lease_s: float,
        row_factory: AsyncRowFactory[Row],
    ) -> list[Row]:
        """Run a claim statement; its rows in no particular order."""
        if not worker_slots:
            return []
        if not lease_s > 0:
            raise InvalidInputError(f"lease_s: must be over 0, got {lease_s}")
        now = self._clock.now()
        params = {
            "queue": queue,
            "worker_slots": list(worker_slots),
            "now": now,
            "lease_expires_at": now + timedelta(seconds=lease_s),
        }
        async with self._connection() as connection:
            cursor = connection.cursor(row_factory=row_factory)
            try:
                await cursor.execute(query, params)
            except psycopg.errors.NoDataFound as error:
                raise NotFoundError(f"unknown queue {queue!r}") from error
            rows = await cursor.fetchall()
        logger.debug("Claimed %d jobs of queue %s.", len(rows), queue, extra={"queue": queue})
        return rows

    async def report_started(
        self, worker_id: str, attempts: Sequence[AttemptRef], lease_s: float
    ) -> list[ReportOutcome]:
        """Mark attempts running; stale ones (wrong attempt, state or worker) are refused.

        A batch naming each job once is recorded by one statement (``START_ATTEMPTS``);
        anything else (a job named twice, an id that is not a UUID) is locked and judged
        in Python, report by report.
        """
        if not attempts:
            return []
        now = self._clock.now()
        keys = _distinct_keys([ref.job_id for ref in attempts])
        if keys is None:
            return await self._judge_started(worker_id, attempts, lease_s, now)

        params = {
            "ids": keys,
            "attempts": [ref.attempt for ref in attempts],
            "started_ats": [ref.started_at for ref in attempts],
            "worker_id": worker_id,
            "now": now,
            "lease_expires_at": now + timedelta(seconds=lease_s),
        }
        async with self._connection() as connection:
            cursor = await connection.execute(queries.START_ATTEMPTS, params)
            accepted = await _accepted_positions(cursor)
            refused = await _refused_jobs(connection, keys, accepted)
        return [
            ReportOutcome(ref.job_id, ref.attempt, accepted=True, state=JobState.RUNNING)
            if index in accepted
            else lifecycle.refusal(refused.get(key), ref.job_id, ref.attempt, worker_id, _STARTABLE)
            for index, (ref, key) in enumerate(zip(attempts, keys, strict=True))
        ]

    async def _judge_started(
        self, worker_id: str, attempts: Sequence[AttemptRef], lease_s: float, now: datetime
    ) -> list[ReportOutcome]:
        async with self._connection() as connection, connection.transaction():
            locked, cursor = await _lock_many(connection, [ref.job_id for ref in attempts])
            current = {job_id: job for job_id, (job, _) in locked.items()}
            outcomes: list[ReportOutcome] = []
            changes: dict[str, Change] = {}
            for ref in attempts:
                key = _canonical_id(ref.job_id) or ref.job_id
                outcome, change = lifecycle.judge_started(
                    current.get(key),
                    ref.job_id,
                    ref.attempt,
                    worker_id=worker_id,
                    lease_s=lease_s,
                    now=now,
                    started_at=ref.started_at,
                )
                outcomes.append(outcome)
                if change is not None:
                    current[key] = change.job
                    changes[key] = _merge(changes.get(key), change)
            await _apply(cursor, list(changes.values()))
        return outcomes

    async def report_results(
        self, worker_id: str, results: Sequence[AttemptResult]
    ) -> list[ReportOutcome]:
        """Record attempts' results; stale ones are refused and leave the job unchanged.

        A batch of successes naming each job once, each with its run time, is recorded by
        one statement (``FINISH_SUCCEEDED``); any other batch is locked and judged in
        Python, result by result (failures need the backoff and the retry rules).
        """
        if not results:
            return []
        now = self._clock.now()
        keys = _distinct_keys([result.job_id for result in results])
        if keys is None or not all(_plain_success(result) for result in results):
            return await self._judge_results(worker_id, results, now)

        outputs = [lifecycle.truncate_utf8(r.output, self._limits.output_bytes) for r in results]
        params = {
            "ids": keys,
            "attempts": [result.attempt for result in results],
            "outputs": [text for text, _ in outputs],
            "output_truncateds": [
                cut or result.output_truncated
                for (_, cut), result in zip(outputs, results, strict=True)
            ],
            "exit_codes": [result.exit_code for result in results],
            # repr() writes a float as json.dumps does, which the general path uses.
            "run_times_s": [repr(result.run_time_s) for result in results],
            "started_ats": [result.started_at for result in results],
            "worker_id": worker_id,
            "now": now,
        }
        async with self._connection() as connection:
            cursor = await connection.execute(queries.FINISH_SUCCEEDED, params)
            accepted = await _accepted_positions(cursor)
            refused = await _refused_jobs(connection, keys, accepted)
        return [
            ReportOutcome(result.job_id, result.attempt, accepted=True, state=JobState.SUCCEEDED)
            if index in accepted
            else lifecycle.refusal(
                refused.get(key), result.job_id, result.attempt, worker_id, IN_FLIGHT_STATES
            )
            for index, (result, key) in enumerate(zip(results, keys, strict=True))
        ]

    async def _judge_results(
        self, worker_id: str, results: Sequence[AttemptResult], now: datetime
    ) -> list[ReportOutcome]:
        async with self._connection() as connection, connection.transaction():
            locked, cursor = await _lock_many(connection, [result.job_id for result in results])
            current = {job_id: job for job_id, (job, _) in locked.items()}
            outcomes: list[ReportOutcome] = []
            changes: dict[str, Change] = {}
            for result in results:
                key = _canonical_id(result.job_id) or result.job_id
                job = current.get(key)
                backoff = locked[key][1] if job is not None else Backoff()
                outcome, change = lifecycle.judge_result(
                    job,
                    result,
                    worker_id,
                    backoff=backoff,
                    limits=self._limits,
                    now=now,
                    random=self._random,
                )
                outcomes.append(outcome)
                if change is not None:
                    current[key] = change.job
                    changes[key] = _merge(changes.get(key), change)
            await _apply(cursor, list(changes.values()))
        return outcomes

    async def extend_leases(
        self, worker_id: str, attempts: Sequence[AttemptRef], lease_s: float
    ) -> list[AttemptRef]:
        """Extend the leases of a worker's attempts; return those it should stop.

        An attempt to stop is no longer the worker's: cancelled, finished, recovered after
        its lease expired, or reassigned.
        """
        if not attempts:
            return []
        # In id order, like every statement that locks several jobs.
        valid = sorted((key, ref.attempt) for ref in attempts if (key := _canonical_id(ref.job_id)))
        params = {
            "worker_id": worker_id,
            "ids": [key for key, _ in valid],
            "attempts": [attempt for _, attempt in valid],
            "lease_expires_at": self._clock.now() + timedelta(seconds=lease_s),
        }
        async with self._connection() as connection:
            cursor = await connection.execute(queries.EXTEND_LEASES, params)
            kept = {(str(row["id"]), int(row["attempt"])) for row in await cursor.fetchall()}
        return [ref for ref in attempts if (_canonical_id(ref.job_id), ref.attempt) not in kept]

    async def promote_due_retries(self, limit: int = 1000) -> int:
        """Make failed jobs whose retry time has come pending again; return how many."""
        params = {"now": self._clock.now(), "limit": limit}
        async with self._connection() as connection:
            cursor = await connection.execute(queries.PROMOTE_DUE_RETRIES, params)
            promoted = cursor.rowcount
        logger.debug("Promoted %d due retries.", promoted)
        return promoted

    async def recover_expired_leases(self, limit: int = 1000) -> list[LostAttempt]:
        """Take back attempts whose worker stopped renewing the lease: a new attempt at once,
        or dead-lettered when attempts are spent."""
        params = {"now": self._clock.now(), "limit": limit}
        return await self._recover(
            queries.LOCK_EXPIRED_LEASES,
            params,
            self._losing(lifecycle.lease_expired_error),
            timed_out=False,
        )

    async def recover_timed_out(self, grace_s: float = 5.0, limit: int = 1000) -> list[LostAttempt]:
        """Fail running attempts past ``started_at + timeout_s + grace_s`` (timed out): they
        retry after backoff or are dead-lettered. The caller tells their workers to stop."""
        params = {"now": self._clock.now(), "grace_s": grace_s, "limit": limit}
        return await self._recover(
            queries.LOCK_TIMED_OUT,
            params,
            lambda job, backoff, now: lifecycle.time_out(
                job, now=now, limits=self._limits, backoff=backoff, random=self._random
            ),
            timed_out=True,
        )

    async def release_worker(self, worker_id: str) -> list[LostAttempt]:
        """Return a departed worker's attempts to their queues, as if their leases expired."""
        return await self._recover(
            queries.LOCK_WORKER_ATTEMPTS,
            {"worker_id": worker_id},
            self._losing(lifecycle.released_error),
            timed_out=False,
        )

    async def release_unheld(self, worker_id: str, held: Sequence[AttemptRef]) -> list[LostAttempt]:
        """Return the started attempts of ``worker_id`` that are not in ``held``.

        A worker that registers names every attempt it runs or still reports on, so a
        started attempt it leaves out is lost: a new attempt at once, or dead-lettered when
        attempts are spent, without waiting for the lease.
        """
        return await self._recover(
            queries.LOCK_UNHELD_RUNNING,
            _held_params(worker_id, held),
            self._losing(lifecycle.unheld_error),
            timed_out=False,
        )

    async def unheld_assigned(self, worker_id: str, held: Sequence[AttemptRef]) -> list[Job]:
        """The attempts assigned to ``worker_id`` and not in ``held``, not started yet."""
        async with self._connection() as connection:
            cursor = await connection.execute(
                queries.SELECT_UNHELD_ASSIGNED, _held_params(worker_id, held)
            )
            return [_job_from_row(row) for row in await cursor.fetchall()]

    def _losing(self, error_of: Callable[[str | None], str]) -> Decision:
        """Decide that an attempt was lost, with the error ``error_of`` its worker's id."""
        return lambda job, _backoff, now: lifecycle.lose(
            job, error_of(job.worker_id), now, limits=self._limits
        )

    async def _recover(
        self,
        lock_query: LiteralString,
        params: Mapping[str, Any],
        decide: Decision,
        *,
        timed_out: bool,
    ) -> list[LostAttempt]:
        now = self._clock.now()
        async with self._connection() as connection, connection.transaction():
            cursor = await connection.execute(lock_query, params)
            locked = [
                (_job_from_row(row), _backoff_from_row(row)) for row in await cursor.fetchall()
            ]
            changes = [decide(job, backoff, now) for job, backoff in locked]
            await _apply(cursor, changes)
        lost = [
            LostAttempt(change.job, job.worker_id or "", timed_out)
            for (job, _), change in zip(locked, changes, strict=True)
        ]
        for attempt in lost:
            logger.info(
                "Attempt %d taken back from worker %s; the job is now %s.",
                attempt.job.attempt,
                attempt.worker_id,
                attempt.job.state,
                extra=job_fields(attempt.job.id, attempt.job.queue, timed_out=timed_out),
            )
        return lost

    # Workers --------------------------------------------------------------------------

    async def register_worker(self, info: WorkerInfo) -> None:
        params = {
            "id": info.id,
            "queue": info.queue,
            "pool": info.pool,
            "hostname": info.hostname,
            "concurrency": info.concurrency,
            "handlers": list(info.handlers),
            "operator_id": info.operator_id,
            "now": self._clock.now(),
        }
        async with self._connection() as connection:
            await connection.execute(queries.UPSERT_WORKER, params)

    async def deregister_worker(self, worker_id: str) -> None:
        """Mark a worker gone (its row stays for the record); see ``release_worker``."""
        await self.set_worker_state(worker_id, "gone")

    async def touch_workers(self, worker_ids: Sequence[str]) -> None:
        if not worker_ids:
            return
        params = {"ids": list(worker_ids), "now": self._clock.now()}
        async with self._connection() as connection:
            await connection.execute(queries.TOUCH_WORKERS, params)

    async def list_workers(self, queue: str | None = None) -> list[WorkerRecord]:
        async with self._connection() as connection:
            cursor = await connection.execute(queries.SELECT_WORKERS, {"queue": queue})
            return [_worker_from_row(row) for row in await cursor.fetchall()]

    async def worker_counts(self, seen_within_s: float) -> list[WorkerCounts]:
        """Per queue and pool: workers heard from in the last ``seen_within_s``, and busy ones."""
        params = {"since": self._clock.now() - timedelta(seconds=seen_within_s)}
        async with self._connection() as connection:
            cursor = await connection.execute(queries.COUNT_WORKERS, params)
            rows = await cursor.fetchall()
        return [
            WorkerCounts(row["queue"], row["pool"], int(row["connected"]), int(row["busy"]))
            for row in rows
        ]

    async def set_worker_state(self, worker_id: str, state: str) -> None:
        if state not in WORKER_STATES:
            raise InvalidInputError(
                f"state: must be one of {', '.join(sorted(WORKER_STATES))}, got {state!r}"
            )
        params = {"id": worker_id, "state": state, "now": self._clock.now()}
        async with self._connection() as connection:
            cursor = await connection.execute(queries.SET_WORKER_STATE, params)
            if await cursor.fetchone() is None:
                raise NotFoundError(f"unknown worker {worker_id}")

    # Statistics and upkeep ------------------------------------------------------------

    async def queue_stats(
        self,
        queues: Sequence[str] | None = None,
        window_s: float = 300.0,
        *,
        count_finished: bool = True,
    ) -> dict[str, QueueStats]:
        """Counts by state, oldest pending age, run time and error rate, per queue.

        Names that are not queues are left out. Cost: the counts come from the partial
        indexes (pending, in flight, failed, finished), so they read one index entry per
        job in those states, index-only once autovacuum has set the visibility map; the
        run time and error rate read the outcome events of the window from
        ``job_events_outcomes``. For hundreds of queues the cost is the same statements,
        growing with the number of jobs, not of queues.

        The finished count dominates when retention keeps millions of jobs (about 150 ms
        for a million on the machine of docs/performance.md). ``count_finished=False``
        leaves it out: the terminal states are then missing from each ``counts``, and a
        caller that refreshes often (``operator.monitor``) reads them less often with
        ``finished_counts``.
        """
        now = self._clock.now()
        async with self._connection() as connection:
            if queues is None:
                cursor = await connection.execute(queries.SELECT_QUEUE_NAMES)
                names = [str(row["name"]) for row in await cursor.fetchall()]
            else:
                cursor = await connection.execute(
                    queries.SELECT_QUEUE_NAMES_AMONG, {"names": list(queues)}
                )
                names = [str(row["name"]) for row in await cursor.fetchall()]
            params = {"queues": names, "now": now, "since": now - timedelta(seconds=window_s)}
            cursor = await connection.execute(queries.COUNT_UNFINISHED_BY_STATE, params)
            counts = await cursor.fetchall()
            if count_finished:
                cursor = await connection.execute(queries.COUNT_FINISHED_BY_STATE, params)
                counts += await cursor.fetchall()
            cursor = await connection.execute(queries.OUTCOMES_SINCE, params)
            outcomes = {row["queue"]: row for row in await cursor.fetchall()}
        states = [s for s in JobState if count_finished or s not in TERMINAL_STATES]
        return _stats(names, counts, outcomes, now, window_s, states=states)

    async def finished_counts(self, queues: Sequence[str]) -> dict[str, dict[JobState, int]]:
        """The finished jobs of each given queue by terminal state, zero included: the
        part of ``queue_stats`` that grows with retention, on its own."""
        async with self._connection() as connection:
            cursor = await connection.execute(
                queries.COUNT_FINISHED_BY_STATE, {"queues": list(queues)}
            )
            rows = await cursor.fetchall()
        terminal = [state for state in JobState if state in TERMINAL_STATES]
        counts = {name: dict.fromkeys(terminal, 0) for name in queues}
        for row in rows:
            counts[row["queue"]][JobState(row["state"])] = int(row["jobs"])
        return counts

    async def purge_finished(self, batch_size: int = 1000) -> int:
        """Delete finished jobs past their queue's retention, with their events, a bounded
        batch per transaction; jobs with unpublished events are kept. Returns how many."""
        purged = 0
        while True:
            params = {"now": self._clock.now(), "limit": batch_size}
            async with self._connection() as connection:
                cursor = await connection.execute(queries.PURGE_FINISHED, params)
                deleted = cursor.rowcount
            purged += deleted
            if deleted < batch_size:
                break
        if purged:
            logger.info("Purged %d finished jobs past their retention.", purged)
        return purged


# Helpers: connections and locking ------------------------------------------------------


async def _configure_connection(connection: Connection) -> None:
    # Timestamps come back in UTC, whatever the server's default time zone.
    await connection.execute("SET TIME ZONE 'UTC'")


def _job_uuid(job_id: str) -> str:
    canonical = _canonical_id(job_id)
    if canonical is None:
        raise InvalidInputError(f"job id {job_id!r} is not a UUID")
    return canonical


async def _lock_one(connection: Connection, job_id: str) -> tuple[Job, AsyncCursor[DictRow]]:
    locked, cursor = await _lock_many(connection, [_job_uuid(job_id)])
    if not locked:
        raise NotFoundError(f"unknown job {job_id}")
    ((job, _),) = locked.values()
    return job, cursor


# A UUID already spelled as the database spells it (what workers send back): no parsing.
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _held_params(worker_id: str, held: Sequence[AttemptRef]) -> dict[str, Any]:
    """A worker and the attempts it holds, as SELECT_UNHELD_ASSIGNED and its kin take them."""
    valid = [(key, ref.attempt) for ref in held if (key := _canonical_id(ref.job_id))]
    return {
        "worker_id": worker_id,
        "ids": [key for key, _ in valid],
        "attempts": [attempt for _, attempt in valid],
    }


def _canonical_id(job_id: str) -> str | None:
    """A job id as the database spells it; None if it is not a UUID."""
    if isinstance(job_id, str) and _CANONICAL_UUID.fullmatch(job_id):
        return job_id
    try:
        return str(uuid.UUID(job_id))
    except (ValueError, TypeError, AttributeError):
        return None


async def _lock_many(
    connection: Connection, job_ids: Sequence[str]
) -> tuple[dict[str, tuple[Job, Backoff]], AsyncCursor[DictRow]]:
    """Lock the named jobs in id order, keyed by canonical id; unknown ids are absent."""
    ids = sorted({key for key in map(_canonical_id, job_ids) if key is not None})
    cursor = await connection.execute(queries.LOCK_JOBS, {"ids": ids})
    locked = {}
    for row in await cursor.fetchall():
        job = _job_from_row(row)
        locked[job.id] = (job, _backoff_from_row(row))
    return locked, cursor


def _distinct_keys(job_ids: Sequence[str]) -> list[str] | None:
    """Canonical ids of a batch that names each job once by a valid id; None otherwise."""
    keys = [_canonical_id(job_id) for job_id in job_ids]
    if None in keys or len(set(keys)) != len(keys):
        return None
    return [key for key in keys if key is not None]


def _plain_success(result: AttemptResult) -> bool:
    return result.outcome is Outcome.SUCCEEDED and result.run_time_s is not None


async def _accepted_positions(cursor: AsyncCursor[DictRow]) -> set[int]:
    """The 0-based positions in the batch of the reports a one-statement report accepted."""
    return {int(row["position"]) - 1 for row in await cursor.fetchall()}


async def _refused_jobs(
    connection: Connection, keys: Sequence[str], accepted: set[int]
) -> dict[str, Job]:
    """The current rows of the jobs whose reports were refused, to say why (no lock: the
    refusal is already decided; the reason only describes it)."""
    refused = [key for index, key in enumerate(keys) if index not in accepted]
    if not refused:
        return {}
    cursor = await connection.execute(queries.SELECT_JOBS, {"ids": refused})
    return {job.id: job for job in map(_job_from_row, await cursor.fetchall())}


def _merge(earlier: Change | None, later: Change) -> Change:
    """Two changes of one job in one batch: the last state, every event in order."""
    if earlier is None:
        return later
    return Change(later.job, earlier.events + later.events)


async def _apply(cursor: AsyncCursor[DictRow], changes: Sequence[Change]) -> None:
    """Write changed jobs and their events in one statement (rows are already locked)."""
    if not changes:
        return
    jobs = [change.job for change in changes]
    events = [(change.job, event) for change in changes for event in change.events]
    params: dict[str, Any] = {
        "ids": [job.id for job in jobs],
        "states": [str(job.state) for job in jobs],
        "attempts": [job.attempt for job in jobs],
        "max_attempts": [job.max_attempts for job in jobs],
        "run_afters": [job.run_after for job in jobs],
        "updated_ats": [job.updated_at for job in jobs],
        "assigned_ats": [job.assigned_at for job in jobs],
        "started_ats": [job.started_at for job in jobs],
        "finished_ats": [job.finished_at for job in jobs],
        "worker_ids": [job.worker_id for job in jobs],
        "lease_expires_ats": [job.lease_expires_at for job in jobs],
        "last_errors": [job.last_error for job in jobs],
        "outputs": [job.output for job in jobs],
        "output_truncateds": [job.output_truncated for job in jobs],
        "exit_codes": [job.exit_code for job in jobs],
        "event_job_ids": [job.id for job, _ in events],
        "event_queues": [job.queue for job, _ in events],
        "event_kinds": [str(event.kind) for _, event in events],
        "event_attempts": [event.attempt for _, event in events],
        "event_occurred_ats": [event.occurred_at or job.updated_at for job, event in events],
        "event_data": [_COMPACT_JSON.encode(event.data) for _, event in events],
    }
    await cursor.execute(queries.APPLY_CHANGES, params)
    row = await cursor.fetchone()
    if row is None or row["jobs_changed"] != len(jobs):
        # The rows were locked by this transaction, so this means a bug, not a race.
        raise PermanentError(f"store: expected to change {len(jobs)} jobs, changed {row}")


def _lease_s(direct: DirectSlots | None) -> float:
    """The lease of jobs assigned at insert (none are without ``direct``)."""
    return direct.lease_s if direct is not None else 0.0


def _direct_workers(
    prepared: Sequence[PreparedJob],
    policies: Mapping[str, QueuePolicy],
    direct: DirectSlots | None,
    now: datetime,
) -> list[str | None]:
    """The offered worker each job is assigned to at insert, or None; see ``DirectSlots``."""
    if direct is None:
        return [None] * len(prepared)
    offered = {queue: iter(workers) for queue, workers in direct.workers.items()}
    workers: list[str | None] = []
    for job in prepared:
        policy = policies[job.queue]
        slots = offered.get(job.queue)
        free = (
            slots is not None
            and not policy.paused
            and policy.concurrency_limit is None
            and policy.rate_limit is None
            and job.run_after <= now
        )
        workers.append(next(slots, None) if free and slots is not None else None)
    return workers


async def _insert_jobs(
    cursor: AsyncCursor[DictRow],
    prepared: Sequence[PreparedJob],
    now: datetime,
    versions: Mapping[str, str],
    *,
    workers: Sequence[str | None],
    lease_s: float,
) -> list[Submitted] | None:
    """Insert the first job of each idempotency key; answer the rest with the holder.

    ``workers[i]`` is the worker ``prepared[i]`` is assigned to at once, if any, with a
    lease of ``lease_s``. None, and
    nothing inserted, if a queue's row is no longer the version in ``versions`` (an empty
    mapping checks nothing).
    """
    key_owner: dict[tuple[str, str], int] = {}
    to_insert: list[_Insert] = []
    for index, job in enumerate(prepared):
        if job.idempotency_key is not None:
            key = (job.queue, job.idempotency_key)
            if key in key_owner:
                continue
            key_owner[key] = index
        to_insert.append(_Insert(new_job_id(), job, workers[index]))
    # Insert in key order: two batches sharing keys then wait on each other in one order.
    to_insert.sort(key=lambda item: (item.job.queue, item.job.idempotency_key or ""))

    lease_expires_at = now + timedelta(seconds=lease_s)
    params = {
        "jobs": "[" + ",".join(item.row_json() for item in to_insert) + "]",
        "queue_versions": json.dumps(versions),
        "now": now,
        "lease_expires_at": lease_expires_at,
    }
    await cursor.execute(queries.INSERT_JOBS, params)
    rows = await cursor.fetchall()
    if not rows[0]["current"]:
        return None
    inserted_ids = {row["id"] for row in rows if row["id"] is not None}
    inserted = {
        item.id: item.as_job(now, lease_expires_at) for item in to_insert if item.id in inserted_ids
    }
    by_key: dict[tuple[str, str], Job] = {
        (job.queue, job.idempotency_key): job
        for job in inserted.values()
        if job.idempotency_key is not None
    }
    missing = [key for key in key_owner if key not in by_key]
    if missing:
        key_params = {"queues": [q for q, _ in missing], "keys": [k for _, k in missing]}
        await cursor.execute(queries.SELECT_JOBS_BY_IDEMPOTENCY_KEY, key_params)
        for row in await cursor.fetchall():
            existing = _job_from_row(row)
            by_key[(existing.queue, row["idempotency_key"])] = existing

    new_ids = {id(item.job): item.id for item in to_insert}
    results = []
    for index, job in enumerate(prepared):
        if job.idempotency_key is None:
            results.append(Submitted(inserted[new_ids[id(job)]], created=True))
            continue
        key = (job.queue, job.idempotency_key)
        holder = by_key[key]
        created = key_owner[key] == index and holder.id in inserted
        results.append(Submitted(holder, created=created))
    return results


@dataclass(frozen=True)
class _Insert:
    """One job to insert: its new id, what it is, and the worker it goes to at once."""

    id: str
    job: PreparedJob
    worker_id: str | None

    def row_json(self) -> str:
        """The job as one element of ``INSERT_JOBS``'s JSON array.

        The payload goes in as validation encoded it (``payload_json``), not encoded again.
        """
        job = self.job
        fields = {
            "id": self.id,
            "queue": job.queue,
            "kind": str(job.kind),
            "priority": job.priority,
            "max_attempts": job.max_attempts,
            "timeout_s": job.timeout_s,
            "idempotency_key": job.idempotency_key,
            "labels": job.labels,
            "run_after": job.run_after.isoformat(),
            "worker_id": self.worker_id,
        }
        encoded = _COMPACT_JSON.encode(fields)
        return f'{encoded[:-1]},"payload":{job.payload_json}}}'

    def as_job(self, now: datetime, lease_expires_at: datetime) -> Job:
        """The row ``INSERT_JOBS`` wrote, without reading it back."""
        job, assigned = self.job, self.worker_id is not None
        return Job(
            id=self.id,
            queue=job.queue,
            kind=job.kind,
            payload=job.payload,
            priority=job.priority,
            state=JobState.ASSIGNED if assigned else JobState.PENDING,
            attempt=1 if assigned else 0,
            max_attempts=job.max_attempts,
            timeout_s=job.timeout_s,
            idempotency_key=job.idempotency_key,
            labels=job.labels,
            run_after=job.run_after,
            created_at=now,
            updated_at=now,
            assigned_at=now if assigned else None,
            started_at=None,
            finished_at=None,
            worker_id=self.worker_id,
            lease_expires_at=lease_expires_at if assigned else None,
            last_error=None,
            output=None,
            output_truncated=False,
            exit_code=None,
        )


# Helpers: rows to values -----------------------------------------------------------------


def _job_from_row(row: DictRow) -> Job:
    return Job(
        id=str(row["id"]),
        queue=row["queue"],
        kind=JobKind(row["kind"]),
        payload=row["payload"],
        priority=row["priority"],
        state=JobState(row["state"]),
        attempt=row["attempt"],
        max_attempts=row["max_attempts"],
        timeout_s=row["timeout_s"],
        idempotency_key=row["idempotency_key"],
        labels=row["labels"],
        run_after=row["run_after"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        assigned_at=row["assigned_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        worker_id=row["worker_id"],
        lease_expires_at=row["lease_expires_at"],
        last_error=row["last_error"],
        output=row["output"],
        output_truncated=row["output_truncated"],
        exit_code=row["exit_code"],
    )


def _backoff_from_row(row: DictRow) -> Backoff:
    return Backoff(
        initial_s=row["backoff_initial_s"],
        multiplier=row["backoff_multiplier"],
        max_s=row["backoff_max_s"],
        jitter=row["backoff_jitter"],
    )


def _queue_from_row(row: DictRow) -> QueuePolicy:
    rate_limit = None
    if row["rate_limit_per_s"] is not None:
        rate_limit = RateLimit(row["rate_limit_per_s"], row["rate_limit_burst"] or 1)
    return QueuePolicy(
        name=row["name"],
        namespace=row["namespace"],
        max_attempts=row["max_attempts"],
        backoff=_backoff_from_row(row),
        timeout_s=row["timeout_s"],
        paused=row["paused"],
        concurrency_limit=row["concurrency_limit"],
        rate_limit=rate_limit,
        retention_succeeded_s=row["retention_succeeded_s"],
        retention_failed_s=row["retention_failed_s"],
        allowed_kinds=frozenset(JobKind(kind) for kind in row["allowed_kinds"]),
        payload_limit_bytes=row["payload_limit_bytes"],
        closed=row["closed"],
    )


def _queue_params(policy: QueuePolicy, now: datetime) -> dict[str, Any]:
    rate = policy.rate_limit
    return {
        "name": policy.name,
        "namespace": policy.namespace,
        "max_attempts": policy.max_attempts,
        "backoff_initial_s": policy.backoff.initial_s,
        "backoff_multiplier": policy.backoff.multiplier,
        "backoff_max_s": policy.backoff.max_s,
        "backoff_jitter": policy.backoff.jitter,
        "timeout_s": policy.timeout_s,
        "paused": policy.paused,
        "concurrency_limit": policy.concurrency_limit,
        "rate_limit_per_s": rate.per_second if rate else None,
        "rate_limit_burst": rate.burst if rate else None,
        "retention_succeeded_s": policy.retention_succeeded_s,
        "retention_failed_s": policy.retention_failed_s,
        "allowed_kinds": sorted(str(kind) for kind in policy.allowed_kinds),
        "payload_limit_bytes": policy.payload_limit_bytes,
        "now": now,
    }


def _event_from_row(row: DictRow) -> JobEvent:
    return JobEvent(
        id=row["id"],
        job_id=str(row["job_id"]),
        queue=row["queue"],
        kind=EventKind(row["kind"]),
        attempt=row["attempt"],
        occurred_at=row["occurred_at"],
        data=row["data"],
    )


def _worker_from_row(row: DictRow) -> WorkerRecord:
    info = WorkerInfo(
        id=row["id"],
        queue=row["queue"],
        pool=row["pool"],
        hostname=row["hostname"],
        concurrency=row["concurrency"],
        handlers=tuple(row["handlers"]),
        operator_id=row["operator_id"],
    )
    return WorkerRecord(info, row["state"], row["registered_at"], row["last_seen_at"])


def _stats(
    names: Sequence[str],
    counts: Sequence[DictRow],
    outcomes: Mapping[str, DictRow],
    now: datetime,
    window_s: float,
    *,
    states: Collection[JobState],
) -> dict[str, QueueStats]:
    by_queue: dict[str, dict[JobState, int]] = {name: dict.fromkeys(states, 0) for name in names}
    oldest_due: dict[str, datetime] = {}
    for row in counts:
        by_queue[row["queue"]][JobState(row["state"])] = int(row["jobs"])
        if row["oldest_due"] is not None:
            oldest_due[row["queue"]] = row["oldest_due"]
    stats = {}
    for name in names:
        outcome = outcomes.get(name)
        finished = int(outcome["finished_attempts"]) if outcome else 0
        due = oldest_due.get(name)
        stats[name] = QueueStats(
            queue=name,
            counts=by_queue[name],
            oldest_pending_age_s=(now - due).total_seconds() if due else None,
            run_time_mean_s=outcome["run_time_mean_s"] if outcome else None,
            run_time_p95_s=outcome["run_time_p95_s"] if outcome else None,
            error_rate=int(outcome["failed_attempts"]) / finished if outcome and finished else None,
            window_s=window_s,
        )
    return stats


def _state_names(states: Collection[JobState | str]) -> list[str]:
    try:
        return [str(JobState(state)) for state in states]
    except ValueError as error:
        raise InvalidInputError(f"states: {error}") from error


def _encode_page_token(last: Job) -> str:
    document = json.dumps([last.created_at.isoformat(), last.id])
    return base64.urlsafe_b64encode(document.encode()).decode()


def _decode_page_token(token: str) -> tuple[datetime, str]:
    try:
        created_at, job_id = json.loads(base64.urlsafe_b64decode(token.encode()))
        moment = datetime.fromisoformat(created_at)
        uuid.UUID(job_id)
    except (ValueError, TypeError, binascii.Error, UnicodeError) as error:
        raise InvalidInputError("page_token: not a token from a previous page") from error
    return moment, job_id
