"""Running commands and Python handlers, with real child processes."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from jobqueue.errors import InvalidInputError
from jobqueue.worker.execution import (
    CommandSpec,
    Outcome,
    PythonSpec,
    job_environment,
    run_command,
    run_python,
)
from jobqueue.worker.handlers import HandlerRegistry


def python_command(code: str, **kwargs: object) -> CommandSpec:
    return CommandSpec(argv=[sys.executable, "-c", code], **kwargs)  # type: ignore[arg-type]


async def test_command_output_and_exit_code_are_reported() -> None:
    result = await run_command(
        python_command("import sys; print('out'); print('err', file=sys.stderr)"), timeout_s=30
    )

    assert result.outcome is Outcome.SUCCEEDED
    assert result.exit_code == 0
    assert sorted(result.output.split()) == ["err", "out"]
    assert result.error == ""


async def test_command_exiting_non_zero_is_a_failure() -> None:
    result = await run_command(python_command("raise SystemExit(3)"), timeout_s=30)

    assert result.outcome is Outcome.FAILED
    assert result.exit_code == 3
    assert result.error == "exited with code 3"


async def test_missing_program_fails_the_attempt_with_a_clear_error() -> None:
    result = await run_command(CommandSpec(argv=["/nonexistent/program"]), timeout_s=30)

    assert result.outcome is Outcome.FAILED
    assert "cannot start '/nonexistent/program'" in result.error


async def test_output_beyond_the_limit_is_dropped_and_marked_truncated() -> None:
    # The program writes far more than the pipe holds: it must not block on a full pipe.
    result = await run_command(
        python_command("import sys; sys.stdout.write('x' * 3_000_000)"),
        timeout_s=30,
        output_limit=1000,
    )

    assert result.outcome is Outcome.SUCCEEDED
    assert result.output == "x" * 1000
    assert result.output_truncated is True


async def test_timeout_kills_the_program_and_everything_it_started(tmp_path: Path) -> None:
    grandchild_pid_file = tmp_path / "grandchild.pid"
    code = (
        "import subprocess, sys, time;"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
        f"open({str(grandchild_pid_file)!r}, 'w').write(str(child.pid));"
        "time.sleep(60)"
    )

    result = await run_command(python_command(code), timeout_s=1.0, kill_grace_s=1.0)

    assert result.outcome is Outcome.TIMED_OUT
    assert result.error == "timed out after 1 s"
    grandchild = int(grandchild_pid_file.read_text())
    assert await _gone_within(grandchild, timeout_s=5)


async def _gone_within(pid: int, timeout_s: float) -> bool:
    """True once ``pid`` has exited (an orphan may linger as a zombie of init: that counts)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()  # noqa: ASYNC240 - /proc never blocks
            state = stat.rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        await asyncio.sleep(0.05)
    return False


async def test_program_ignoring_sigterm_is_killed_after_the_grace_period() -> None:
    code = (
        "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        "print('ready', flush=True); time.sleep(60)"
    )

    result = await run_command(python_command(code), timeout_s=0.5, kill_grace_s=0.3)

    assert result.outcome is Outcome.TIMED_OUT
    assert result.exit_code == -9
    assert result.run_time_s < 10


async def test_stop_event_cancels_a_running_command() -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_command(python_command("import time; time.sleep(60)"), timeout_s=60, stop=stop)
    )

    stop.set()
    result = await asyncio.wait_for(task, timeout=15)

    assert result.outcome is Outcome.CANCELLED
    assert result.error == "cancelled"


async def test_command_sees_its_environment_but_not_the_workers_settings() -> None:
    worker_environment = {"PATH": os.environ["PATH"], "JQ_DATABASE_PASSWORD": "hunter2"}
    spec = python_command(
        "import os; print(os.environ.get('GREETING'), os.environ.get('JQ_DATABASE_PASSWORD'))",
        env={"GREETING": "hello"},
    )

    result = await run_command(spec, timeout_s=30, worker_environment=worker_environment)

    assert result.output.strip() == "hello None"


@pytest.mark.parametrize(
    ("requested", "message"),
    [
        ({"JQ_DATABASE_URL": "postgresql://evil"}, "reserved for the worker's own settings"),
        ({"jq_redis_url": "x"}, "reserved for the worker's own settings"),
        ({"A=B": "x"}, "is not a valid variable name"),
        ({"": "x"}, "is not a valid variable name"),
    ],
)
def test_job_may_not_set_reserved_or_malformed_variables(
    requested: dict[str, str], message: str
) -> None:
    with pytest.raises(InvalidInputError, match=message):
        job_environment({"PATH": "/bin"}, requested)


def test_job_may_not_override_what_the_workers_environment_sets() -> None:
    worker_environment = {"PATH": "/bin", "SMTP_PASSWORD": "from-a-secret", "LANG": "C"}

    with pytest.raises(InvalidInputError, match="SMTP_PASSWORD is set by the worker"):
        job_environment(worker_environment, {"SMTP_PASSWORD": "mine"})
    with pytest.raises(InvalidInputError, match=r"worker\.job_env_overridable"):
        job_environment(worker_environment, {"PATH": "/tmp/evil"})


