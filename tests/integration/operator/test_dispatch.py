"""Jobs end to end: submitted over gRPC, dispatched by the operator, run by worker processes."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections import Counter
from pathlib import Path

import grpc
import grpc.aio
import pytest

from jobqueue import errors
from jobqueue.api.v1 import jobs_pb2, workers_pb2
from jobqueue.client import AsyncClient, job_spec
from jobqueue.devenv.processes import free_port
from tests.conftest import KafkaTarget
from tests.integration.operator.conftest import (
    HANDLERS,
    QUEUE,
    Operator,
    Workers,
    create_queue,
    operator_running,
    operator_settings,
    wait_for,
    worker_by_hand,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

SUCCEEDED = jobs_pb2.JOB_STATE_SUCCEEDED
DEAD_LETTERED = jobs_pb2.JOB_STATE_DEAD_LETTERED
CANCELLED = jobs_pb2.JOB_STATE_CANCELLED
RUNNING = jobs_pb2.JOB_STATE_RUNNING
PENDING = jobs_pb2.JOB_STATE_PENDING
KIND = jobs_pb2.JobEventKind


def python(*code: str) -> list[str]:
    return [sys.executable, "-c", "\n".join(code)]


async def event_kinds(client: AsyncClient, job_id: str) -> list[str]:
    return [
        KIND.Name(event.kind).removeprefix("JOB_EVENT_KIND_")
        for event in await client.events(job_id)
    ]


async def wait_until_running(client: AsyncClient, job_id: str) -> jobs_pb2.Job:
    async for job in client.watch(job_id, timeout_s=30):
        if job.state == RUNNING:
            return job
    raise AssertionError(f"job {job_id} finished without being seen running")


async def test_command_job_runs_and_succeeds(operator: Operator, workers: Workers) -> None:
    await workers.start(operator.port)

    job = await operator.client.submit(job_spec(QUEUE, command=python("print('hello')")))
    final = await operator.client.wait(job.id, timeout_s=30)

    assert final.state == SUCCEEDED
    assert final.output.strip() == "hello"
    assert final.exit_code == 0
    assert final.attempt == 1
    assert await event_kinds(operator.client, job.id) == ["SUBMITTED", "STARTED", "SUCCEEDED"]


async def test_python_handler_job_returns_its_value(operator: Operator, workers: Workers) -> None:
    await workers.start(operator.port)

    spec = job_spec(QUEUE, handler=f"{HANDLERS}:add", arguments={"a": 2, "b": 3})
    final = await operator.client.wait((await operator.client.submit(spec)).id, timeout_s=30)

    assert final.state == SUCCEEDED
    assert final.output == "5"


async def test_failing_job_retries_then_dead_letters(operator: Operator, workers: Workers) -> None:
    await workers.start(operator.port)

    spec = job_spec(QUEUE, command=python("import sys", "sys.exit(3)"), max_attempts=2)
    final = await operator.client.wait((await operator.client.submit(spec)).id, timeout_s=30)

    assert final.state == DEAD_LETTERED
    assert final.attempt == 2
    assert final.exit_code == 3
    assert await event_kinds(operator.client, final.id) == [
        "SUBMITTED",
        "STARTED",
        "FAILED",
        "STARTED",
        "FAILED",
        "DEAD_LETTERED",
    ]


async def test_timeout_kills_the_job(operator: Operator, workers: Workers) -> None:
    await workers.start(operator.port)

    spec = job_spec(
        QUEUE, command=python("import time", "time.sleep(60)"), timeout_s=1, max_attempts=1
    )
    final = await operator.client.wait((await operator.client.submit(spec)).id, timeout_s=30)

    assert final.state == DEAD_LETTERED
    assert "timed out" in final.last_error


async def test_cancelled_pending_job_never_runs(operator: Operator, workers: Workers) -> None:
    job = await operator.client.submit(job_spec(QUEUE, command=python("print('ran')")))
    cancelled = await operator.client.cancel(job.id, reason="not needed")
    assert cancelled.state == CANCELLED

    # A worker arriving afterwards runs the next job but not the cancelled one.
    await workers.start(operator.port)
    later = await operator.client.submit(job_spec(QUEUE, command=python("print('later')")))
    assert (await operator.client.wait(later.id, timeout_s=30)).state == SUCCEEDED
    assert await event_kinds(operator.client, job.id) == ["SUBMITTED", "CANCELLED"]


async def test_cancelling_a_running_job_stops_it(operator: Operator, workers: Workers) -> None:
    await workers.start(operator.port, concurrency=1)
    job = await operator.client.submit(job_spec(QUEUE, handler=f"{HANDLERS}:wait_forever"))
    await wait_until_running(operator.client, job.id)

    cancelled = await operator.client.cancel(job.id, reason="changed my mind")

    assert cancelled.state == CANCELLED
    # The worker's only slot is free again: the next job runs.
    next_job = await operator.client.submit(job_spec(QUEUE, command=python("print('next')")))
    assert (await operator.client.wait(next_job.id, timeout_s=30)).state == SUCCEEDED
    assert (await operator.client.get(job.id)).state == CANCELLED


async def test_watch_follows_a_job_to_its_end(operator: Operator, workers: Workers) -> None:
    job = await operator.client.submit(job_spec(QUEUE, command=python("print('watched')")))
    seen: list[int] = []

    async def follow() -> None:
        async for update in operator.client.watch(job.id, timeout_s=30):
            seen.append(update.state)

    follower = asyncio.create_task(follow(), name="follow")
    await workers.start(operator.port)
    await asyncio.wait_for(follower, timeout=30)

    assert seen[0] == PENDING
    assert seen[-1] == SUCCEEDED


async def test_worker_killed_mid_job_is_rerun_elsewhere_and_recorded_once(
    operator: Operator, workers: Workers, tmp_path: Path
) -> None:
    marker = tmp_path / "runs"
    first = await workers.start(operator.port, concurrency=1)
    spec = job_spec(QUEUE, command=[*_runs_once_then_hangs(), str(marker)])
    job = await operator.client.submit(spec)
    await wait_until_running(operator.client, job.id)

    first.send_signal(signal.SIGKILL)
    await first.wait()
    await workers.start(operator.port, concurrency=1)
    final = await operator.client.wait(job.id, timeout_s=60)

    assert final.state == SUCCEEDED
    assert final.attempt == 2
    assert final.worker_id == "worker-1"
    assert marker.read_text() == "xx"
    assert Counter(await event_kinds(operator.client, job.id))["SUCCEEDED"] == 1


async def test_a_worker_restarted_under_its_name_gets_its_lost_job_back_before_the_lease_ends(
    database_url: str, redis_url: str, kafka: KafkaTarget, workers: Workers, tmp_path: Path
) -> None:
    # A lease far longer than the wait below: only the new registration can free the job.
    settings = operator_settings(database_url, redis_url, kafka, free_port(), lease_s=300.0)
    marker = tmp_path / "runs"
    async with operator_running(settings) as operator:
        await create_queue(operator.parts.store)
        first = await workers.start(operator.port, concurrency=1, worker_id="pod-0")
        spec = job_spec(QUEUE, command=[*_runs_once_then_hangs(), str(marker)])
        job = await operator.client.submit(spec)
        await wait_until_running(operator.client, job.id)

        first.send_signal(signal.SIGKILL)
        await first.wait()
        await workers.start(operator.port, concurrency=1, worker_id="pod-0")
        final = await operator.client.wait(job.id, timeout_s=60)

        assert final.state == SUCCEEDED
        assert final.attempt == 2
        assert marker.read_text() == "xx"
        failed = [
            json.loads(event.data_json)
            for event in await operator.client.events(job.id)
            if event.kind == KIND.Value("JOB_EVENT_KIND_FAILED")
        ]
        assert len(failed) == 1
        assert "registered again without this attempt" in failed[0]["error"]


async def test_operator_restart_loses_and_doubles_nothing(
    database_url: str, redis_url: str, kafka: KafkaTarget, workers: Workers
) -> None:
    settings = operator_settings(database_url, redis_url, kafka, free_port())
    specs = [
        job_spec(QUEUE, handler=f"{HANDLERS}:add", arguments={"a": n, "b": 1}) for n in range(300)
    ]
    async with operator_running(settings) as first:
        await create_queue(first.parts.store)
        await workers.start(first.port, concurrency=4)
        await workers.start(first.port, concurrency=4)
        jobs = [
            job for batch in _batches(specs, 100) for job in await first.client.submit_batch(batch)
        ]

        async def some_finished() -> bool:
            page = await first.client.list_jobs(QUEUE, states=[SUCCEEDED], page_size=20)
            return len(page.jobs) >= 20

        await wait_for(some_finished)

    async with operator_running(settings) as second:
        finals = [await second.client.wait(job.id, timeout_s=60) for job in jobs]
        assert all(final.state == SUCCEEDED for final in finals)
        assert [final.output for final in finals] == [str(n + 1) for n in range(300)]
        for job in jobs[::10]:
            assert Counter(await event_kinds(second.client, job.id))["SUCCEEDED"] == 1


async def test_two_replicas_never_dispatch_a_job_twice(
    database_url: str, redis_url: str, kafka: KafkaTarget, workers: Workers
) -> None:
    first_settings = operator_settings(database_url, redis_url, kafka, free_port(), lease_s=30)
    second_settings = operator_settings(database_url, redis_url, kafka, free_port(), lease_s=30)
    async with (
        operator_running(first_settings) as first,
        operator_running(second_settings) as second,
    ):
        await create_queue(first.parts.store)
        await workers.start(first.port, concurrency=8)
        await workers.start(second.port, concurrency=8)
        specs = [job_spec(QUEUE, command=python("pass")) for _ in range(200)]
        jobs = [
            job for batch in _batches(specs, 100) for job in await first.client.submit_batch(batch)
        ]

        finals = [await second.client.wait(job.id, timeout_s=60) for job in jobs]

        assert all(final.state == SUCCEEDED for final in finals)
        assert all(final.attempt == 1 for final in finals)
        assert {final.worker_id for final in finals} == {"worker-0", "worker-1"}
        for job in jobs[::5]:
            assert Counter(await event_kinds(first.client, job.id))["STARTED"] == 1


async def test_a_replica_without_free_slots_hands_new_jobs_to_the_others(
    database_url: str, redis_url: str, kafka: KafkaTarget, workers: Workers
) -> None:
    # Polls so rare that only the Redis wake-up can get the job dispatched in time.
    slow_poll = {"JQ_OPERATOR_POLL_INTERVAL_S": "60"}
    without_workers = operator_settings(database_url, redis_url, kafka, free_port(), **slow_poll)
    with_workers = operator_settings(database_url, redis_url, kafka, free_port(), **slow_poll)
    async with (
        operator_running(without_workers) as first,
        operator_running(with_workers) as second,
    ):
        await create_queue(first.parts.store)
        await workers.start(second.port)
        await wait_for(lambda: _streaming(second))

        job = await first.client.submit(
            job_spec(QUEUE, handler=f"{HANDLERS}:add", arguments={"a": 1, "b": 2})
        )
        final = await first.client.wait(job.id, timeout_s=20)

        assert final.state == SUCCEEDED
        assert final.worker_id == "worker-0"


async def _streaming(running: Operator) -> bool:
    return running.parts.scheduler.connected_workers(QUEUE) > 0


async def test_sigterm_drains_the_worker(operator: Operator, workers: Workers) -> None:
    worker = await workers.start(operator.port, concurrency=2)
    slow = python("import time", "time.sleep(1.5)", "print('done')")
    running = [await operator.client.submit(job_spec(QUEUE, command=slow)) for _ in range(2)]
    for job in running:
        await wait_until_running(operator.client, job.id)

    worker.send_signal(signal.SIGTERM)
    late = await operator.client.submit(job_spec(QUEUE, command=python("print('late')")))
    returncode = await asyncio.wait_for(worker.wait(), timeout=30)

    assert returncode == 0
    for job in running:
        assert (await operator.client.get(job.id)).state == SUCCEEDED
    assert (await operator.client.get(late.id)).state == PENDING


async def test_bad_requests_get_clear_errors_and_change_nothing(operator: Operator) -> None:
    client = operator.client

    with pytest.raises(errors.NotFoundError, match="nowhere"):
        await client.submit(job_spec("nowhere", command=["true"]))
    with pytest.raises(errors.InvalidInputError, match="argv"):
        await client.submit(job_spec(QUEUE, command=[]))
    with pytest.raises(errors.InvalidInputError, match="payload"):
        await client.submit(job_spec(QUEUE, command=["true"], env={"BIG": "x" * 300_000}))
    with pytest.raises(errors.InvalidInputError, match="priority"):
        await client.submit(job_spec(QUEUE, command=["true"], priority=10**6))
    with pytest.raises(errors.InvalidInputError, match="token"):
        await client.list_jobs(QUEUE, page_token="not-a-token")
    with pytest.raises(errors.NotFoundError):
        await client.get("00000000-0000-4000-8000-000000000000")
    with pytest.raises(errors.InvalidInputError):
        await client.get("not-a-job-id")

    assert len((await client.list_jobs(QUEUE)).jobs) == 0


def _batches(items: list[jobs_pb2.JobSpec], size: int) -> list[list[jobs_pb2.JobSpec]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


async def test_draining_or_stopping_an_unknown_worker_is_not_found(operator: Operator) -> None:
    with pytest.raises(errors.NotFoundError, match="unknown worker"):
        await operator.client.drain("nobody")
    with pytest.raises(errors.NotFoundError, match="unknown worker"):
        await operator.client.shutdown("nobody", reason="test")


async def test_a_bad_report_batch_is_refused_alone_and_the_stream_goes_on(
    operator: Operator,
) -> None:
    job = await operator.client.submit(job_spec(QUEUE, command=["true"]))
    async with worker_by_hand(operator) as stub:
        call = stub.Report()
        no_outcome = workers_pb2.JobResult(job=workers_pb2.JobAttempt(job_id=job.id, attempt=1))
        await call.write(workers_pb2.ReportBatch(id=1, worker_id="hand", results=[no_outcome]))
        refused = await call.read()
        await call.write(workers_pb2.ReportBatch(id=2, worker_id="nobody"))
        unknown = await call.read()
        call.cancel()

    assert isinstance(refused, workers_pb2.ReportAnswer)
    assert (refused.id, refused.error_code) == (1, grpc.StatusCode.INVALID_ARGUMENT.value[0])
    assert "no outcome" in refused.error_message
    assert isinstance(unknown, workers_pb2.ReportAnswer)
    assert (unknown.id, unknown.error_code) == (2, grpc.StatusCode.NOT_FOUND.value[0])
    assert "nobody" in unknown.error_message
    assert (await operator.client.get(job.id)).state == PENDING  # the bad batch changed nothing


async def test_a_batch_all_accepted_is_answered_in_one_word_when_the_worker_reads_it(
    operator: Operator,
) -> None:
    job = await operator.client.submit(job_spec(QUEUE, command=["true"]))
    async with worker_by_hand(operator) as stub:
        stream = stub.Stream(workers_pb2.StreamRequest(worker_id="hand"))
        command = await asyncio.wait_for(stream.read(), 10)
        assert isinstance(command, workers_pb2.WorkerCommand)
        (assignment,) = command.assignments.jobs
        attempt = workers_pb2.JobAttempt(job_id=job.id, attempt=assignment.attempt)
        result = workers_pb2.JobResult(job=attempt, outcome=workers_pb2.OUTCOME_SUCCEEDED)
        call = stub.Report()
        batches = [
            workers_pb2.ReportBatch(
                id=1, worker_id="hand", started=[attempt], reads_all_accepted=True
            ),
            # Started twice: refused, so each outcome is spelled out.
            workers_pb2.ReportBatch(
                id=2, worker_id="hand", started=[attempt], reads_all_accepted=True
            ),
            # From a worker that does not read all_accepted: outcomes, as before.
            workers_pb2.ReportBatch(id=3, worker_id="hand", results=[result]),
        ]
        answers = []
        for batch in batches:
            await call.write(batch)
            answers.append(await asyncio.wait_for(call.read(), 10))
        call.cancel()
        stream.cancel()

    accepted, refused, listed = answers
    assert isinstance(accepted, workers_pb2.ReportAnswer)
    assert (accepted.id, accepted.all_accepted, len(accepted.outcomes)) == (1, True, 0)
    assert isinstance(refused, workers_pb2.ReportAnswer)
    assert (refused.id, refused.all_accepted) == (2, False)
    assert [outcome.accepted for outcome in refused.outcomes] == [False]
    assert isinstance(listed, workers_pb2.ReportAnswer)
    assert (listed.id, listed.all_accepted) == (3, False)
    assert [(o.job.job_id, o.accepted) for o in listed.outcomes] == [(job.id, True)]
    assert (await operator.client.get(job.id)).state == jobs_pb2.JOB_STATE_SUCCEEDED


def _runs_once_then_hangs() -> list[str]:
    """A command that adds an x to the file it is given, and hangs the first time only."""
    return python(
        "import pathlib, sys, time",
        "marker = pathlib.Path(sys.argv[1])",
        "first = not marker.exists()",
        "marker.write_text(marker.read_text() + 'x' if marker.exists() else 'x')",
        "time.sleep(60 if first else 0)",
    )
