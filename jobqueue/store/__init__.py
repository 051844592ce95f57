"""The job store: jobs, queues, workers and job events in PostgreSQL.

``model`` holds the values, ``lifecycle`` the state machine and validation (pure),
``queries`` the SQL, ``store`` the ``JobStore`` that runs it, and ``migrations`` the
runner that applies ``schema/``. Everything a caller needs is re-exported here.
"""

from __future__ import annotations

from jobqueue.store.lifecycle import (
    ALLOWED_TRANSITIONS,
    backoff_delay_s,
    can_transition,
    parse_arguments_json,
)
from jobqueue.store.migrations import MigrationError, apply_migrations
from jobqueue.store.model import (
    IN_FLIGHT_STATES,
    TERMINAL_STATES,
    UNFINISHED_STATES,
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
    ManualClock,
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
)
from jobqueue.store.store import JobStore

__all__ = [
    "ALLOWED_TRANSITIONS",
    "IN_FLIGHT_STATES",
    "TERMINAL_STATES",
    "UNFINISHED_STATES",
    "WORKER_STATES",
    "AttemptRef",
    "AttemptResult",
    "Backoff",
    "Cancelled",
    "Claimed",
    "Clock",
    "DirectSlots",
    "EventKind",
    "Job",
    "JobEvent",
    "JobKind",
    "JobState",
    "JobStore",
    "LostAttempt",
    "ManualClock",
    "MigrationError",
    "NewJob",
    "Outcome",
    "QueuePolicy",
    "QueueStats",
    "RateLimit",
    "ReportOutcome",
    "StoreLimits",
    "Submitted",
    "SystemClock",
    "WorkerCounts",
    "WorkerInfo",
    "WorkerRecord",
    "apply_migrations",
    "backoff_delay_s",
    "can_transition",
    "parse_arguments_json",
]
