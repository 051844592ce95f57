"""The operator process: every part started in one event loop, stopped in reverse order.

``run_operator`` opens the store (PostgreSQL is required: without it nothing can be
accepted), then the parts that may be degraded without stopping the queue: Redis
(wake-ups and rate-limit tokens; dispatch falls back to polling and to local buckets) and
the outbox relay to Kafka (events wait in PostgreSQL while the broker is away). Then it
serves gRPC, runs the scheduler and, unless told not to, the kopf reconcilers.

The gRPC API is TLS (``tls``: the certificate from files, rotated without a restart) and
every call is authenticated and authorized against Kubernetes (``auth``) unless the
settings turn either off by name, for local development.

Shutdown (SIGTERM): stop accepting calls (gRPC grace period), stop dispatching, let
the relay finish its batch, close the connections. Workers see their streams end and
reconnect to another replica; their leases carry their running jobs across.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import grpc.aio
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from kubernetes import client as kube_client
from psycopg.conninfo import make_conninfo

from jobqueue.api.v1 import admin_pb2_grpc, jobs_pb2_grpc, workers_pb2_grpc
from jobqueue.config import Settings
from jobqueue.errors import ConfigError, UnavailableError
from jobqueue.events import OutboxRelay
from jobqueue.health import Check, Report, run_checks, serve
from jobqueue.operator.auth import KubernetesReviews, StoreDirectory, build_interceptor
from jobqueue.operator.dispatch import Scheduler, SchedulerSettings
from jobqueue.operator.monitor import QueueMonitor
from jobqueue.operator.reconcile import Reconcilers, SchedulerLink
from jobqueue.operator.services import AdminService, HeartbeatSink, JobService, WorkerService
from jobqueue.operator.tls import server_credentials
from jobqueue.resources import api_client_from_environment
from jobqueue.state import LocalTokenBucket, RedisState
from jobqueue.store import JobStore, apply_migrations

logger = logging.getLogger(__name__)

# Seconds running calls get to finish when the gRPC server stops.
GRPC_STOP_GRACE_S = 5.0


def operator_id() -> str:
    """This replica's name: the pod's name in Kubernetes, else host and process id."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


def database_dsn(settings: Settings) -> str:
    """The libpq connection string: the URL, with the password and options merged in."""
    database = settings.database
    if not database.url:
        raise ConfigError("database.url: must be set (JQ_DATABASE_URL)")
    options: dict[str, str | int] = {"connect_timeout": max(1, round(database.connect_timeout_s))}
    if database.password:
        options["password"] = database.password
    if database.sslmode:
        options["sslmode"] = database.sslmode
    if database.ssl_root_cert:
        options["sslrootcert"] = database.ssl_root_cert
    return make_conninfo(database.url, **options)


def split_address(address: str, what: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"{what}: must be HOST:PORT, got {address!r}")
    return host, int(port)


@dataclass
class Parts:
    """The running parts, for tests and the dry run."""

    store: JobStore
    scheduler: Scheduler
    grpc_port: int
    state: RedisState | None
    monitor: QueueMonitor
    reconcilers: Reconcilers | None  # kopf, when it runs; its ``ready`` is set once it watches


async def _open_state(settings: Settings) -> RedisState | None:
    if not settings.redis.url:
        logger.warning("No Redis configured: dispatch polls and rate limits are per replica.")
        return None
    return await RedisState.open(
        settings.redis.url,
        key_prefix=settings.redis.key_prefix,
        socket_timeout_s=settings.redis.socket_timeout_s,
        username=settings.redis.username,
        password=settings.redis.password,
        ssl_ca_file=settings.redis.ssl_ca_file,
    )