def test_the_worker_may_allow_a_job_to_override_a_named_variable() -> None:
    worker_environment = {"PATH": "/bin", "LANG": "C"}

    environment = job_environment(worker_environment, {"LANG": "de_DE.UTF-8"}, {"LANG"})

    assert environment == {"PATH": "/bin", "LANG": "de_DE.UTF-8"}
    with pytest.raises(InvalidInputError, match="reserved"):
        job_environment({"JQ_WORKER_QUEUE": "q"}, {"JQ_WORKER_QUEUE": "other"}, {"JQ_WORKER_QUEUE"})


async def test_a_command_refused_for_its_environment_never_starts(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    spec = python_command(f"open({str(marker)!r}, 'w')", env={"HOME": "/elsewhere"})

    with pytest.raises(InvalidInputError, match="HOME"):
        await run_command(spec, timeout_s=30, worker_environment={"HOME": "/home/worker"})

    assert not marker.exists()


# Python handlers ----------------------------------------------------------------------

registry = HandlerRegistry()


@registry.register
def add(a: int, b: int) -> int:
    return a + b


@registry.register
async def slow(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "done"


@registry.register
def broken() -> None:
    raise RuntimeError("the disk is full")


@registry.register
def not_json() -> object:
    return object()


@registry.register
async def nothing() -> None:
    return None


@registry.register
def wordy() -> str:
    return "é" * 100


def spec(function: object, arguments: str = "{}") -> PythonSpec:
    return PythonSpec(f"{__name__}:{function.__qualname__}", arguments)  # type: ignore[attr-defined]


async def test_sync_handler_result_is_returned_as_json() -> None:
    result = await run_python(spec(add, '{"a": 2, "b": 3}'), registry, timeout_s=10)

    assert result.outcome is Outcome.SUCCEEDED
    assert result.output == "5"


async def test_a_handler_that_returns_nothing_has_null_as_its_output() -> None:
    result = await run_python(spec(nothing), registry, timeout_s=10)

    assert result.outcome is Outcome.SUCCEEDED
    assert (result.output, result.output_truncated) == ("null", False)


async def test_a_result_longer_than_the_output_limit_is_cut_and_marked() -> None:
    whole = await run_python(spec(wordy), registry, timeout_s=10)
    cut = await run_python(spec(wordy), registry, timeout_s=10, output_limit=20)

    assert whole.output == json.dumps("é" * 100)  # escaped: ASCII, so 602 bytes
    assert (whole.output_truncated, cut.output_truncated) == (False, True)
    assert cut.output == whole.output[:20]


async def test_the_wait_is_announced_only_for_a_handler_that_does_not_end_at_once() -> None:
    waits: list[str] = []

    await run_python(spec(nothing), registry, timeout_s=10, on_wait=lambda: waits.append("nothing"))
    await run_python(
        spec(slow, '{"seconds": 0.01}'),
        registry,
        timeout_s=10,
        on_wait=lambda: waits.append("slow"),
    )
    await run_python(
        spec(add, '{"a": 1, "b": 1}'),
        registry,
        timeout_s=10,
        on_wait=lambda: waits.append("thread"),
    )

    # A plain function runs in a thread, so it never ends in its first step.
    assert waits == ["slow", "thread"]


async def test_handler_exception_fails_the_attempt_with_its_message() -> None:
    result = await run_python(spec(broken), registry, timeout_s=10)

    assert result.outcome is Outcome.FAILED
    assert result.error == "RuntimeError: the disk is full"


async def test_async_handler_past_its_timeout_is_cancelled() -> None:
    result = await run_python(spec(slow, '{"seconds": 60}'), registry, timeout_s=0.2)

    assert result.outcome is Outcome.TIMED_OUT


async def test_stop_event_cancels_an_async_handler() -> None:
    stop = asyncio.Event()
    stop.set()

    result = await run_python(spec(slow, '{"seconds": 60}'), registry, timeout_s=60, stop=stop)

    assert result.outcome is Outcome.CANCELLED


@pytest.mark.parametrize(
    ("handler", "arguments", "message"),
    [
        ("os:system", "{}", "'os:system' is not registered in this worker"),
        (f"{__name__}:add", "[1, 2]", "must be a JSON object"),
        (f"{__name__}:add", "{not json", "Expecting property name"),
        (f"{__name__}:not_json", "{}", "not JSON"),
        (f"{__name__}:add", '{"c": 1}', "TypeError"),
    ],
)
async def test_bad_python_jobs_fail_with_a_clear_error(
    handler: str, arguments: str, message: str
) -> None:
    result = await run_python(PythonSpec(handler, arguments), registry, timeout_s=10)

    assert result.outcome is Outcome.FAILED
    assert message in result.error


def test_handlers_named_on_the_command_line_are_imported_or_refused() -> None:
    names = HandlerRegistry()

    names.import_and_register("json:dumps")

    assert names.names() == ["json:dumps"]
    with pytest.raises(InvalidInputError, match="cannot import"):
        names.import_and_register("no_such_module_here:f")
    with pytest.raises(InvalidInputError, match="has no function"):
        names.import_and_register("json:nothing")
    with pytest.raises(InvalidInputError, match="module:function"):
        names.import_and_register("json.dumps")
