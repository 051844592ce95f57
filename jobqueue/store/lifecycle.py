"""The job state machine, backoff and input validation: pure functions, no database.

Every change of a job's state that depends on more than the row itself (a report, a
cancel, a retry, a lost attempt) is decided here, on ``Job`` values: the store locks the
rows, asks a function below what the job becomes and which events to record, and writes
the answer with set-based statements. Keeping the rules in one place means they can be
read in one sitting and tested without a server.

Two transitions are done in SQL alone, for speed, and only listed here: a claim
(pending → assigned, in one ``UPDATE ... FOR UPDATE SKIP LOCKED`` statement) and the
promotion of a due retry (failed → pending). Two more have a copy in SQL for the hot path:
a batch of Started reports, and a batch of successful results, are recorded by one
statement each (``START_ATTEMPTS``, ``FINISH_SUCCEEDED``) that applies ``stale_reason``'s
conditions and does what ``start`` and ``finish`` do below; a test runs both paths and
compares what they write.

The states, and what moves a job between them::

    pending ──claim──> assigned ──started──> running
       ^                  │                     │
       │                  ├─────────────────────┤ result / lease expiry / timeout
       │                  v                     v
       │      succeeded | failed (retry at run_after) | dead_lettered | pending (lost)
       └── promote ── failed
    cancel: pending, assigned, running, failed ──> cancelled
    manual retry: failed, dead_lettered, cancelled ──> pending

A report names an attempt (job id and attempt number). It is accepted only if the job is
in the state the report expects, on that attempt, and assigned to the reporting worker;
anything else is stale (a duplicate, a result after a cancel or a lease expiry) and is
refused with a reason, leaving the job as it was.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from jobqueue.errors import (
    ConflictError,
    InvalidInputError,
    LimitExceededError,
    NotFoundError,
)
from jobqueue.store.model import (
    IN_FLIGHT_STATES,
    TERMINAL_STATES,
    AttemptResult,
    Backoff,
    EventKind,
    Job,
    JobKind,
    JobState,
    NewJob,
    Outcome,
    QueuePolicy,
    ReportOutcome,
    StoreLimits,
)

# Transitions ----------------------------------------------------------------------------

ALLOWED_TRANSITIONS: Mapping[JobState, frozenset[JobState]] = {
    # claim (SQL), cancel
    JobState.PENDING: frozenset({JobState.ASSIGNED, JobState.CANCELLED}),
    # started; a result without Started; lost attempt (pending or dead-lettered); cancel
    JobState.ASSIGNED: frozenset(
        {
            JobState.RUNNING,
            JobState.SUCCEEDED,
            JobState.FAILED,
            JobState.DEAD_LETTERED,
            JobState.PENDING,
            JobState.CANCELLED,
        }
    ),
    JobState.RUNNING: frozenset(
        {
            JobState.SUCCEEDED,
            JobState.FAILED,
            JobState.DEAD_LETTERED,
            JobState.PENDING,
            JobState.CANCELLED,
        }
    ),
    # promotion when due (SQL) or manual retry; cancel
    JobState.FAILED: frozenset({JobState.PENDING, JobState.CANCELLED}),
    JobState.SUCCEEDED: frozenset(),
    # manual retry only
    JobState.DEAD_LETTERED: frozenset({JobState.PENDING}),
    JobState.CANCELLED: frozenset({JobState.PENDING}),
}


def can_transition(from_state: JobState, to_state: JobState) -> bool:
    return to_state in ALLOWED_TRANSITIONS[from_state]


def check_transition(job: Job, to_state: JobState) -> None:
    """Refuse a change the state machine does not allow, with ConflictError."""
    if not can_transition(job.state, to_state):
        raise ConflictError(f"job {job.id} is {job.state}; it cannot become {to_state}")


@dataclass(frozen=True)
class PlannedEvent:
    kind: EventKind
    attempt: int
    data: Mapping[str, Any]
    occurred_at: datetime | None = None  # None: when the change is made (its updated_at)


@dataclass(frozen=True)
class Change:
    """What a job becomes, and the events to record for it, oldest first."""

    job: Job
    events: tuple[PlannedEvent, ...]


def _moved(job: Job, to_state: JobState, now: datetime, **fields: Any) -> Job:
    check_transition(job, to_state)
    return dataclasses.replace(job, state=to_state, updated_at=now, **fields)


# Backoff ------------------------------------------------------------------------------


def backoff_delay_s(backoff: Backoff, attempt: int, random: Callable[[], float]) -> float:
    """Seconds to wait before retrying after failed attempt number ``attempt`` (1-based).

    ``random`` returns a float in [0, 1); it scales the delay by a factor in
    [1 - jitter, 1 + jitter] so that jobs failing together do not retry together.
    """
    exponent = max(0, attempt - 1)
    try:
        base_s = backoff.initial_s * backoff.multiplier**exponent
    except OverflowError:
        base_s = math.inf
    delay_s = min(backoff.max_s, base_s)
    factor = 1.0 - backoff.jitter + 2.0 * backoff.jitter * random()
    return max(0.0, delay_s * factor)


# Text limits ----------------------------------------------------------------------------


def truncate_utf8(text: str, limit_bytes: int) -> tuple[str, bool]:
    """``text`` cut to at most ``limit_bytes`` of UTF-8, on a character boundary.

    NUL characters, which PostgreSQL text cannot hold, become U+FFFD.
    """
    text = text.replace("\0", "\ufffd")
    encoded = text.encode("utf-8", errors="replace")
    if len(encoded) <= limit_bytes:
        return text, False
    return encoded[:limit_bytes].decode("utf-8", errors="ignore"), True


# Reports --------------------------------------------------------------------------------


def stale_reason(
    job: Job | None, attempt: int, worker_id: str, expected: frozenset[JobState]
) -> str | None:
    """Why a report about ``attempt`` from ``worker_id`` must be refused; None: accept it."""
    if job is None:
        return "unknown job"
    if job.attempt != attempt:
        return f"attempt {attempt} is not the job's current attempt {job.attempt}"
    if job.state not in expected:
        wanted = " or ".join(sorted(expected))
        return f"job is {job.state}, not {wanted}"
    if job.worker_id != worker_id:
        return f"attempt {attempt} belongs to worker {job.worker_id}, not {worker_id}"
    return None


def refusal(
    job: Job | None, job_id: str, attempt: int, worker_id: str, expected: frozenset[JobState]
) -> ReportOutcome:
    """The answer to a report that was refused, saying why from the job's current row."""
    # A report refused a moment ago cannot have become valid (attempt numbers only grow),
    # but the row may still have moved on since; say so rather than nothing.
    reason = stale_reason(job, attempt, worker_id, expected) or "the job changed meanwhile"
    return _refused(job_id, attempt, job, reason)


