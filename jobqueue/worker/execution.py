"""Running one job attempt: a command, or a registered Python handler.

Both kinds end in an ``ExecutionResult`` and never raise for the job's own failures: a
program that exits non-zero, a handler that raises, a timeout and a cancel are outcomes
to report, not errors of the worker. Only the worker being shut down (the task itself
cancelled) propagates, after the job's process is stopped.

Commands run without a shell, in a session of their own so that stopping one reaches
everything it started: SIGTERM first, then SIGKILL after a grace period. Their combined
output is kept up to a limit (1 MiB); past it, reading goes on (a full pipe would block
the program) but the bytes are dropped and the result says it was truncated.

The job's environment is the worker's, minus the worker's own settings (``JQ_*``), plus
what the job asked for. What a job may ask for is limited, because whoever may submit
jobs is not necessarily whoever configured the pool: a job may not set ``JQ_*`` names,
nor any variable the worker's own environment already has (``PATH``, a proxy, the
credentials the platform team gave the pool), unless the worker allows that name
(``worker.job_env_overridable``). Such a job fails with a message naming the variable,
before anything runs. Jobs still read the variables they inherit: a pool's environment
is for its jobs, and what jobs must not see does not belong in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import os
import signal
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from jobqueue.errors import InvalidInputError
from jobqueue.worker.handlers import HandlerRegistry

OUTPUT_LIMIT_BYTES = 1024 * 1024
_READ_CHUNK_BYTES = 64 * 1024
_PROTECTED_PREFIX = "JQ_"


class Outcome(enum.Enum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class ExecutionResult:
    outcome: Outcome
    output: str = ""
    output_truncated: bool = False
    exit_code: int | None = None
    error: str = ""
    run_time_s: float = 0.0


@dataclass(frozen=True)
class CommandSpec:
    argv: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    working_directory: str = ""


@dataclass(frozen=True)
class PythonSpec:
    handler: str
    arguments_json: str = "{}"


def job_environment(
    worker_environment: Mapping[str, str],
    requested: Mapping[str, str],
    overridable: Collection[str] = (),
) -> dict[str, str]:
    """The environment a command runs with; refuses names a job may not set."""
    for name in requested:
        if not name or "=" in name or "\0" in name:
            raise InvalidInputError(f"command.env: {name!r} is not a valid variable name")
        if name.upper().startswith(_PROTECTED_PREFIX):
            raise InvalidInputError(
                f"command.env: {name} is reserved for the worker's own settings; "
                f"a job may not set {_PROTECTED_PREFIX}* variables"
            )
        if name in worker_environment and name not in overridable:
            raise InvalidInputError(
                f"command.env: {name} is set by the worker's own environment and a job may "
                f"not override it (the worker can allow it: worker.job_env_overridable)"
            )
        if "\0" in requested[name]:
            raise InvalidInputError(f"command.env: the value of {name} contains a NUL byte")
    inherited = {
        name: value
        for name, value in worker_environment.items()
        if not name.upper().startswith(_PROTECTED_PREFIX)
    }
    return inherited | dict(requested)


class _CappedOutput:
    """Collects at most ``limit`` bytes and remembers whether more arrived."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0
        self.truncated = False

    def add(self, chunk: bytes) -> None:
        room = self.limit - self.size
        if len(chunk) > room:
            self.truncated = True
            chunk = chunk[:room]
        if chunk:
            self.chunks.append(chunk)
            self.size += len(chunk)

    def text(self) -> str:
        return b"".join(self.chunks).decode("utf-8", errors="replace")


async def run_command(
    spec: CommandSpec,
    *,
    timeout_s: float,
    stop: asyncio.Event | None = None,
    kill_grace_s: float = 5.0,
    output_limit: int = OUTPUT_LIMIT_BYTES,
    worker_environment: Mapping[str, str] | None = None,
    env_overridable: Collection[str] = (),
) -> ExecutionResult:
    """Run ``spec.argv`` until it exits, times out, or ``stop`` is set (a cancel)."""
    began = time.monotonic()
    if not spec.argv:
        return ExecutionResult(Outcome.FAILED, error="command.argv is empty")
    environment = job_environment(
        os.environ if worker_environment is None else worker_environment,
        spec.env,
        env_overridable,
    )

    try:
        process = await asyncio.create_subprocess_exec(
            *spec.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=environment,
            cwd=spec.working_directory or None,
            start_new_session=True,
        )
    except OSError as error:
        # A missing program or working directory is the job's failure, not the worker's.
        return ExecutionResult(
            Outcome.FAILED, error=f"cannot start {spec.argv[0]!r}: {error.strerror or error}"
        )

    output = _CappedOutput(output_limit)
    reader = asyncio.create_task(_drain(process, output), name=f"output-of-{process.pid}")
    outcome = await _wait_for_exit(process, timeout_s=timeout_s, stop=stop, grace_s=kill_grace_s)
    await reader
    return _command_result(outcome, process.returncode, output, timeout_s, began)


async def _drain(process: asyncio.subprocess.Process, output: _CappedOutput) -> None:
    assert process.stdout is not None
    while chunk := await process.stdout.read(_READ_CHUNK_BYTES):
        output.add(chunk)


