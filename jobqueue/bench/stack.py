"""The real stack the benchmark drives: servers, a database, the operator and its workers.

``Servers`` says where PostgreSQL, Redis and Kafka are: the benchmark starts its own
with ``jobqueue.devenv`` (no Kubernetes: dispatch does not need it) unless it is given
running ones, as the test that keeps the benchmark from rotting does. Each run gets a
database of its own, migrated from empty and dropped at the end, and a Kafka topic prefix
of its own, so it shares nothing with tests or an earlier run.

The operator and the workers are child processes (``ManagedProcess``: they die with the
benchmark, however it ends), started from this thread and logged to files in the run's
directory, which a failure quotes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from jobqueue.client import AsyncClient
from jobqueue.devenv import Environment
from jobqueue.devenv.processes import ManagedProcess, free_port
from jobqueue.errors import JobQueueError, TemporaryError
from jobqueue.store import apply_migrations

# Seconds the operator and the workers get to come up on a loaded two-core machine.
START_TIMEOUT_S = 60.0


class StackFailedError(TemporaryError):
    """A process of the benchmark's stack exited or did not come up in time."""


@dataclass(frozen=True)
class Servers:
    """Where the servers are; ``admin_dsn`` may create and drop databases."""

    admin_dsn: str
    redis_url: str
    kafka_bootstrap_servers: str


@contextlib.contextmanager
def local_servers() -> Iterator[Servers]:
    """PostgreSQL, Redis and Kafka of the local environment, up for the block."""
    with Environment(components={"postgres", "redis", "kafka"}) as environment:
        assert environment.postgres
        assert environment.redis
        assert environment.kafka
        yield Servers(
            admin_dsn=environment.postgres.dsn,
            redis_url=environment.redis.url,
            kafka_bootstrap_servers=environment.kafka.bootstrap_servers,
        )


@contextlib.contextmanager
def fresh_database(admin_dsn: str) -> Iterator[str]:
    """A migrated database of the run's own; its DSN. Dropped (forcibly) at the end."""
    name = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_dsn, autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    # A URL, not libpq's key=value form: the settings accept only postgresql:// URLs.
    dsn = urllib.parse.urlsplit(admin_dsn)._replace(path=f"/{name}").geturl()
    try:
        apply_migrations(dsn)
        yield dsn
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as connection:
            connection.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@dataclass
class OperatorProcess:
    process: ManagedProcess
    address: str
    profile_output: Path

    @property
    def pid(self) -> int:
        assert self.process.pid is not None  # started before this object exists
        return self.process.pid

    def signal(self, signum: signal.Signals) -> None:
        if self.process.pid is not None:
            os.kill(self.process.pid, signum)

    def check_running(self) -> None:
        if not self.process.running():
            raise StackFailedError(
                f"the operator exited; its log {self.process.log_path} ends with:\n"
                f"{self.process.log_tail()}"
            )


def _child_environment(**variables: str) -> dict[str, str]:
    # The children import this very checkout, whether or not it is installed.
    repository = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(filter(None, [repository, os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **variables}


@contextlib.asynccontextmanager
async def operator_process(
    database_url: str, servers: Servers, prefix: str, run_dir: Path, *, topic_partitions: int = 1
) -> AsyncIterator[OperatorProcess]:
    """The operator in a child process, serving gRPC on a free loopback port; ``prefix``
    starts its Kafka topics and Redis keys, which have ``topic_partitions`` each."""
    address = f"127.0.0.1:{free_port()}"
    environment = _child_environment(
        JQ_DATABASE_URL=database_url,
        JQ_REDIS_URL=servers.redis_url,
        JQ_KAFKA_BOOTSTRAP_SERVERS=servers.kafka_bootstrap_servers,
        JQ_REDIS_KEY_PREFIX=prefix,
        JQ_KAFKA_TOPIC_PREFIX=prefix,
        JQ_KAFKA_TOPIC_PARTITIONS=str(topic_partitions),
        JQ_OPERATOR_GRPC_ADDRESS=address,
        JQ_OPERATOR_HTTP_ADDRESS="",
        # The benchmark measures queueing, like the queues it is compared with, which have
        # neither TLS nor per-call authentication (what those cost per call is in
        # docs/security.md).
        JQ_OPERATOR_TLS_INSECURE_PLAINTEXT="true",
        JQ_OPERATOR_AUTH_MODE="none",
    )
    profile_output = run_dir / "operator.pyisession"
    profile = str(profile_output)
    process = ManagedProcess(
        "operator",
        [sys.executable, "-m", "jobqueue.bench.operator_process", "--profile-output", profile],
        log_path=run_dir / "operator.log",
        env=environment,
    )
    process.start()
    running = OperatorProcess(process, address, profile_output)
    try:
        await _wait_until_serving(running)
        yield running
    finally:
        await asyncio.to_thread(process.stop)


async def _wait_until_serving(running: OperatorProcess) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    async with AsyncClient(running.address, plaintext=True, timeout_s=2.0) as client:
        while True:
            running.check_running()
            try:
                await client.system_status()
                return
            except JobQueueError:
                if time.monotonic() > deadline:
                    raise StackFailedError(
                        f"the operator did not serve gRPC within {START_TIMEOUT_S:g} s"
                    ) from None
                await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def worker_processes(
    operator_address: str,
    queue: str,
    *,
    count: int,
    concurrency: int,
    handler: str,
    run_dir: Path,
) -> AsyncIterator[list[ManagedProcess]]:
    """``count`` real ``jobqueue-worker`` processes serving ``queue``; killed at the end."""
    environment = _child_environment(JQ_WORKER_TLS_INSECURE_PLAINTEXT="true")
    workers = []
    for index in range(count):
        worker_id = f"bench-worker-{index}"
        argv = [sys.executable, "-m", "jobqueue.worker.main", "--operator", operator_address]
        argv += ["--queue", queue, "--concurrency", str(concurrency), "--worker-id", worker_id]
        argv += ["--handler", handler, "--http-address", "", "--log-format", "json"]
        workers.append(
            ManagedProcess(worker_id, argv, log_path=run_dir / f"{worker_id}.log", env=environment)
        )
    try:
        for worker in workers:
            worker.start()
        yield workers
    finally:
        # Idle by now, each drains at once on SIGTERM.
        for worker in workers:
            await asyncio.to_thread(worker.stop, 5.0)


async def wait_for_workers(
    client: AsyncClient, queue: str, workers: list[ManagedProcess], operator: OperatorProcess
) -> None:
    """Return once every worker holds an open stream to the operator."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while (await client.queue_stats(queue)).connected_workers < len(workers):
        operator.check_running()
        for worker in workers:
            if not worker.running():
                raise StackFailedError(
                    f"{worker.name} exited; its log {worker.log_path} ends with:\n"
                    f"{worker.log_tail()}"
                )
        if time.monotonic() > deadline:
            raise StackFailedError(f"the workers did not connect within {START_TIMEOUT_S:g} s")
        await asyncio.sleep(0.1)