def _refused(job_id: str, attempt: int, job: Job | None, reason: str) -> ReportOutcome:
    return ReportOutcome(
        job_id, attempt, accepted=False, reason=reason, state=job.state if job else None
    )


def recorded_start(job: Job, reported: datetime | None, now: datetime) -> datetime:
    """The start to record for the job's attempt: the worker's own, kept in bounds.

    A worker stamps when it began an attempt by its clock, which may differ from the
    operator's. The stamp is kept between the attempt's assignment and ``now``, the
    report's arrival: a start can be neither before the job was handed out nor after it
    was heard of. Without a stamp (an older worker), the arrival is the start.
    ``queries.START_ATTEMPTS`` and ``FINISH_SUCCEEDED`` say the same in SQL.
    """
    if reported is None:
        return now
    if job.assigned_at is not None and reported < job.assigned_at:
        return job.assigned_at
    return min(reported, now)


def start(
    job: Job, worker_id: str, lease_s: float, now: datetime, started_at: datetime | None = None
) -> Change:
    """The worker said it started the attempt (at ``started_at``, by its clock): running,
    with a fresh lease."""
    began = recorded_start(job, started_at, now)
    started = _moved(
        job,
        JobState.RUNNING,
        now,
        started_at=began,
        lease_expires_at=now + timedelta(seconds=lease_s),
    )
    event = PlannedEvent(EventKind.STARTED, job.attempt, {"worker_id": worker_id}, began)
    return Change(started, (event,))