async def _wait_for_exit(
    process: asyncio.subprocess.Process,
    *,
    timeout_s: float,
    stop: asyncio.Event | None,
    grace_s: float,
) -> Outcome | None:
    """None when the program ended by itself; otherwise why it was stopped."""
    exited = asyncio.create_task(process.wait(), name=f"exit-of-{process.pid}")
    stopped = asyncio.create_task((stop or asyncio.Event()).wait(), name=f"stop-of-{process.pid}")
    try:
        done, _ = await asyncio.wait(
            {exited, stopped}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
    except asyncio.CancelledError:
        # The worker is shutting down: the program must not outlive the attempt.
        await asyncio.shield(_terminate(process, grace_s))
        raise
    finally:
        stopped.cancel()

    if exited in done:
        return None
    await _terminate(process, grace_s)
    return Outcome.CANCELLED if stopped in done else Outcome.TIMED_OUT


async def _terminate(process: asyncio.subprocess.Process, grace_s: float) -> None:
    """SIGTERM the program's session, then SIGKILL it if it is still there after grace_s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(process.wait(), timeout=grace_s)
    # Whatever the leader did, nothing it started may linger.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    await process.wait()


def _command_result(
    stopped_because: Outcome | None,
    exit_code: int | None,
    output: _CappedOutput,
    timeout_s: float,
    began: float,
) -> ExecutionResult:
    if stopped_because is Outcome.TIMED_OUT:
        error = f"timed out after {timeout_s:g} s"
    elif stopped_because is Outcome.CANCELLED:
        error = "cancelled"
    elif exit_code == 0:
        error = ""
    elif exit_code is not None and exit_code < 0:
        error = f"killed by {signal.Signals(-exit_code).name}"
    else:
        error = f"exited with code {exit_code}"
    outcome = stopped_because or (Outcome.SUCCEEDED if exit_code == 0 else Outcome.FAILED)
    return ExecutionResult(
        outcome,
        output=output.text(),
        output_truncated=output.truncated,
        exit_code=exit_code,
        error=error,
        run_time_s=time.monotonic() - began,
    )


async def run_python(
    spec: PythonSpec,
    registry: HandlerRegistry,
    *,
    timeout_s: float,
    stop: asyncio.Event | None = None,
    output_limit: int = OUTPUT_LIMIT_BYTES,
    on_wait: Callable[[], None] | None = None,
) -> ExecutionResult:
    """Call a registered handler with the job's JSON arguments; its JSON result is the output.

    An async handler is cancelled on timeout or cancel. A plain function runs in a thread
    and cannot be interrupted: on timeout or cancel the attempt is reported at once and
    the thread is left to finish on its own, its result discarded. ``on_wait`` is called
    once the handler is found not to end in its first step, before waiting for it: the
    worker reports the start then, and a handler that ends at once needs no report of
    its own start.
    """
    began = time.monotonic()
    try:
        handler = registry.get(spec.handler)
        # Most jobs of a busy queue take no arguments: no need to parse "{}" each time.
        raw = spec.arguments_json
        arguments = {} if raw in ("", "{}") else json.loads(raw)
        if not isinstance(arguments, dict):
            raise InvalidInputError("python.arguments_json must be a JSON object")
    except (InvalidInputError, json.JSONDecodeError) as refused:
        return ExecutionResult(Outcome.FAILED, error=str(refused))

    call: asyncio.Future[Any] = asyncio.ensure_future(registry.call(handler, arguments))
    outcome, value, error = await _await_call(call, timeout_s=timeout_s, stop=stop, on_wait=on_wait)
    run_time_s = time.monotonic() - began
    if outcome is not Outcome.SUCCEEDED:
        return ExecutionResult(outcome, error=error, run_time_s=run_time_s)

    try:
        # Most handlers of a busy queue return nothing; json.dumps costs more than the job.
        rendered = "null" if value is None else json.dumps(value)
    except (TypeError, ValueError) as json_error:
        return ExecutionResult(
            Outcome.FAILED,
            error=f"the handler returned a value that is not JSON: {json_error}",
            run_time_s=run_time_s,
        )
    if len(rendered) <= output_limit:
        # json.dumps writes ASCII only, so this many characters are this many bytes.
        return ExecutionResult(Outcome.SUCCEEDED, output=rendered, run_time_s=run_time_s)
    capped = _CappedOutput(output_limit)
    capped.add(rendered.encode())
    return ExecutionResult(
        Outcome.SUCCEEDED,
        output=capped.text(),
        output_truncated=capped.truncated,
        run_time_s=run_time_s,
    )


async def _await_call(
    call: asyncio.Future[Any],
    *,
    timeout_s: float,
    stop: asyncio.Event | None,
    on_wait: Callable[[], None] | None,
) -> tuple[Outcome, Any, str]:
    # Most handlers of a busy queue are short. One yield lets the call take its first
    # step; a handler that finished in it needs no stop watcher, no timer and no wait,
    # which cost more than the handler itself.
    try:
        await asyncio.sleep(0)
        if call.done():
            return _ended(call)
        if on_wait is not None:
            on_wait()
        stopped: asyncio.Future[Any] = asyncio.ensure_future((stop or asyncio.Event()).wait())
        try:
            done, _ = await asyncio.wait(
                {call, stopped}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            stopped.cancel()
    except asyncio.CancelledError:
        call.cancel()
        raise

    if call in done:
        return _ended(call)
    call.cancel()
    if stopped in done:
        return Outcome.CANCELLED, None, "cancelled"
    return Outcome.TIMED_OUT, None, f"timed out after {timeout_s:g} s"


def _ended(call: asyncio.Future[Any]) -> tuple[Outcome, Any, str]:
    """What a call that finished by itself came to."""
    exception = call.exception()
    if exception is not None:
        return Outcome.FAILED, None, f"{type(exception).__name__}: {exception}"
    return Outcome.SUCCEEDED, call.result(), ""
