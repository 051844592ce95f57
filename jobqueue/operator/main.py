"""Entry point of ``jobqueue-operator``.

Settings come from ``--config`` (or ``JQ_CONFIG``) and ``JQ_*`` variables; the few flags
here override them. ``--dry-run`` connects to every dependency, prints each one's state
and exits 1 if one cannot be reached, so an install can be checked before it serves.

Exit codes: 0 a clean stop (SIGTERM, SIGINT), 1 a dependency failed at start or a dry run
found one unreachable, 2 bad command line or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import redis.asyncio
from kubernetes import client as kube_client

from jobqueue import __version__, logs, memory
from jobqueue.config import Settings, load_settings
from jobqueue.errors import ConfigError, JobQueueError
from jobqueue.health import Check, Health, run_checks
from jobqueue.operator.app import database_dsn, kafka_metadata, running_operator
from jobqueue.operator.tls import load_pair, server_credentials
from jobqueue.resources import api_client_from_environment

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jobqueue-operator",
        description=(
            "Reconcile JobQueue and QueueWorkerPool resources, serve the jobqueue gRPC API "
            "and dispatch jobs to connected workers."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--config", help="YAML settings file (default: $JQ_CONFIG)")
    parser.add_argument("--grpc-address", help="HOST:PORT for the gRPC API")
    parser.add_argument("--http-address", help="HOST:PORT for /metrics, /healthz, /readyz")
    parser.add_argument(
        "--no-kopf",
        action="store_true",
        help="serve gRPC and dispatch only; do not reconcile resources (no cluster needed)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="check every dependency, print, and exit"
    )
    parser.add_argument("--log-format", choices=["auto", "json", "text"])
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        "JQ_OPERATOR_GRPC_ADDRESS": args.grpc_address,
        "JQ_OPERATOR_HTTP_ADDRESS": args.http_address,
        "JQ_LOGGING_FORMAT": args.log_format,
    }
    environ = dict(os.environ)
    environ.update({name: value for name, value in overrides.items() if value is not None})
    return load_settings(args.config, environ=environ)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = _settings(args)
    except ConfigError as error:
        print(f"jobqueue-operator: {error}", file=sys.stderr)
        return 2
    logs.configure(settings.logging.level, format=settings.logging.format)
    if args.dry_run:
        return asyncio.run(dry_run(settings, with_cluster=not args.no_kopf))
    try:
        asyncio.run(serve(settings, with_kopf=not args.no_kopf))
    except JobQueueError as error:
        logger.error("The operator cannot start: %s", error)
        return 1
    return 0


async def serve(settings: Settings, *, with_kopf: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.set_exception_handler(quiet_abandoned_requests(stop.is_set))
    async with running_operator(settings, with_kopf=with_kopf):
        memory.freeze_startup()
        await stop.wait()
        logger.info("Stopping: finishing calls in flight, then closing connections.")


ExceptionHandler = Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]


def quiet_abandoned_requests(stopping: Callable[[], bool]) -> ExceptionHandler:
    """The loop's exception handler: asyncio's own, but for Kubernetes requests that fail
    only because the operator is stopping.

    kopf reads the cluster's API groups in tasks it does not cancel with the one awaiting
    them; stopped while it reads (a SIGTERM soon after the start), those tasks fail as
    kopf closes its HTTP session, and asyncio would log each failure nobody awaited as an
    error with its traceback. Once stopping, such a failure is logged at DEBUG instead.
    """

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get("exception")
        if (
            stopping()
            and isinstance(error, aiohttp.ClientError)
            and isinstance(context.get("future"), asyncio.Future)
        ):
            logger.debug("A Kubernetes request left running at the stop failed: %r", error)
            return
        loop.default_exception_handler(context)

    return handle


async def dry_run(settings: Settings, *, with_cluster: bool) -> int:
    """Check each dependency; print one line each; 1 if any is unreachable."""
    checks = [
        Check("postgresql", lambda: _check_database(settings), critical=True),
        Check("tls", lambda: _check_tls(settings), critical=True),
    ]
    if settings.redis.url:
        checks.append(Check("redis", lambda: _check_redis(settings), critical=True))
    if settings.kafka.bootstrap_servers:
        checks.append(Check("kafka", lambda: _check_kafka(settings), critical=True))
    if with_cluster:
        checks.append(Check("kubernetes", _check_cluster, critical=True, timeout_s=5.0))
    report = await run_checks(checks)
    for result in report.results:
        print(f"{result.name:<11} {result.health.value:<9} {result.message}")
    return 0 if report.health is Health.OK else 1


async def _check_tls(settings: Settings) -> None:
    """The certificate and key load and belong together (or plaintext was asked for)."""
    tls = settings.operator.tls
    if tls.insecure_plaintext:
        return
    if not tls.cert_file or not tls.key_file:
        server_credentials(tls)  # raises, saying what to set
        return
    load_pair(Path(tls.cert_file), Path(tls.key_file))


async def _check_database(settings: Settings) -> None:
    async with await psycopg.AsyncConnection.connect(database_dsn(settings)) as connection:
        await connection.execute("SELECT 1")


async def _check_redis(settings: Settings) -> None:
    client = redis.asyncio.Redis.from_url(
        settings.redis.url or "", password=settings.redis.password
    )
    try:
        await client.ping()
    finally:
        await client.aclose()


async def _check_kafka(settings: Settings) -> None:
    await asyncio.to_thread(kafka_metadata, settings.kafka.bootstrap_servers or "")


async def _check_cluster() -> None:
    def version() -> None:
        with api_client_from_environment() as api:
            kube_client.VersionApi(api).get_code()

    await asyncio.to_thread(version)


if __name__ == "__main__":
    sys.exit(main())
