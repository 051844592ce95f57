"""An operator (in the test's event loop) and worker processes, on the real servers.

The operator runs in-process through ``running_operator`` (gRPC on a loopback port,
PostgreSQL, Redis and Kafka from the session's environment; no kopf: these tests are
about dispatch). Workers are real ``jobqueue-worker`` processes, so killing one with
SIGKILL is what it says.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc.aio
import pytest

from jobqueue.api.v1 import workers_pb2, workers_pb2_grpc
from jobqueue.client import AsyncClient
from jobqueue.config import Settings, load_settings
from jobqueue.devenv import Environment
from jobqueue.devenv.processes import free_port
from jobqueue.operator.app import Parts, running_operator
from jobqueue.store import Backoff, JobStore, QueuePolicy
from tests.conftest import KafkaTarget
from tests.polling import eventually

REPOSITORY = Path(__file__).resolve().parents[3]
HANDLERS = "tests.integration.operator.handlers"
QUEUE = "work"


def operator_settings(
    database_url: str,
    redis_url: str,
    kafka: KafkaTarget,
    grpc_port: int,
    lease_s: float = 3.0,
    **more: str,
) -> Settings:
    """Settings for an operator on the session's servers; ``more`` overrides or adds JQ_*."""
    return load_settings(
        None,
        environ={
            "JQ_DATABASE_URL": database_url,
            "JQ_REDIS_URL": redis_url,
            "JQ_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
            "JQ_KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
            "JQ_OPERATOR_GRPC_ADDRESS": f"127.0.0.1:{grpc_port}",
            "JQ_OPERATOR_HTTP_ADDRESS": "",
            "JQ_OPERATOR_LEASE_S": str(lease_s),
            "JQ_OPERATOR_POLL_INTERVAL_S": "0.2",
            # These tests are about dispatch; tests/integration/security runs the same
            # operator with TLS, tokens and RBAC.
            "JQ_OPERATOR_TLS_INSECURE_PLAINTEXT": "true",
            "JQ_OPERATOR_AUTH_MODE": "none",
        }
        | more,
    )


def operator_environment(
    devenv: Environment, database_url: str, redis_url: str, kafka: KafkaTarget, **more: str
) -> dict[str, str]:
    """The environment of a ``jobqueue-operator`` process on the session's servers."""
    assert devenv.kubeconfig is not None
    return {
        **os.environ,
        "PYTHONPATH": str(REPOSITORY),
        "KUBECONFIG": str(devenv.kubeconfig),
        "JQ_DATABASE_URL": database_url,
        "JQ_REDIS_URL": redis_url,
        "JQ_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "JQ_KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
        "JQ_LOGGING_FORMAT": "text",
        # TLS and authentication have tests of their own (tests/integration/security).
        "JQ_OPERATOR_TLS_INSECURE_PLAINTEXT": "true",
        "JQ_OPERATOR_AUTH_MODE": "none",
        **more,
    }


async def create_queue(store: JobStore, name: str = QUEUE, **policy: object) -> None:
    defaults: dict[str, object] = {
        "max_attempts": 3,
        "backoff": Backoff(initial_s=0.05, multiplier=1.0, max_s=0.05, jitter=0.0),
    }
    await store.apply_queue(QueuePolicy(name=name, **{**defaults, **policy}))  # type: ignore[arg-type]


@dataclass
class Workers:
    """Worker processes started by a test; all are killed when it ends."""

    log_dir: Path
    processes: list[asyncio.subprocess.Process] = field(default_factory=list)

    async def start(
        self,
        port: int,
        *,
        queue: str = QUEUE,
        concurrency: int = 4,
        drain_grace_s: float = 10.0,
        worker_id: str | None = None,
        extra: Sequence[str] = (),
    ) -> asyncio.subprocess.Process:
        index = len(self.processes)
        log = (self.log_dir / f"worker-{index}.log").open("wb")
        environment = {
            **os.environ,
            "PYTHONPATH": str(REPOSITORY),
            "JQ_WORKER_DRAIN_GRACE_S": str(drain_grace_s),
            "JQ_WORKER_TLS_INSECURE_PLAINTEXT": "true",
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "jobqueue.worker.main",
            "--operator",
            f"127.0.0.1:{port}",
            "--queue",
            queue,
            "--concurrency",
            str(concurrency),
            "--worker-id",
            worker_id or f"worker-{index}",
            "--http-address",
            "",
            "--log-format",
            "text",
            "--handler",
            f"{HANDLERS}:add",
            "--handler",
            f"{HANDLERS}:fail",
            "--handler",
            f"{HANDLERS}:wait_forever",
            *extra,
            cwd=REPOSITORY,
            env=environment,
            stdout=log,
            stderr=log,
        )
        self.processes.append(process)
        return process

    def kill_all(self) -> None:
        for process in self.processes:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGKILL)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    started = Workers(tmp_path)
    yield started
    started.kill_all()


@dataclass
class Operator:
    settings: Settings
    port: int
    parts: Parts
    client: AsyncClient


@contextlib.asynccontextmanager
async def operator_running(
    settings: Settings, *, with_kopf: bool = False
) -> AsyncIterator[Operator]:
    """An operator in this event loop; with kopf, once it watches its namespaces."""
    port = int(settings.operator.grpc_address.rpartition(":")[2])
    async with (
        running_operator(settings, migrate=False, with_kopf=with_kopf) as parts,
        AsyncClient(f"127.0.0.1:{port}", plaintext=True, timeout_s=10) as client,
    ):
        if parts.reconcilers is not None:
            assert await asyncio.to_thread(parts.reconcilers.ready.wait, 30), "kopf never got ready"
        yield Operator(settings, port, parts, client)


@pytest.fixture
async def operator(
    database_url: str, redis_url: str, kafka: KafkaTarget
) -> AsyncIterator[Operator]:
    settings = operator_settings(database_url, redis_url, kafka, free_port())
    async with operator_running(settings) as running:
        await create_queue(running.parts.store)
        yield running


async def wait_for(condition: Callable[[], Awaitable[bool]], timeout_s: float = 20.0) -> None:
    """Poll an async predicate until it holds; for state with no event to await."""
    await eventually(condition, timeout_s)


@contextlib.asynccontextmanager
async def worker_by_hand(
    operator: Operator, concurrency: int = 1
) -> AsyncIterator[workers_pb2_grpc.WorkerServiceStub]:
    """A WorkerService stub registered as worker "hand", for calls by hand."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{operator.port}") as channel:
        stub = workers_pb2_grpc.WorkerServiceStub(channel)
        await stub.Register(
            workers_pb2.RegisterRequest(worker_id="hand", queue=QUEUE, concurrency=concurrency)
        )
        yield stub
