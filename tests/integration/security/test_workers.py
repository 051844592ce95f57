"""Workers prove their pool: a pod-bound token, the pod's labels, the pool's queue."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import grpc.aio
import pytest

from jobqueue.api.v1 import jobs_pb2, workers_pb2, workers_pb2_grpc
from jobqueue.channels import ChannelSecurity, open_aio_channel
from jobqueue.client import job_spec
from jobqueue.credentials import StaticToken
from tests.integration.security.cluster import Cluster
from tests.integration.security.conftest import (
    CACHE_TTL_S,
    QUEUE_A,
    QUEUE_B,
    REPOSITORY,
    SecureOperator,
    StartOperator,
)
from tests.polling import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90), pytest.mark.usefixtures("crds")]

PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED


async def start_worker(
    operator: SecureOperator, token: str, tmp_path: Path, *, queue: str, pool: str, name: str
) -> tuple[asyncio.subprocess.Process, Path]:
    """A jobqueue-worker process with TLS and a token file, as a pod would run it."""
    token_file = tmp_path / f"{name}.token"
    token_file.write_text(token)
    log = tmp_path / f"{name}.log"
    environment = {key: value for key, value in os.environ.items() if not key.startswith("JQ_")}
    environment["PYTHONPATH"] = str(REPOSITORY)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "jobqueue.worker.main",
        "--operator", operator.address, "--ca-file", str(operator.ca_file),
        "--token-file", str(token_file), "--queue", queue, "--pool", pool,
        "--worker-id", name, "--http-address", "", "--log-format", "text",
        cwd=REPOSITORY, env=environment, stdout=log.open("wb"), stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    return process, log


@pytest.fixture
async def processes() -> AsyncIterator[list[asyncio.subprocess.Process]]:
    started: list[asyncio.subprocess.Process] = []
    yield started
    for process in started:
        if process.returncode is None:
            process.kill()
            await process.wait()


def worker_stub(operator: SecureOperator, token: str) -> tuple[grpc.aio.Channel, object]:
    security = ChannelSecurity(ca_file=operator.ca_file, token=StaticToken(token))
    channel = open_aio_channel(operator.address, security)
    return channel, workers_pb2_grpc.WorkerServiceStub(channel)


def register(worker_id: str, queue: str, pool: str) -> workers_pb2.RegisterRequest:
    return workers_pb2.RegisterRequest(worker_id=worker_id, queue=queue, pool=pool, concurrency=1)


async def refused_with(call: object) -> tuple[grpc.StatusCode, str]:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or ""
    raise AssertionError("the call was not refused")


async def refused_on_stream(
    call: grpc.aio.StreamStreamCall[workers_pb2.ReportBatch, workers_pb2.ReportAnswer],
    batch: workers_pb2.ReportBatch,
) -> tuple[grpc.StatusCode, str]:
    """Send one batch; the status the stream then ended with."""
    await call.write(batch)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call.read()
    return refused.value.code(), refused.value.details() or ""


def submitter(cluster: Cluster, queues: Sequence[str]) -> str:
    account = cluster.service_account("submitter")
    cluster.grant(account, ["submit", "get", "watch"], queues)
    return cluster.token(account)


async def test_a_worker_with_another_pools_token_cannot_take_its_jobs(
    operator: SecureOperator,
    cluster: Cluster,
    tmp_path: Path,
    processes: list[asyncio.subprocess.Process],
) -> None:
    # One ServiceAccount for both pools, allowed to work on both queues: only the pod
    # binding tells the pools apart.
    account = cluster.service_account("workers")
    cluster.grant(account, ["work"], [QUEUE_A, QUEUE_B])
    cluster.worker_pool("pool-a", queue=QUEUE_A)
    cluster.worker_pool("pool-b", queue=QUEUE_B)
    pod_a = cluster.worker_pod("pool-a-1", account=account, pool="pool-a", queue=QUEUE_A)
    pod_b = cluster.worker_pod("pool-b-1", account=account, pool="pool-b", queue=QUEUE_B)
    async with operator.client(submitter(cluster, [QUEUE_B])) as client:
        job = await client.submit(job_spec(QUEUE_B, command=["echo", "done"]))

        intruder, log = await start_worker(
            operator, cluster.token(account, pod=pod_a), tmp_path,
            queue=QUEUE_B, pool="pool-b", name="intruder",
        )  # fmt: skip
        processes.append(intruder)
        assert await asyncio.wait_for(intruder.wait(), timeout=30) == 1
        assert "belongs to pool pool-a" in log.read_text()
        assert (await client.get(job.id)).state == jobs_pb2.JOB_STATE_PENDING

        worker, _ = await start_worker(
            operator, cluster.token(account, pod=pod_b), tmp_path,
            queue=QUEUE_B, pool="pool-b", name="pool-b-1",
        )  # fmt: skip
        processes.append(worker)
        final = await client.wait(job.id, timeout_s=30)

    assert final.state == jobs_pb2.JOB_STATE_SUCCEEDED
    assert final.worker_id == "pool-b-1"


async def test_a_pod_registering_for_a_queue_its_pool_does_not_serve_is_refused(
    operator: SecureOperator, cluster: Cluster
) -> None:
    account = cluster.service_account("workers")
    cluster.grant(account, ["work"], [QUEUE_A, QUEUE_B])
    cluster.worker_pool("pool-a", queue=QUEUE_A)
    # A pod whose labels lie about its queue: the pool resource is what counts.
    liar = cluster.worker_pod("liar", account=account, pool="pool-a", queue=QUEUE_B)
    channel, stub = worker_stub(operator, cluster.token(account, pod=liar))
    async with channel:
        code, details = await refused_with(stub.Register(register("liar", QUEUE_B, "pool-a")))  # type: ignore[attr-defined]

    assert code == PERMISSION_DENIED
    assert "QueueWorkerPool" in details
    assert "serves queue queue-a" in details


async def test_a_worker_id_belongs_to_the_identity_that_registered_it(
    operator: SecureOperator, cluster: Cluster
) -> None:
    account = cluster.service_account("workers")
    binding = cluster.grant(account, ["work"], [QUEUE_A])
    cluster.worker_pool("pool-a", queue=QUEUE_A)
    first = cluster.worker_pod("pool-a-1", account=account, pool="pool-a", queue=QUEUE_A)
    second = cluster.worker_pod("pool-a-2", account=account, pool="pool-a", queue=QUEUE_A)
    owner_channel, owner = worker_stub(operator, cluster.token(account, pod=first))
    other_channel, other = worker_stub(operator, cluster.token(account, pod=second))
    # The kubelet's next token for the same pod: the same identity.
    rotated_channel, rotated = worker_stub(operator, cluster.token(account, pod=first))
    heartbeat = workers_pb2.HeartbeatRequest(worker_id="pool-a-1")

    async with owner_channel, other_channel, rotated_channel:
        await owner.Register(register("pool-a-1", QUEUE_A, "pool-a"))  # type: ignore[attr-defined]

        code, details = await refused_with(other.Heartbeat(heartbeat))  # type: ignore[attr-defined]
        assert code == PERMISSION_DENIED
        assert "pool-a-2" in details
        code, _ = await refused_with(other.Register(register("pool-a-1", QUEUE_A, "pool-a")))  # type: ignore[attr-defined]
        assert code == PERMISSION_DENIED
        # Every batch on a Report stream is checked like a unary call.
        report = workers_pb2.ReportBatch(id=1, worker_id="pool-a-1")
        code, details = await refused_on_stream(other.Report(), report)  # type: ignore[attr-defined]
        assert code == PERMISSION_DENIED
        assert "pool-a-2" in details
        await rotated.Heartbeat(heartbeat)  # type: ignore[attr-defined]
        own_stream = owner.Report()  # type: ignore[attr-defined]
        await own_stream.write(report)
        answer = await own_stream.read()
        own_stream.cancel()
        assert (answer.id, answer.error_code) == (1, 0)

        # Revoking the right to work ends the worker's next heartbeat.
        cluster.revoke(binding)

        async def heartbeat_denied() -> bool:
            try:
                await owner.Heartbeat(heartbeat)  # type: ignore[attr-defined]
            except grpc.aio.AioRpcError as error:
                return error.code() == PERMISSION_DENIED
            return False

        await eventually(heartbeat_denied, timeout_s=CACHE_TTL_S + 10)


async def test_a_worker_outside_a_pod_needs_its_user_listed(
    operator: SecureOperator,
    start_operator: StartOperator,
    cluster: Cluster,
    tmp_path: Path,
    processes: list[asyncio.subprocess.Process],
) -> None:
    account = cluster.service_account("local-worker")
    cluster.grant(account, ["work"], [QUEUE_A])
    token = cluster.token(account)
    channel, stub = worker_stub(operator, token)
    async with channel:
        code, details = await refused_with(stub.Register(register("laptop", QUEUE_A, "")))  # type: ignore[attr-defined]
    assert code == PERMISSION_DENIED
    assert "operator.auth.unbound_workers" in details

    async with start_operator(
        {"JQ_OPERATOR_AUTH_UNBOUND_WORKERS": cluster.username(account)}
    ) as listed:
        worker, _ = await start_worker(
            listed, token, tmp_path, queue=QUEUE_A, pool="", name="laptop"
        )
        processes.append(worker)
        async with listed.client(submitter(cluster, [QUEUE_A])) as client:
            job = await client.submit(job_spec(QUEUE_A, command=["echo", "from a laptop"]))
            final = await client.wait(job.id, timeout_s=30)

    assert final.state == jobs_pb2.JOB_STATE_SUCCEEDED
    assert final.output.strip() == "from a laptop"


async def test_job_payloads_and_outputs_stay_out_of_the_logs(
    start_operator: StartOperator,
    cluster: Cluster,
    tmp_path: Path,
    processes: list[asyncio.subprocess.Process],
    caplog: pytest.LogCaptureFixture,
) -> None:
    account = cluster.service_account("local-worker")
    cluster.grant(account, ["work"], [QUEUE_A])
    secret = "s3cr3t-payload-marker"
    command = [sys.executable, "-c", f"import sys; print('{secret}-out'); sys.exit(3)"]

    with caplog.at_level(logging.INFO):
        async with start_operator(
            {"JQ_OPERATOR_AUTH_UNBOUND_WORKERS": cluster.username(account)}
        ) as operator:
            worker, worker_log = await start_worker(
                operator, cluster.token(account), tmp_path, queue=QUEUE_A, pool="", name="w"
            )
            processes.append(worker)
            async with operator.client(submitter(cluster, [QUEUE_A])) as client:
                spec = job_spec(
                    QUEUE_A, command=command, env={"MARKER": f"{secret}-env"}, max_attempts=1
                )
                final = await client.wait((await client.submit(spec)).id, timeout_s=30)

    assert f"{secret}-out" in final.output  # the output is kept, for those allowed to read it
    assert secret not in caplog.text
    assert secret not in worker_log.read_text()