def judge_started(
    job: Job | None,
    job_id: str,
    attempt: int,
    *,
    worker_id: str,
    lease_s: float,
    now: datetime,
    started_at: datetime | None = None,
) -> tuple[ReportOutcome, Change | None]:
    """Accept or refuse a Started report; only an assigned attempt can start."""
    reason = stale_reason(job, attempt, worker_id, frozenset({JobState.ASSIGNED}))
    if reason is not None or job is None:
        return _refused(job_id, attempt, job, reason or "unknown job"), None
    change = start(job, worker_id, lease_s, now, started_at)
    return ReportOutcome(job_id, attempt, accepted=True, state=change.job.state), change


def judge_result(
    job: Job | None,
    result: AttemptResult,
    worker_id: str,
    *,
    backoff: Backoff,
    limits: StoreLimits,
    now: datetime,
    random: Callable[[], float],
) -> tuple[ReportOutcome, Change | None]:
    """Accept or refuse an attempt's result; accepted, it decides the job's next state.

    A result for an assigned job (the Started report was skipped or is late) is accepted;
    the started event is recorded first.
    """
    reason = stale_reason(job, result.attempt, worker_id, IN_FLIGHT_STATES)
    if reason is not None or job is None:
        return _refused(result.job_id, result.attempt, job, reason or "unknown job"), None

    events: tuple[PlannedEvent, ...] = ()
    if job.state is JobState.ASSIGNED:
        started = start(job, worker_id, 0.0, now, result.started_at)
        job, events = started.job, started.events

    change = finish(job, result, backoff=backoff, limits=limits, now=now, random=random)
    accepted = ReportOutcome(result.job_id, result.attempt, accepted=True, state=change.job.state)
    return accepted, Change(change.job, events + change.events)


def finish(
    job: Job,
    result: AttemptResult,
    *,
    backoff: Backoff,
    limits: StoreLimits,
    now: datetime,
    random: Callable[[], float],
) -> Change:
    """The running attempt ended as ``result`` says."""
    output, cut = truncate_utf8(result.output, limits.output_bytes)
    worker_id = job.worker_id or ""
    run_time_s = result.run_time_s
    if run_time_s is None and job.started_at is not None:
        run_time_s = (now - job.started_at).total_seconds()

    if result.outcome is Outcome.SUCCEEDED:
        succeeded = _moved(
            job,
            JobState.SUCCEEDED,
            now,
            finished_at=now,
            lease_expires_at=None,
            output=output,
            output_truncated=cut or result.output_truncated,
            exit_code=result.exit_code,
        )
        data = {"worker_id": worker_id, "exit_code": result.exit_code, "run_time_s": run_time_s}
        return Change(succeeded, (PlannedEvent(EventKind.SUCCEEDED, job.attempt, data),))

    if result.outcome is Outcome.CANCELLED:
        # The store did not cancel this job (a cancelled one refuses reports), so the
        # worker stopped it on its own, draining or shutting down: the job goes back.
        error = f"worker {worker_id} stopped the attempt" + (
            f": {result.error}" if result.error else ""
        )
        lost = lose(job, error, now, limits=limits, lease_expired=False)
        return _with_output(lost, output, cut or result.output_truncated, result.exit_code)

    timed_out = result.outcome is Outcome.TIMED_OUT
    error = result.error or (
        f"timed out after {job.timeout_s:g} s"
        if timed_out
        else f"failed with exit code {result.exit_code}"
    )
    delay_s = backoff_delay_s(backoff, job.attempt, random)
    failed = fail(
        job,
        error=error,
        now=now,
        limits=limits,
        retry_delay_s=delay_s,
        timed_out=timed_out,
        exit_code=result.exit_code,
    )
    return _with_output(failed, output, cut or result.output_truncated, result.exit_code)


