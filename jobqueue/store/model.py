"""The store's vocabulary: states, kinds, policies, jobs, events and the clock.

Everything here is a value: enums and frozen dataclasses with no behaviour beyond simple
derived properties, so the operator, the worker, the gRPC layer and the event relay can
all share them without pulling in the database. The rules that move a job from one state
to another live in ``jobqueue.store.lifecycle``; the SQL lives in ``jobqueue.store.store``.

Time comes from an injected ``Clock``. Production uses ``SystemClock``; tests use
``ManualClock`` and advance it instead of sleeping, which is also why no SQL statement
calls ``now()`` for a job's timestamps.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol


class JobState(StrEnum):
    PENDING = "pending"
    ASSIGNED = "assigned"  # claimed for a worker, which has not yet said it started
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # the last attempt failed; a retry is scheduled at run_after
    DEAD_LETTERED = "dead_lettered"  # every attempt failed; waits for a person
    CANCELLED = "cancelled"


TERMINAL_STATES: frozenset[JobState] = frozenset(
    {JobState.SUCCEEDED, JobState.DEAD_LETTERED, JobState.CANCELLED}
)
UNFINISHED_STATES: frozenset[JobState] = frozenset(JobState) - TERMINAL_STATES
IN_FLIGHT_STATES: frozenset[JobState] = frozenset({JobState.ASSIGNED, JobState.RUNNING})


class JobKind(StrEnum):
    COMMAND = "command"
    PYTHON = "python"


class EventKind(StrEnum):
    SUBMITTED = "submitted"
    STARTED = "started"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD_LETTERED = "dead_lettered"
    CANCELLED = "cancelled"


class Outcome(StrEnum):
    """How an attempt ended, as its worker reports it."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"


WORKER_STATES: frozenset[str] = frozenset({"active", "draining", "gone"})


