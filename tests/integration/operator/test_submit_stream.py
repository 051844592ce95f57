"""Single submits on one ``SubmitStream`` call, against the real operator and store.

The Python client sends every single submit on one long-lived stream (``AsyncClient``);
each message must be handled as the ``Submit`` call it stands for: its own job, its own
answer, its own refusal, while the stream goes on.
"""

from __future__ import annotations

import asyncio

import grpc
import grpc.aio
import pytest

from jobqueue import errors
from jobqueue.api.v1 import jobs_pb2, jobs_pb2_grpc
from jobqueue.client import AsyncClient, job_spec
from jobqueue.devenv.processes import free_port
from jobqueue.store import JobStore
from tests.conftest import KafkaTarget
from tests.integration.operator.conftest import (
    QUEUE,
    Operator,
    create_queue,
    operator_running,
    operator_settings,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


async def stored_jobs(store: JobStore) -> list[str]:
    jobs, _ = await store.list_jobs(queue=QUEUE, limit=1000)
    return sorted(job.id for job in jobs)


async def test_concurrent_submits_each_create_their_job_on_one_stream(operator: Operator) -> None:
    client = operator.client
    specs = [job_spec(QUEUE, command=["echo", str(n)]) for n in range(50)]

    jobs = await asyncio.gather(*(client.submit(spec) for spec in specs))

    assert client.submit_streams_opened == 1
    assert sorted(job.id for job in jobs) == await stored_jobs(operator.parts.store)
    assert [list(job.spec.command.argv) for job in jobs] == [["echo", str(n)] for n in range(50)]


async def test_a_refused_submit_is_answered_alone_and_the_stream_goes_on(
    operator: Operator,
) -> None:
    client = operator.client
    good = job_spec(QUEUE, command=["true"])

    refused = await asyncio.gather(
        client.submit(job_spec("nowhere", command=["true"])),
        client.submit(job_spec(QUEUE, command=["true"], priority=10**6)),
        client.submit(good),
        return_exceptions=True,
    )
    after = await client.submit(good)

    assert isinstance(refused[0], errors.NotFoundError)
    assert "nowhere" in str(refused[0])
    assert isinstance(refused[1], errors.InvalidInputError)
    assert "priority" in str(refused[1])
    assert not isinstance(refused[2], BaseException)
    assert client.submit_streams_opened == 1
    assert await stored_jobs(operator.parts.store) == sorted([refused[2].id, after.id])


async def test_a_message_without_a_job_is_answered_invalid_and_creates_nothing(
    operator: Operator,
) -> None:
    # A raw stream, as any gRPC client may send it: the first message carries no job.
    good = jobs_pb2.SubmitRequest(job=job_spec(QUEUE, command=["true"]))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{operator.port}") as channel:
        call = jobs_pb2_grpc.JobServiceStub(channel).SubmitStream()
        await call.write(jobs_pb2.SubmitStreamRequest(id=7))
        await call.write(jobs_pb2.SubmitStreamRequest(id=8, submit=good))
        await call.done_writing()
        replies = {reply.id: reply async for reply in call}

    assert replies[7].error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "queue: must be set" in replies[7].error_message
    assert replies[8].error_code == 0
    assert await stored_jobs(operator.parts.store) == [replies[8].submit.job.id]


async def test_a_repeated_idempotency_key_on_the_stream_returns_the_first_job(
    operator: Operator,
) -> None:
    spec = job_spec(QUEUE, command=["true"], idempotency_key="invoice-7")

    first, second = await asyncio.gather(operator.client.submit(spec), operator.client.submit(spec))

    assert first.id == second.id
    assert await stored_jobs(operator.parts.store) == [first.id]


async def test_submits_go_on_after_an_operator_restart_on_a_new_stream(
    database_url: str, redis_url: str, kafka: KafkaTarget
) -> None:
    settings = operator_settings(database_url, redis_url, kafka, free_port())
    port = settings.operator.grpc_address.rpartition(":")[2]
    async with AsyncClient(f"127.0.0.1:{port}", plaintext=True, timeout_s=10) as client:
        async with operator_running(settings) as first:
            await create_queue(first.parts.store)
            before = await client.submit(job_spec(QUEUE, command=["true"]))

        async with operator_running(settings) as second:
            after = await client.submit(job_spec(QUEUE, command=["true"]))

            assert client.submit_streams_opened == 2
            assert await stored_jobs(second.parts.store) == sorted([before.id, after.id])