def _with_output(change: Change, output: str, truncated: bool, exit_code: int | None) -> Change:
    """Keep a failed attempt's output: it is often what explains the failure."""
    job = dataclasses.replace(
        change.job, output=output, output_truncated=truncated, exit_code=exit_code
    )
    return Change(job, change.events)


def fail(
    job: Job,
    *,
    error: str,
    now: datetime,
    limits: StoreLimits,
    retry_delay_s: float,
    timed_out: bool = False,
    lease_expired: bool = False,
    exit_code: int | None = None,
) -> Change:
    """The current attempt failed: retry after ``retry_delay_s``, or dead-letter when spent.

    A zero delay puts the job straight back to pending (a lost attempt is not the job's
    fault, so it waits for no backoff); otherwise it waits in failed until promoted.
    """
    error, _ = truncate_utf8(error, limits.error_bytes)
    worker_id = job.worker_id
    failed_data: dict[str, Any] = {
        "worker_id": worker_id,
        "error": error,
        "exit_code": exit_code,
        "retry_at": None,
        "timed_out": timed_out,
        "lease_expired": lease_expired,
    }
    common: dict[str, Any] = {"lease_expires_at": None, "last_error": error}

    if job.attempt >= job.max_attempts:
        dead = _moved(job, JobState.DEAD_LETTERED, now, finished_at=now, **common)
        events = (
            PlannedEvent(EventKind.FAILED, job.attempt, failed_data),
            PlannedEvent(EventKind.DEAD_LETTERED, job.attempt, {"error": error}),
        )
        return Change(dead, events)

    retry_at = now + timedelta(seconds=retry_delay_s)
    next_state = JobState.PENDING if retry_delay_s <= 0 else JobState.FAILED
    retrying = _moved(job, next_state, now, run_after=retry_at, **common)
    failed_data["retry_at"] = retry_at.isoformat()
    return Change(retrying, (PlannedEvent(EventKind.FAILED, job.attempt, failed_data),))


def lose(
    job: Job, error: str, now: datetime, *, limits: StoreLimits, lease_expired: bool = True
) -> Change:
    """The attempt was lost (its worker vanished or let go): a new attempt at once."""
    return fail(
        job, error=error, now=now, limits=limits, retry_delay_s=0.0, lease_expired=lease_expired
    )


def lease_expired_error(worker_id: str | None) -> str:
    return f"lease expired: worker {worker_id} stopped answering"


def released_error(worker_id: str | None) -> str:
    return f"worker {worker_id} was released (deregistered or declared dead)"


def unheld_error(worker_id: str | None) -> str:
    return f"worker {worker_id} registered again without this attempt (it had restarted)"


def time_out(
    job: Job,
    *,
    now: datetime,
    limits: StoreLimits,
    backoff: Backoff,
    random: Callable[[], float],
) -> Change:
    """A running attempt went past its timeout without a result: a failed attempt."""
    return fail(
        job,
        error=f"timed out after {job.timeout_s:g} s (no result from worker {job.worker_id})",
        now=now,
        limits=limits,
        retry_delay_s=backoff_delay_s(backoff, job.attempt, random),
        timed_out=True,
    )


# Commands from people -------------------------------------------------------------------


def cancel(job: Job, reason: str, now: datetime) -> Change:
    """Cancel an unfinished job at once; ConflictError for a finished one."""
    if job.state in TERMINAL_STATES:
        raise ConflictError(f"job {job.id} is {job.state}; only an unfinished job can be cancelled")
    worker_id = job.worker_id if job.state in IN_FLIGHT_STATES else None
    cancelled = _moved(job, JobState.CANCELLED, now, finished_at=now, lease_expires_at=None)
    data = {"reason": reason, "worker_id": worker_id}
    return Change(cancelled, (PlannedEvent(EventKind.CANCELLED, job.attempt, data),))