# Time ---------------------------------------------------------------------------------


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, UTC and tz-aware."""
        ...


class SystemClock:
    """The real time."""

    def now(self) -> datetime:
        return datetime.now(UTC)


def new_job_id() -> str:
    """A new job's id: a UUID of version 7 (RFC 9562), whose first 48 bits are the Unix time
    in milliseconds and the other 74 (all but the version and variant) random.

    Ids made close in time sort close together. The jobs in play are the recent ones, so
    their entries in the primary keys of ``jobs`` and ``job_events``, written again at each
    change of state, sit on a few hot pages at the end of each index instead of on random
    pages all over it (which version 4 ids gave). The real time is used, not the store's
    clock: the point is where the insert lands, and the random part keeps ids unique.
    """
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10))
    value = value & ~(0xF << 76) | 0x7 << 76  # version 7
    value = value & ~(0x3 << 62) | 0x2 << 62  # the RFC's variant
    return str(uuid.UUID(int=value))


class ManualClock:
    """A clock that moves only when told to, for tests: no sleeps, exact timestamps.

    Thread-safe, so a test may advance it while store calls run in other tasks or threads.
    """

    # A fixed default start, so a test's timestamps are the same on every run.
    DEFAULT_START = datetime(2030, 1, 1, tzinfo=UTC)

    def __init__(self, start: datetime | None = None) -> None:
        self._lock = threading.Lock()
        self._now = _require_aware(start or self.DEFAULT_START)

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> datetime:
        with self._lock:
            self._now += timedelta(seconds=seconds)
            return self._now

    def set(self, moment: datetime) -> None:
        with self._lock:
            self._now = _require_aware(moment)


def _require_aware(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("a clock's time must be tz-aware")
    return moment.astimezone(UTC)


# Limits and policies ------------------------------------------------------------------


@dataclass(frozen=True)
class StoreLimits:
    """Sizes and ranges the store enforces on what it is given."""

    payload_bytes: int = 256 * 1024  # the default; a queue's payload_limit_bytes wins
    output_bytes: int = 1024 * 1024  # longer output is cut and marked truncated
    error_bytes: int = 8 * 1024  # longer error text is cut
    labels: int = 32  # pairs per job
    label_key_chars: int = 63
    label_value_chars: int = 255
    idempotency_key_chars: int = 255
    batch_jobs: int = 1000
    timeout_max_s: float = 604800.0  # one week
    max_attempts: int = 100
    priority_min: int = -1000
    priority_max: int = 1000


@dataclass(frozen=True)
class Backoff:
    """Delay before retry n: min(max_s, initial_s * multiplier ** (n - 1)), ± jitter."""

    initial_s: float = 1.0
    multiplier: float = 2.0
    max_s: float = 300.0
    jitter: float = 0.1  # the delay is multiplied by a uniform factor in [1-j, 1+j]


@dataclass(frozen=True)
class RateLimit:
    per_second: float
    burst: int


@dataclass(frozen=True)
class QueuePolicy:
    name: str
    namespace: str = ""
    max_attempts: int = 3
    backoff: Backoff = Backoff()
    timeout_s: float = 600.0
    paused: bool = False
    concurrency_limit: int | None = None  # None: unlimited
    rate_limit: RateLimit | None = None  # None: unlimited
    retention_succeeded_s: int = 86400
    retention_failed_s: int = 604800  # dead-lettered and cancelled jobs
    allowed_kinds: frozenset[JobKind] = frozenset(JobKind)
    payload_limit_bytes: int = 262144
    closed: bool = False  # being deleted: dispatch goes on, submits are refused


# Jobs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewJob:
    """A job as a caller submits it; None means the queue's policy decides.

    ``payload`` for COMMAND: ``{"argv": [str, ...], "env": {str: str},
    "working_directory": str}`` (argv non-empty, the rest optional); for PYTHON:
    ``{"handler": "module:function", "arguments": <any JSON value>}``.
    """

    queue: str
    kind: JobKind
    payload: Mapping[str, Any]
    priority: int = 0
    max_attempts: int | None = None
    timeout_s: float | None = None
    idempotency_key: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    run_after: datetime | None = None  # None: now


@dataclass(frozen=True)
class Job:
    id: str
    queue: str
    kind: JobKind
    payload: dict[str, Any]
    priority: int
    state: JobState
    attempt: int  # 0 before the first claim; the first run is attempt 1
    max_attempts: int
    timeout_s: float
    idempotency_key: str | None
    labels: dict[str, str]
    run_after: datetime
    created_at: datetime
    updated_at: datetime
    assigned_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    worker_id: str | None
    lease_expires_at: datetime | None
    last_error: str | None
    output: str | None
    output_truncated: bool
    exit_code: int | None


@dataclass(frozen=True)
class Submitted:
    job: Job
    created: bool  # False: an idempotency key matched an existing job


@dataclass(frozen=True)
class Claimed:
    """A claimed job as dispatch needs it: what its assignment carries, nothing more.

    A Python job has ``handler`` and ``arguments_json`` (its arguments as JSON text); a
    command job has ``command``, its payload (argv, env, working_directory).
    """

    id: str
    queue: str
    attempt: int
    worker_id: str
    kind: JobKind
    timeout_s: float
    assigned_at: datetime
    run_after: datetime
    labels: Mapping[str, str]
    handler: str | None = None
    arguments_json: str | None = None
    command: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class DirectSlots:
    """Free worker slots that new jobs may take at once, skipping the pending state.

    ``workers`` holds, per queue, one worker id per slot offered. A submit assigns a new
    job to the next offered slot of its queue when nothing could make it wait: the queue
    is not paused and has neither a concurrency nor a rate limit, and the job is due now.
    Such a job is inserted as that worker's first attempt, with a lease of ``lease_s``;
    the others are inserted pending, as usual.
    """

    workers: Mapping[str, Sequence[str]]
    lease_s: float


@dataclass(frozen=True)
class AttemptRef:
    job_id: str
    attempt: int
    # When the worker began the attempt, by its clock; see ``lifecycle.recorded_start``.
    started_at: datetime | None = None


@dataclass(frozen=True)
class AttemptResult:
    job_id: str
    attempt: int
    outcome: Outcome
    output: str = ""
    output_truncated: bool = False
    error: str = ""
    exit_code: int | None = None
    run_time_s: float | None = None
    # When the worker began the attempt, by its clock; see ``lifecycle.recorded_start``.
    started_at: datetime | None = None


@dataclass(frozen=True)
class ReportOutcome:
    """The store's answer to one Started or result report. A refusal is not an error."""

    job_id: str
    attempt: int
    accepted: bool
    reason: str = ""
    state: JobState | None = None  # the job's state after the report; None: unknown job


@dataclass(frozen=True)
class JobEvent:
    id: int
    job_id: str
    queue: str
    kind: EventKind
    attempt: int
    occurred_at: datetime
    data: dict[str, Any]


@dataclass(frozen=True)
class Cancelled:
    job: Job
    worker_id: str | None  # the worker to tell, if the job was assigned or running


@dataclass(frozen=True)
class LostAttempt:
    """An attempt the store took back from its worker (lease expired, timed out, released)."""

    job: Job  # the job after recovery: pending, failed or dead-lettered
    worker_id: str
    timed_out: bool


# Workers and statistics ---------------------------------------------------------------


@dataclass(frozen=True)
class WorkerInfo:
    id: str
    queue: str
    pool: str = ""
    hostname: str = ""
    concurrency: int = 1
    handlers: tuple[str, ...] = ()
    operator_id: str = ""


@dataclass(frozen=True)
class WorkerRecord:
    info: WorkerInfo
    state: str  # one of WORKER_STATES
    registered_at: datetime
    last_seen_at: datetime


@dataclass(frozen=True)
class WorkerCounts:
    """Workers of one queue and pool heard from lately, and how many of them run a job."""

    queue: str
    pool: str
    connected: int
    busy: int


@dataclass(frozen=True)
class QueueStats:
    queue: str
    # Every state present, zero included; the terminal ones only when they were counted
    # (see JobStore.queue_stats).
    counts: dict[JobState, int]
    oldest_pending_age_s: float | None  # how long the oldest due pending job has waited
    run_time_mean_s: float | None  # over the attempts that succeeded in the window
    run_time_p95_s: float | None
    error_rate: float | None  # failed attempts / finished attempts in the window
    window_s: float
