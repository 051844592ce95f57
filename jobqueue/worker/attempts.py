"""One job attempt on this worker: from the operator's ``Assignment`` to a ``JobResult``.

``execute`` turns an assignment into a call of ``execution.run_command`` or
``run_python`` and never raises for the job's own faults: a bad environment name, a
handler this worker does not have, or malformed arguments all end as a FAILED result
that says why, because the operator must hear about every attempt it handed out.

An attempt can be stopped for two different reasons, and they are reported differently:

- the operator no longer wants it (a cancel command, or a heartbeat's stop list): the
  outcome is CANCELLED;
- the worker is going away (the drain's grace ran out, or the operator ordered a
  shutdown): the outcome is FAILED with the reason, so the job is retried under its
  queue's policy instead of being marked cancelled by nobody's request. This follows
  ``Shutdown`` in workers.proto ("stopped and reported as failed").

Either way the process is stopped through ``execution``'s stop event rather than by
cancelling the task, so the output produced so far is kept and reported.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace

from jobqueue.api.v1 import workers_pb2
from jobqueue.errors import InvalidInputError
from jobqueue.worker.execution import (
    CommandSpec,
    ExecutionResult,
    Outcome,
    PythonSpec,
    run_command,
    run_python,
)
from jobqueue.worker.handlers import HandlerRegistry
from jobqueue.worker.reporting import AttemptKey

PROTO_OUTCOMES = {
    Outcome.SUCCEEDED: workers_pb2.OUTCOME_SUCCEEDED,
    Outcome.FAILED: workers_pb2.OUTCOME_FAILED,
    Outcome.TIMED_OUT: workers_pb2.OUTCOME_TIMED_OUT,
    Outcome.CANCELLED: workers_pb2.OUTCOME_CANCELLED,
}


@dataclass(frozen=True)
class StopRequest:
    """Why an attempt is being stopped, and what to report for it."""

    outcome: Outcome  # CANCELLED (the operator's wish) or FAILED (the worker is leaving)
    reason: str
    # False when the operator already disowned the attempt (its Started was refused):
    # a result would only be refused as stale.
    report: bool = True


class Attempt:
    """An attempt this worker holds, from its assignment until its result is recorded."""

    def __init__(self, assignment: workers_pb2.Assignment) -> None:
        self.assignment = assignment
        self.key: AttemptKey = (assignment.job_id, assignment.attempt)
        self.stop_event = asyncio.Event()
        self.stop_request: StopRequest | None = None
        # When the job began to run here (time.time_ns()); None until it does. Reported
        # with the start and the result: the operator records it as the job's start.
        self.started_ns: int | None = None

    @property
    def job_id(self) -> str:
        return self.assignment.job_id

    @property
    def number(self) -> int:
        return self.assignment.attempt

    def stop(self, outcome: Outcome, reason: str, *, report: bool = True) -> None:
        """Ask the attempt to stop; the first reason given is the one reported."""
        if self.stop_request is None:
            self.stop_request = StopRequest(outcome, reason, report)
        self.stop_event.set()

    def begin(self) -> None:
        """Note that the job begins to run now."""
        self.started_ns = time.time_ns()

    def to_proto(self) -> workers_pb2.JobAttempt:
        message = workers_pb2.JobAttempt(job_id=self.job_id, attempt=self.number)
        self.fill_started_at(message)
        return message

    def fill_started_at(self, message: workers_pb2.JobAttempt) -> None:
        if self.started_ns is not None:
            seconds, nanos = divmod(self.started_ns, 1_000_000_000)
            message.started_at.seconds = seconds
            message.started_at.nanos = nanos


def timeout_s(assignment: workers_pb2.Assignment) -> float:
    """The attempt's time limit; an assignment without one runs without a limit."""
    if not assignment.HasField("timeout"):
        return math.inf
    timeout = assignment.timeout  # its fields directly: ToTimedelta costs ten times more
    seconds = timeout.seconds + timeout.nanos / 1e9
    return seconds if seconds > 0 else math.inf


async def execute(
    assignment: workers_pb2.Assignment,
    registry: HandlerRegistry,
    *,
    stop: asyncio.Event,
    kill_grace_s: float,
    env_overridable: Collection[str] = (),
    on_wait: Callable[[], None] | None = None,
) -> ExecutionResult:
    """Run the assignment's command or handler to its end; never raises for the job's faults.

    ``env_overridable`` names the worker's environment variables a command may set.
    ``on_wait`` is called once, when the job is found to take a while: at once for a
    command, after its first step for a handler (see ``run_python``); not at all for a
    handler that ends in its first step, or a job refused before it ran.
    """
    kind = assignment.WhichOneof("kind")
    limit_s = timeout_s(assignment)
    try:
        if kind == "command":
            command = assignment.command
            spec = CommandSpec(
                argv=list(command.argv),
                env=dict(command.env),
                working_directory=command.working_directory,
            )
            if on_wait is not None:
                on_wait()
            return await run_command(
                spec,
                timeout_s=limit_s,
                stop=stop,
                kill_grace_s=kill_grace_s,
                env_overridable=env_overridable,
            )
        if kind == "python":
            python = PythonSpec(assignment.python.handler, assignment.python.arguments_json)
            return await run_python(python, registry, timeout_s=limit_s, stop=stop, on_wait=on_wait)
    except InvalidInputError as refused:
        return ExecutionResult(Outcome.FAILED, error=str(refused))
    return ExecutionResult(
        Outcome.FAILED, error="the assignment names neither a command nor a Python handler"
    )


def apply_stop(result: ExecutionResult, stop_request: StopRequest | None) -> ExecutionResult:
    """The result to report for an attempt that may have been asked to stop.

    Only an attempt that actually ended because of the stop takes the stop's outcome
    and reason; one that finished by itself in the meantime keeps its own.
    """
    if stop_request is None or result.outcome is not Outcome.CANCELLED:
        return result
    return replace(result, outcome=stop_request.outcome, error=stop_request.reason)


def job_result(attempt: Attempt, result: ExecutionResult) -> workers_pb2.JobResult:
    """The proto form of a result; ``exit_code`` is 0 where there is none (not a command)."""
    # Whole seconds and nanoseconds, as FromTimedelta would give them, at a third of its
    # cost; a run time is never negative (it is measured on the monotonic clock).
    fraction, whole = math.modf(max(0.0, result.run_time_s))
    carry, micros = divmod(round(fraction * 1_000_000), 1_000_000)
    message = workers_pb2.JobResult(
        outcome=PROTO_OUTCOMES[result.outcome],
        output=result.output,
        output_truncated=result.output_truncated,
        error=result.error,
        exit_code=result.exit_code or 0,
    )
    # Filled in place: a message given to the constructor would be copied.
    message.job.job_id = attempt.job_id
    message.job.attempt = attempt.number
    attempt.fill_started_at(message.job)
    message.run_time.seconds = int(whole) + carry
    message.run_time.nanos = micros * 1000
    return message