def _checks(store: JobStore, state: RedisState | None, settings: Settings) -> list[Check]:
    checks = [Check("postgresql", store.check, critical=True)]
    if state is not None:
        checks.append(Check("redis", state.ping, critical=False))
    if settings.kafka.bootstrap_servers:
        servers = settings.kafka.bootstrap_servers

        async def kafka() -> None:
            await asyncio.to_thread(kafka_metadata, servers)

        checks.append(Check("kafka", kafka, critical=False))
    return checks


def kafka_metadata(bootstrap_servers: str, timeout_s: float = 2.0) -> None:
    """Ask the cluster for its metadata: the cheapest call that proves a broker answers."""
    try:
        AdminClient({"bootstrap.servers": bootstrap_servers}).list_topics(timeout=timeout_s)
    except KafkaException as error:
        raise UnavailableError(f"Kafka at {bootstrap_servers} does not answer: {error}") from error


@contextlib.asynccontextmanager
async def running_operator(
    settings: Settings,
    *,
    migrate: bool = True,
    with_kopf: bool = False,
    api_client: kube_client.ApiClient | None = None,
) -> AsyncIterator[Parts]:
    """Everything the operator runs, started; stopped when the block ends.

    ``api_client`` is the cluster the gRPC API checks callers against; without it, the
    one of the environment (in-cluster, else ``$KUBECONFIG``).
    """
    dsn = database_dsn(settings)
    if migrate:
        await asyncio.to_thread(apply_migrations, dsn)
    stop = asyncio.Event()
    async with contextlib.AsyncExitStack() as stack:
        store = await JobStore.open(
            dsn, min_size=settings.database.pool_min_size, max_size=settings.database.pool_max_size
        )
        stack.push_async_callback(store.close)
        state = await _open_state(settings)
        if state is not None:
            stack.push_async_callback(state.close)

        scheduler = _scheduler(store, state, settings)
        checks = _checks(store, state, settings)

        async def probe() -> Report:
            return await run_checks(checks)

        interceptors = _auth_interceptors(settings, store, scheduler, api_client, stack)
        server, port = await _start_grpc(
            store, scheduler, state, probe, settings, interceptors=interceptors
        )
        stack.push_async_callback(server.stop, GRPC_STOP_GRACE_S)

        monitor = QueueMonitor(
            store,
            interval_s=settings.operator.status_interval_s,
            worker_seen_within_s=settings.operator.lease_s,
        )
        tasks = _background_tasks(scheduler, state, settings, dsn=dsn, stop=stop)
        tasks.append(asyncio.create_task(monitor.run(stop), name="queue-monitor"))
        stack.push_async_callback(_stop_tasks, tasks, stop)

        reconcilers = None
        if with_kopf:
            link = SchedulerLink(scheduler, asyncio.get_running_loop())
            reconcilers = Reconcilers(settings, dsn, monitor, link)
            reconcilers.start()
            stack.push_async_callback(reconcilers.stop)

        if settings.operator.http_address:
            host, http_port = split_address(settings.operator.http_address, "operator.http_address")
            runner = await serve(checks, host, http_port)
            stack.push_async_callback(runner.cleanup)

        logger.info("Operator %s serving gRPC on port %d.", scheduler.operator_id, port)
        yield Parts(store, scheduler, port, state, monitor, reconcilers)


def _scheduler(store: JobStore, state: RedisState | None, settings: Settings) -> Scheduler:
    scheduler_settings = SchedulerSettings(
        lease_s=settings.operator.lease_s,
        poll_interval_s=settings.operator.poll_interval_s,
        heartbeat_interval_s=min(5.0, settings.operator.lease_s / 3),
    )
    return Scheduler(
        store,
        operator_id=operator_id(),
        settings=scheduler_settings,
        tokens=state,
        fallback_tokens=LocalTokenBucket(),
        wakeup_bus=state,
    )


