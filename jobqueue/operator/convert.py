"""Translation between the public gRPC messages and the store's values.

The .proto files are the public contract and the store's dataclasses are the internal
model; this module is the only place that knows both, so either can change without the
other noticing. Request validation that needs no database (a job with neither a command
nor a handler, a malformed ``arguments_json``) happens here and raises
``InvalidInputError``; everything that needs the queue's policy is the store's job.
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Mapping
from typing import Any

from google.protobuf import duration_pb2, timestamp_pb2

from jobqueue.api.v1 import admin_pb2, jobs_pb2, workers_pb2
from jobqueue.errors import InvalidInputError
from jobqueue.store import (
    AttemptRef,
    AttemptResult,
    Claimed,
    EventKind,
    Job,
    JobEvent,
    JobKind,
    JobState,
    NewJob,
    Outcome,
    QueuePolicy,
    QueueStats,
    WorkerRecord,
    parse_arguments_json,
)

STATE_TO_PROTO: Mapping[JobState, jobs_pb2.JobState.ValueType] = {
    JobState.PENDING: jobs_pb2.JOB_STATE_PENDING,
    JobState.ASSIGNED: jobs_pb2.JOB_STATE_ASSIGNED,
    JobState.RUNNING: jobs_pb2.JOB_STATE_RUNNING,
    JobState.SUCCEEDED: jobs_pb2.JOB_STATE_SUCCEEDED,
    JobState.FAILED: jobs_pb2.JOB_STATE_FAILED,
    JobState.DEAD_LETTERED: jobs_pb2.JOB_STATE_DEAD_LETTERED,
    JobState.CANCELLED: jobs_pb2.JOB_STATE_CANCELLED,
}
STATE_FROM_PROTO = {value: key for key, value in STATE_TO_PROTO.items()}

EVENT_KIND_TO_PROTO: Mapping[EventKind, jobs_pb2.JobEventKind.ValueType] = {
    EventKind.SUBMITTED: jobs_pb2.JOB_EVENT_KIND_SUBMITTED,
    EventKind.STARTED: jobs_pb2.JOB_EVENT_KIND_STARTED,
    EventKind.SUCCEEDED: jobs_pb2.JOB_EVENT_KIND_SUCCEEDED,
    EventKind.FAILED: jobs_pb2.JOB_EVENT_KIND_FAILED,
    EventKind.DEAD_LETTERED: jobs_pb2.JOB_EVENT_KIND_DEAD_LETTERED,
    EventKind.CANCELLED: jobs_pb2.JOB_EVENT_KIND_CANCELLED,
}

OUTCOME_FROM_PROTO: Mapping[workers_pb2.Outcome.ValueType, Outcome] = {
    workers_pb2.OUTCOME_SUCCEEDED: Outcome.SUCCEEDED,
    workers_pb2.OUTCOME_FAILED: Outcome.FAILED,
    workers_pb2.OUTCOME_TIMED_OUT: Outcome.TIMED_OUT,
    workers_pb2.OUTCOME_CANCELLED: Outcome.CANCELLED,
}

# The longest timeout a job may ask for; the store enforces it too.
_MAX_TIMEOUT_S = 7 * 24 * 3600


# Timestamps and durations are built from whole seconds and nanoseconds: what protobuf's
# FromDatetime and FromTimedelta compute, at a third of their cost (several per job).
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def timestamp(moment: datetime.datetime | None) -> timestamp_pb2.Timestamp | None:
    if moment is None:
        return None
    since = moment - _EPOCH  # exact: both are aware, the difference is in microseconds
    seconds = since.days * 86400 + since.seconds
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=since.microseconds * 1000)


def duration(seconds: float | None) -> duration_pb2.Duration | None:
    if seconds is None:
        return None
    if seconds < 0:
        message = duration_pb2.Duration()
        message.FromTimedelta(datetime.timedelta(seconds=seconds))
        return message
    # Rounded to the microsecond the way timedelta rounds: the fraction alone, half to even.
    fraction, whole = math.modf(seconds)
    carry, micros = divmod(round(fraction * 1_000_000), 1_000_000)
    return duration_pb2.Duration(seconds=int(whole) + carry, nanos=micros * 1000)


def seconds_of(message: duration_pb2.Duration) -> float:
    """A duration in seconds, from its fields: ToTimedelta costs ten times more (per result)."""
    return message.seconds + message.nanos / 1e9


# Jobs ----------------------------------------------------------------------------------


def new_job(spec: jobs_pb2.JobSpec) -> NewJob:
    """The store's ``NewJob`` for a submitted spec; refuses what is malformed on its face."""
    kind, payload = _payload(spec)
    timeout_s: float | None = None
    if spec.HasField("timeout"):
        timeout_s = seconds_of(spec.timeout)
        if not 0 < timeout_s <= _MAX_TIMEOUT_S:
            raise InvalidInputError(
                f"timeout: must be above 0 and at most 7 days, got {timeout_s}s"
            )
    run_after = spec.run_after.ToDatetime(datetime.UTC) if spec.HasField("run_after") else None
    return NewJob(
        queue=spec.queue,
        kind=kind,
        payload=payload,
        priority=spec.priority,
        max_attempts=spec.max_attempts or None,
        timeout_s=timeout_s,
        idempotency_key=spec.idempotency_key or None,
        labels=dict(spec.labels),
        run_after=run_after,
    )