def retry(job: Job, now: datetime) -> Change:
    """Run a job again now, by hand.

    A failed job skips the rest of its backoff. A dead-lettered or cancelled job gets one
    more run (``max_attempts = attempt + 1``). The event is a second ``submitted``, marked
    ``manual_retry``, so the history shows why the job ran again.
    """
    if job.state is JobState.FAILED:
        extra: dict[str, Any] = {}
    elif job.state in (JobState.DEAD_LETTERED, JobState.CANCELLED):
        extra = {"max_attempts": job.attempt + 1, "finished_at": None}
    else:
        raise ConflictError(
            f"job {job.id} is {job.state}; only a failed, dead-lettered or cancelled job"
            " can be retried"
        )
    retried = _moved(job, JobState.PENDING, now, run_after=now, **extra)
    data = {"manual_retry": True, "previous_state": str(job.state)}
    return Change(retried, (PlannedEvent(EventKind.SUBMITTED, job.attempt, data),))


# Validation ------------------------------------------------------------------------------

_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
_HANDLER = re.compile(rf"{_IDENTIFIER}(?:\.{_IDENTIFIER})*:{_IDENTIFIER}(?:\.{_IDENTIFIER})*")
_COMMAND_KEYS = frozenset({"argv", "env", "working_directory"})
_PYTHON_KEYS = frozenset({"handler", "arguments"})


@dataclass(frozen=True)
class PreparedJob:
    """A NewJob checked against its queue, with every default resolved, ready to insert."""

    queue: str
    kind: JobKind
    payload: dict[str, Any]  # normalised: every key present
    payload_json: str
    priority: int
    max_attempts: int
    timeout_s: float
    idempotency_key: str | None
    labels: dict[str, str]
    run_after: datetime


def parse_arguments_json(text: str) -> Any:
    """A Python job's arguments from JSON text; InvalidInputError if it is not JSON."""
    try:
        return _ARGUMENTS_DECODER.decode(text)
    except ValueError as error:
        raise InvalidInputError(f"arguments: not valid JSON: {error}") from error


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


# One decoder and one encoder for every job: json.loads and json.dumps given any option
# build a new one per call, which cost more than the small documents they then handle.
_ARGUMENTS_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)
_PAYLOAD_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