def _auth_interceptors(
    settings: Settings,
    store: JobStore,
    scheduler: Scheduler,
    api_client: kube_client.ApiClient | None,
    stack: contextlib.AsyncExitStack,
) -> list[grpc.aio.ServerInterceptor]:
    """The interceptor that admits each call, or none when auth is off by name."""
    auth = settings.operator.auth
    if auth.mode == "none":
        logger.warning(
            "Authentication and authorization are OFF (operator.auth.mode: none): anyone who "
            "reaches the gRPC API can submit, cancel and run jobs. Local development only."
        )
        return []
    if api_client is None:
        api_client = api_client_from_environment()
        stack.callback(api_client.close)
    reviews = KubernetesReviews(api_client)
    stack.callback(reviews.close)
    directory = StoreDirectory(store, namespace_ttl_s=auth.cache_ttl_s)
    return [build_interceptor(auth, reviews, directory, scheduler.sessions.keys)]


# The shortest interval at which the gRPC server accepts keepalive pings while no data
# flows; a ping sooner is a strike, and the third strike in a row ends the connection with
# GOAWAY (gRPC's default interval is 5 minutes, which ends a client's quiet SubmitStream
# within a few pings). Clients ping every jobqueue.channels.KEEPALIVE_TIME_MS (30 s).
MIN_PING_INTERVAL_MS = 10_000


async def _start_grpc(
    store: JobStore,
    scheduler: Scheduler,
    state: RedisState | None,
    probe: Callable[[], Awaitable[Report]],
    settings: Settings,
    *,
    interceptors: list[grpc.aio.ServerInterceptor],
) -> tuple[grpc.aio.Server, int]:
    credentials = server_credentials(settings.operator.tls)  # before anything listens
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.http2.min_ping_interval_without_data_ms", MIN_PING_INTERVAL_MS),
            ("grpc.keepalive_permit_without_calls", 1),
        ],
    )
    heartbeats = HeartbeatSink(state, ttl_s=scheduler.settings.lease_s) if state else None
    jobs_pb2_grpc.add_JobServiceServicer_to_server(JobService(store, scheduler), server)
    workers_pb2_grpc.add_WorkerServiceServicer_to_server(
        WorkerService(scheduler, heartbeats), server
    )
    admin = AdminService(store, scheduler, probe, drain_grace_s=settings.worker.drain_grace_s)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(admin, server)
    address = settings.operator.grpc_address
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise ConfigError(
            f"operator.grpc_address: cannot listen on {settings.operator.grpc_address}"
        )
    await server.start()
    return server, port


def _background_tasks(
    scheduler: Scheduler,
    state: RedisState | None,
    settings: Settings,
    *,
    dsn: str,
    stop: asyncio.Event,
) -> list[asyncio.Task[None]]:
    tasks = [asyncio.create_task(scheduler.run(stop), name="scheduler")]
    if state is not None:
        tasks.append(asyncio.create_task(_follow_wakeups(scheduler, state, stop), name="wakeups"))
    if settings.kafka.bootstrap_servers:
        relay = OutboxRelay(dsn, settings.kafka)
        tasks.append(asyncio.create_task(relay.run(stop), name="outbox-relay"))
    else:
        logger.warning("No Kafka configured: job events stay in PostgreSQL, unpublished.")
    return tasks


async def _follow_wakeups(scheduler: Scheduler, state: RedisState, stop: asyncio.Event) -> None:
    """Wake the scheduler when another replica announces work; reconnect after outages."""
    delay_s = 0.1
    while not stop.is_set():
        try:
            async for queue in state.wakeups():
                scheduler.wake(queue)
                delay_s = 0.1
        except UnavailableError as error:
            logger.debug("Wake-up subscription lost (%s); polling meanwhile.", error)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay_s):
                await stop.wait()
        delay_s = min(5.0, delay_s * 2)


async def _stop_tasks(tasks: list[asyncio.Task[None]], stop: asyncio.Event) -> None:
    stop.set()
    for task in tasks:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for task, result in zip(tasks, results, strict=True):
        if isinstance(result, Exception):
            logger.error("Task %s failed while stopping.", task.get_name(), exc_info=result)