def _payload(spec: jobs_pb2.JobSpec) -> tuple[JobKind, dict[str, Any]]:
    if not spec.queue:
        raise InvalidInputError("queue: must be set")
    which = spec.WhichOneof("kind")
    if which == "command":
        command = spec.command
        return JobKind.COMMAND, {
            "argv": list(command.argv),
            "env": dict(command.env),
            "working_directory": command.working_directory,
        }
    if which == "python":
        arguments = (
            parse_arguments_json(spec.python.arguments_json) if spec.python.arguments_json else {}
        )
        return JobKind.PYTHON, {"handler": spec.python.handler, "arguments": arguments}
    raise InvalidInputError("a job needs either `command` or `python`; neither was given")


def job_to_proto(job: Job) -> jobs_pb2.Job:
    message = jobs_pb2.Job(
        id=job.id,
        spec=_spec_to_proto(job),
        state=STATE_TO_PROTO[job.state],
        attempt=job.attempt,
        max_attempts=job.max_attempts,
        timeout=duration(job.timeout_s),
        created_at=timestamp(job.created_at),
        updated_at=timestamp(job.updated_at),
        started_at=timestamp(job.started_at),
        finished_at=timestamp(job.finished_at),
        worker_id=job.worker_id or "",
        last_error=job.last_error or "",
        output=job.output or "",
        output_truncated=job.output_truncated,
        exit_code=job.exit_code or 0,
    )
    return message


def _spec_to_proto(job: Job) -> jobs_pb2.JobSpec:
    spec = jobs_pb2.JobSpec(
        queue=job.queue,
        priority=job.priority,
        max_attempts=job.max_attempts,
        timeout=duration(job.timeout_s),
        idempotency_key=job.idempotency_key or "",
        labels=job.labels,
        run_after=timestamp(job.run_after),
    )
    if job.kind is JobKind.COMMAND:
        spec.command.CopyFrom(_command(job.payload))
    else:
        spec.python.CopyFrom(_python(job.payload))
    return spec


def _command(payload: Mapping[str, Any]) -> jobs_pb2.CommandJob:
    return jobs_pb2.CommandJob(
        argv=payload.get("argv", []),
        env=payload.get("env", {}),
        working_directory=payload.get("working_directory", ""),
    )


def _python(payload: Mapping[str, Any]) -> jobs_pb2.PythonJob:
    return jobs_pb2.PythonJob(
        handler=payload.get("handler", ""),
        arguments_json=json.dumps(payload.get("arguments", {})),
    )


def event_to_proto(event: JobEvent) -> jobs_pb2.JobEvent:
    return jobs_pb2.JobEvent(
        id=event.id,
        job_id=event.job_id,
        queue=event.queue,
        kind=EVENT_KIND_TO_PROTO[event.kind],
        attempt=event.attempt,
        occurred_at=timestamp(event.occurred_at),
        data_json=json.dumps(event.data),
    )


def states_from_proto(states: Any) -> list[JobState]:
    """The store's states for a list filter; UNSPECIFIED is refused rather than ignored."""
    try:
        return [STATE_FROM_PROTO[state] for state in states]
    except KeyError as error:
        raise InvalidInputError(f"states: unknown job state {error.args[0]}") from error