# A NUL character in JSON that json.dumps wrote (ASCII only): the escape \u0000 after an
# even number of backslashes, that is, not itself an escaped backslash followed by
# "u0000". One search of the encoded text instead of a walk of the decoded payload.
_JSON_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def _contains_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\0" in value
    if isinstance(value, Mapping):
        return any(_contains_nul(k) or _contains_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_contains_nul(item) for item in value)
    return False


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _string_map(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise InvalidInputError(f"{where}: must map strings to strings")
    return dict(value)


def _command_payload(payload: Mapping[str, Any], where: str) -> dict[str, Any]:
    argv = payload.get("argv")
    if (
        not isinstance(argv, list | tuple)
        or not argv
        or not all(isinstance(arg, str) for arg in argv)
    ):
        raise InvalidInputError(f"{where}.argv: must be a non-empty list of strings")
    if not argv[0]:
        raise InvalidInputError(f"{where}.argv: the program (argv[0]) is empty")
    env = _string_map(payload.get("env", {}), f"{where}.env")
    working_directory = payload.get("working_directory", "")
    if not isinstance(working_directory, str):
        raise InvalidInputError(f"{where}.working_directory: must be a string")
    return {"argv": list(argv), "env": env, "working_directory": working_directory}


def _python_payload(payload: Mapping[str, Any], where: str) -> dict[str, Any]:
    handler = payload.get("handler")
    if not isinstance(handler, str) or not _HANDLER.fullmatch(handler):
        raise InvalidInputError(
            f"{where}.handler: must be 'module:function' (dotted Python names), got {handler!r}"
        )
    return {"handler": handler, "arguments": payload.get("arguments", {})}


def _payload(job: NewJob, kind: JobKind, where: str) -> dict[str, Any]:
    if not isinstance(job.payload, Mapping):
        raise InvalidInputError(f"{where}: must be an object")
    allowed = _COMMAND_KEYS if kind is JobKind.COMMAND else _PYTHON_KEYS
    unknown = sorted(str(key) for key in job.payload if key not in allowed)
    if unknown:
        raise InvalidInputError(
            f"{where}: unknown field(s) {', '.join(unknown)} for a {kind} job"
            f" (allowed: {', '.join(sorted(allowed))})"
        )
    if kind is JobKind.COMMAND:
        return _command_payload(job.payload, where)
    return _python_payload(job.payload, where)


def _labels(labels: Mapping[str, str], limits: StoreLimits, where: str) -> dict[str, str]:
    checked = _string_map(labels, where)
    if len(checked) > limits.labels:
        raise LimitExceededError(f"{where}: {len(checked)} labels, at most {limits.labels}")
    for key, value in checked.items():
        if not key or len(key) > limits.label_key_chars:
            raise InvalidInputError(
                f"{where}: key {key[:80]!r} must have 1 to {limits.label_key_chars} characters"
            )
        if len(value) > limits.label_value_chars:
            raise InvalidInputError(
                f"{where}.{key}: value longer than {limits.label_value_chars} characters"
            )
    return checked


def validate_new_job(
    job: NewJob, policy: QueuePolicy, limits: StoreLimits, now: datetime, *, where: str = ""
) -> PreparedJob:
    """Check ``job`` against its queue's policy and the store's limits.

    Raises InvalidInputError (LimitExceededError for sizes) naming the field, prefixed by
    ``where`` (``jobs[3].`` in a batch).
    """
    try:
        kind = JobKind(job.kind)
    except ValueError as error:
        raise InvalidInputError(f"{where}kind: unknown job kind {job.kind!r}") from error
    if kind not in policy.allowed_kinds:
        allowed = ", ".join(sorted(policy.allowed_kinds))
        raise InvalidInputError(
            f"{where}kind: queue {policy.name} does not allow {kind} jobs (allowed: {allowed})"
        )

    payload = _payload(job, kind, f"{where}payload")
    try:
        payload_json = _PAYLOAD_ENCODER.encode(payload)
    except (TypeError, ValueError) as error:
        raise InvalidInputError(f"{where}payload: not representable as JSON: {error}") from error
    if _JSON_NUL.search(payload_json):
        raise InvalidInputError(f"{where}payload: NUL characters are not allowed")
    payload_limit = policy.payload_limit_bytes or limits.payload_bytes
    size = len(payload_json.encode("utf-8"))
    if size > payload_limit:
        raise LimitExceededError(
            f"{where}payload: {size} bytes is over the limit of {payload_limit} bytes"
            f" (payload_limit_bytes of queue {policy.name})"
        )

    if not _is_int(job.priority) or not limits.priority_min <= job.priority <= limits.priority_max:
        raise InvalidInputError(
            f"{where}priority: must be an integer from {limits.priority_min}"
            f" to {limits.priority_max}, got {job.priority!r}"
        )

    max_attempts = policy.max_attempts if job.max_attempts is None else job.max_attempts
    if not _is_int(max_attempts) or not 1 <= max_attempts <= limits.max_attempts:
        raise InvalidInputError(
            f"{where}max_attempts: must be from 1 to {limits.max_attempts}, got {max_attempts!r}"
        )

    timeout_s = policy.timeout_s if job.timeout_s is None else job.timeout_s
    if (
        not isinstance(timeout_s, int | float)
        or isinstance(timeout_s, bool)
        or not 0 < timeout_s <= limits.timeout_max_s
    ):
        raise InvalidInputError(
            f"{where}timeout_s: must be over 0 and at most {limits.timeout_max_s:g} s,"
            f" got {timeout_s!r}"
        )

    key = job.idempotency_key or None  # an empty key (proto's default) means none
    if key is not None and (not isinstance(key, str) or len(key) > limits.idempotency_key_chars):
        raise InvalidInputError(
            f"{where}idempotency_key: must be a string of at most"
            f" {limits.idempotency_key_chars} characters"
        )
    if key is not None and "\0" in key:
        raise InvalidInputError(f"{where}idempotency_key: NUL characters are not allowed")

    labels = _labels(job.labels, limits, f"{where}labels")
    if _contains_nul(labels):
        raise InvalidInputError(f"{where}labels: NUL characters are not allowed")

    run_after = now if job.run_after is None else job.run_after
    if not isinstance(run_after, datetime) or run_after.tzinfo is None:
        raise InvalidInputError(f"{where}run_after: must be a tz-aware datetime")

    return PreparedJob(
        queue=policy.name,
        kind=kind,
        payload=payload,
        payload_json=payload_json,
        priority=job.priority,
        max_attempts=max_attempts,
        timeout_s=float(timeout_s),
        idempotency_key=key,
        labels=labels,
        run_after=run_after,
    )


def validate_batch(
    jobs: Sequence[NewJob],
    policies: Mapping[str, QueuePolicy],
    limits: StoreLimits,
    now: datetime,
) -> list[PreparedJob]:
    """Validate every job of a batch, or raise for the first bad one (nothing is written).

    ``policies`` holds the queues that exist; a job naming another raises NotFoundError.
    """
    if len(jobs) > limits.batch_jobs:
        raise LimitExceededError(
            f"jobs: {len(jobs)} jobs in one batch, at most {limits.batch_jobs}"
        )
    prepared = []
    for index, job in enumerate(jobs):
        where = f"jobs[{index}]." if len(jobs) > 1 else ""
        policy = policies.get(job.queue)
        if policy is None:
            raise NotFoundError(f"{where}queue: unknown queue {job.queue!r}")
        if policy.closed:
            raise ConflictError(
                f"{where}queue: queue {job.queue!r} is being deleted and accepts no new jobs"
            )
        prepared.append(validate_new_job(job, policy, limits, now, where=where))
    return prepared


def validate_queue_policy(policy: QueuePolicy, limits: StoreLimits) -> None:
    """Refuse a queue policy the store could not enforce, naming the field."""
    problems = []
    if not policy.name or len(policy.name) > 253:
        problems.append("name: must have 1 to 253 characters")
    if not 1 <= policy.max_attempts <= limits.max_attempts:
        problems.append(f"max_attempts: must be from 1 to {limits.max_attempts}")
    backoff = policy.backoff
    if not backoff.initial_s >= 0 or not backoff.max_s >= 0:
        problems.append("backoff: initial_s and max_s must not be negative")
    if not backoff.multiplier >= 1:
        problems.append("backoff.multiplier: must be at least 1")
    if not 0 <= backoff.jitter <= 1:
        problems.append("backoff.jitter: must be from 0 to 1")
    if not 0 < policy.timeout_s <= limits.timeout_max_s:
        problems.append(f"timeout_s: must be over 0 and at most {limits.timeout_max_s:g}")
    if policy.concurrency_limit is not None and policy.concurrency_limit < 1:
        problems.append("concurrency_limit: must be at least 1 (or unset)")
    rate = policy.rate_limit
    if rate is not None and (not rate.per_second > 0 or rate.burst < 1):
        problems.append("rate_limit: per_second must be over 0 and burst at least 1")
    if policy.retention_succeeded_s < 0 or policy.retention_failed_s < 0:
        problems.append("retention: must not be negative")
    if not policy.allowed_kinds:
        problems.append("allowed_kinds: at least one kind is needed")
    if policy.payload_limit_bytes < 1:
        problems.append("payload_limit_bytes: must be at least 1")
    if problems:
        raise InvalidInputError(f"queue {policy.name!r}: " + "; ".join(problems))
