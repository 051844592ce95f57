"""``jobqueue-worker`` as a real process, against a scripted operator in the test's loop."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from jobqueue.devenv.processes import free_port
from tests.unit.worker.scripted_operator import (
    WAIT_S,
    ScriptedOperator,
    command_assignment,
    start_server,
)


def worker_environment() -> dict[str, str]:
    """This process's environment without jobqueue settings that would leak into the worker."""
    return {name: value for name, value in os.environ.items() if not name.startswith("JQ_")}


async def run_worker(*arguments: str) -> asyncio.subprocess.Process:
    # The scripted operator serves plaintext.
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jobqueue.worker.main",
        "--insecure-plaintext",
        *arguments,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=worker_environment(),
    )


async def outcome(process: asyncio.subprocess.Process) -> tuple[int, str, str]:
    async with asyncio.timeout(WAIT_S):
        stdout, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


@pytest.fixture
async def operator() -> AsyncIterator[tuple[ScriptedOperator, int]]:
    scripted = ScriptedOperator()
    server, port = await start_server(scripted)
    yield scripted, port
    await server.stop(grace=None)


def write_to_fifo(path: Path, text: str) -> None:
    # Opening blocks until the job has opened its end: the job is surely running.
    with path.open("w") as fifo:
        fifo.write(text)


async def test_sigterm_lets_the_running_job_finish_reports_it_and_deregisters(
    operator: tuple[ScriptedOperator, int], tmp_path: Path
) -> None:
    scripted, port = operator
    http_port = free_port()
    fifo = tmp_path / "gate"
    os.mkfifo(fifo)
    process = await run_worker(
        "--operator", f"127.0.0.1:{port}",
        "--queue", "test",
        "--worker-id", "worker-under-test",
        "--concurrency", "2",
        "--http-address", f"127.0.0.1:{http_port}",
        "--log-format", "json",
    )  # fmt: skip
    try:
        (registration,) = await scripted.registrations.wait_for()
        assert (registration.worker_id, registration.concurrency) == ("worker-under-test", 2)
        await scripted.streams_opened.wait_for()
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{http_port}/readyz") as ready:
                assert ready.status == 200
            async with http.get(f"http://127.0.0.1:{http_port}/metrics") as metrics:
                assert "jobqueue_worker_running_jobs" in await metrics.text()

        reader = "import sys; print(open(sys.argv[1]).read(), flush=True)"
        scripted.assign(command_assignment("job-1", [sys.executable, "-c", reader, str(fifo)]))
        await scripted.started.wait_for()
        process.send_signal(signal.SIGTERM)
        await scripted.streams_closed.wait_for()
        assert scripted.results.items == []

        await asyncio.wait_for(asyncio.to_thread(write_to_fifo, fifo, "finished"), WAIT_S)
        code, _, stderr = await outcome(process)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    assert code == 0, stderr
    result = scripted.result_of("job-1")
    assert result.outcome == 1  # OUTCOME_SUCCEEDED
    assert result.output == "finished\n"
    assert scripted.timeline[-2:] == ["result:job-1", "deregister"]
    assert '"Draining (received SIGTERM)' in stderr
    # Before it served, it set its start-up objects aside from garbage collection.
    assert "start-up objects aside from garbage collection" in stderr


async def test_dry_run_against_a_reachable_operator_exits_zero(
    operator: tuple[ScriptedOperator, int],
) -> None:
    _, port = operator
    process = await run_worker("--dry-run", "--operator", f"127.0.0.1:{port}", "--queue", "q")

    code, stdout, _ = await outcome(process)

    assert code == 0
    assert f"127.0.0.1:{port} (reachable)" in stdout


async def test_dry_run_against_a_closed_port_exits_one_with_a_message() -> None:
    address = f"127.0.0.1:{free_port()}"
    process = await run_worker("--dry-run", "--operator", address, "--queue", "q")

    code, _, stderr = await outcome(process)

    assert code == 1
    assert f"cannot reach the operator at {address}" in stderr


async def test_missing_queue_exits_two_naming_the_setting_and_the_flag() -> None:
    process = await run_worker("--operator", "127.0.0.1:1")

    code, _, stderr = await outcome(process)

    assert code == 2
    assert "worker.queue" in stderr
    assert "--queue" in stderr