# Workers -------------------------------------------------------------------------------


def assignment(job: Job) -> workers_pb2.Assignment:
    message = _assignment_of(job)
    if job.kind is JobKind.COMMAND:
        message.command.CopyFrom(_command(job.payload))
    else:
        message.python.CopyFrom(_python(job.payload))
    return message


def claimed_assignment(job: Claimed) -> workers_pb2.Assignment:
    """``assignment`` for a job as the claim gave it, its arguments already JSON text."""
    message = _assignment_of(job)
    if job.command is not None:
        message.command.CopyFrom(_command(job.command))
    else:
        message.python.handler = job.handler or ""
        message.python.arguments_json = job.arguments_json or "{}"
    return message


def _assignment_of(job: Job | Claimed) -> workers_pb2.Assignment:
    """An assignment's fields other than the job's command or handler."""
    return workers_pb2.Assignment(
        job_id=job.id,
        attempt=job.attempt,
        queue=job.queue,
        timeout=duration(job.timeout_s),
        assigned_at=timestamp(job.assigned_at),
        labels=job.labels,
    )


def attempt_refs(attempts: Any) -> list[AttemptRef]:
    return [AttemptRef(attempt.job_id, attempt.attempt) for attempt in attempts]


def attempt_result(result: workers_pb2.JobResult) -> AttemptResult:
    outcome = OUTCOME_FROM_PROTO.get(result.outcome)
    if outcome is None:
        raise InvalidInputError(f"results: job {result.job.job_id} has no outcome")
    return AttemptResult(
        job_id=result.job.job_id,
        attempt=result.job.attempt,
        outcome=outcome,
        output=result.output,
        output_truncated=result.output_truncated,
        error=result.error,
        exit_code=result.exit_code,
        run_time_s=seconds_of(result.run_time) if result.HasField("run_time") else None,
    )


_WORKER_STATES = {
    "active": admin_pb2.WORKER_STATE_ACTIVE,
    "draining": admin_pb2.WORKER_STATE_DRAINING,
    "gone": admin_pb2.WORKER_STATE_GONE,
}


def worker_to_proto(record: WorkerRecord, busy: int, version: str = "") -> admin_pb2.Worker:
    return admin_pb2.Worker(
        id=record.info.id,
        queue=record.info.queue,
        pool=record.info.pool,
        state=_WORKER_STATES.get(record.state, admin_pb2.WORKER_STATE_UNSPECIFIED),
        concurrency=record.info.concurrency,
        busy=busy,
        hostname=record.info.hostname,
        version=version,
        operator_id=record.info.operator_id,
        registered_at=timestamp(record.registered_at),
        last_heartbeat_at=timestamp(record.last_seen_at),
    )


# Queues --------------------------------------------------------------------------------


def queue_stats_to_proto(stats: QueueStats, connected_workers: int) -> admin_pb2.QueueStats:
    counts = stats.counts
    return admin_pb2.QueueStats(
        queue=stats.queue,
        pending=counts.get(JobState.PENDING, 0),
        assigned=counts.get(JobState.ASSIGNED, 0),
        running=counts.get(JobState.RUNNING, 0),
        succeeded=counts.get(JobState.SUCCEEDED, 0),
        failed=counts.get(JobState.FAILED, 0),
        dead_lettered=counts.get(JobState.DEAD_LETTERED, 0),
        cancelled=counts.get(JobState.CANCELLED, 0),
        oldest_pending_age=duration(stats.oldest_pending_age_s),
        mean_run_time=duration(stats.run_time_mean_s),
        p95_run_time=duration(stats.run_time_p95_s),
        error_rate=stats.error_rate or 0.0,
        window=duration(stats.window_s),
        connected_workers=connected_workers,
    )


def queue_to_proto(policy: QueuePolicy, stats: admin_pb2.QueueStats | None) -> admin_pb2.Queue:
    return admin_pb2.Queue(
        name=policy.name,
        namespace=policy.namespace,
        paused=policy.paused,
        max_attempts=policy.max_attempts,
        timeout=duration(policy.timeout_s),
        concurrency_limit=policy.concurrency_limit or 0,
        rate_limit_per_second=policy.rate_limit.per_second if policy.rate_limit else 0.0,
        stats=stats,
    )
