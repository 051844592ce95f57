"""Entry point of ``jobqueue-worker``: settings, handlers, health endpoint, signals, run.

Settings come from ``load_settings`` (the ``worker`` section of the file named by
``--config`` or ``JQ_CONFIG``, then ``JQ_WORKER_*`` variables); flags override both.

The channel to the operator is TLS, verified with ``worker.tls.ca_file`` (the operator's
CA) or the system's roots, and every call carries the pod's ServiceAccount token, read
again whenever the kubelet rotates it. Plaintext needs ``--insecure-plaintext`` (or
``worker.tls.insecure_plaintext``), for an operator that serves plaintext in development.

SIGTERM or SIGINT starts a drain with ``worker.drain_grace_s``; a second one stops what
still runs at once. Kubernetes sends SIGTERM on scale-down and rollouts, so its
``terminationGracePeriodSeconds`` should exceed the drain grace by the few seconds the
last reports take.

Exit codes: 0 after a drain or shutdown, or a dry run that reached the operator; 1 when
a dry run cannot reach the operator or the operator refuses the worker for good; 2 for
a wrong command line or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc
import grpc.aio

from jobqueue import __version__, health, logs, memory
from jobqueue.channels import ChannelSecurity, open_aio_channel
from jobqueue.config import DEFAULT_TOKEN_FILE, WorkerSettings, load_settings, split_list
from jobqueue.credentials import TokenFile
from jobqueue.errors import ConfigError, InvalidInputError, PermanentError
from jobqueue.worker.handlers import HandlerRegistry
from jobqueue.worker.runtime import Worker, WorkerConfig, new_worker_id

logger = logging.getLogger(__name__)

DEFAULT_HTTP_ADDRESS = "0.0.0.0:9091"
DRY_RUN_TIMEOUT_S = 3.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jobqueue-worker",
        description="Connect to a jobqueue operator, run the jobs it pushes, report results.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--config", metavar="FILE", help="settings file (else $JQ_CONFIG)")
    parser.add_argument(
        "--operator",
        metavar="HOST:PORT",
        help="the operator's gRPC address (worker.operator_address)",
    )
    parser.add_argument("--queue", help="the queue to serve (worker.queue)")
    parser.add_argument("--pool", help="the worker pool this worker belongs to (worker.pool)")
    parser.add_argument(
        "--concurrency", type=int, metavar="N", help="jobs run at once (worker.concurrency)"
    )
    parser.add_argument(
        "--worker-id",
        metavar="ID",
        help="stable name of this worker, e.g. the pod name (default: <hostname>-<6 hex>)",
    )
    parser.add_argument(
        "--handler",
        action="append",
        default=[],
        metavar="MODULE:FUNCTION",
        help="import and register a Python job handler (repeatable)",
    )
    parser.add_argument(
        "--http-address",
        metavar="HOST:PORT",
        default=DEFAULT_HTTP_ADDRESS,
        help=f"serve /healthz, /readyz and /metrics here (default {DEFAULT_HTTP_ADDRESS}; "
        "'' turns it off)",
    )
    parser.add_argument(
        "--ca-file",
        metavar="PATH",
        help="CA bundle that verifies the operator (worker.tls.ca_file; else system roots)",
    )
    parser.add_argument(
        "--tls-server-name",
        metavar="NAME",
        help="the name the operator's certificate carries, if not the host dialled "
        "(worker.tls.server_name)",
    )
    parser.add_argument(
        "--insecure-plaintext",
        action="store_true",
        default=None,
        help="talk plaintext to an operator without TLS; development only "
        "(worker.tls.insecure_plaintext)",
    )
    parser.add_argument(
        "--token-file",
        metavar="PATH",
        help="bearer token to prove the worker's identity, re-read when it changes "
        f"(worker.token_file; default {DEFAULT_TOKEN_FILE})",
    )
    parser.add_argument(
        "--log-format", choices=sorted(logs.FORMATS), help="log lines (logging.format)"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check that the operator is reachable, print what would run, and exit",
    )
    return parser


def split_address(text: str, *, what: str) -> tuple[str, int]:
    """``HOST:PORT`` as a pair; a ``ConfigError`` naming ``what`` otherwise."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{what}: expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def worker_config(args: argparse.Namespace, settings: WorkerSettings) -> WorkerConfig:
    """The worker's configuration: flags over settings; refuses what cannot run."""
    queue = args.queue or settings.queue
    if not queue:
        raise ConfigError(
            "no queue to serve: set worker.queue in the configuration (or JQ_WORKER_QUEUE), "
            "or pass --queue"
        )
    concurrency = settings.concurrency if args.concurrency is None else args.concurrency
    if concurrency < 1:
        raise ConfigError(f"--concurrency: must be at least 1, got {concurrency}")
    operator_address = args.operator or settings.operator_address
    split_address(operator_address, what="--operator / worker.operator_address")
    return WorkerConfig(
        operator_address=operator_address,
        queue=queue,
        worker_id=args.worker_id or new_worker_id(),
        pool=args.pool or settings.pool or "",
        concurrency=concurrency,
        heartbeat_interval_s=settings.heartbeat_interval_s,
        drain_grace_s=settings.drain_grace_s,
        report_linger_s=settings.report_linger_s,
        security=channel_security(args, settings),
        job_env_overridable=frozenset(split_list(settings.job_env_overridable)),
    )


def channel_security(args: argparse.Namespace, settings: WorkerSettings) -> ChannelSecurity:
    """TLS and the token, flags over settings; a token file named on purpose must exist."""
    tls = settings.tls
    plaintext = tls.insecure_plaintext if args.insecure_plaintext is None else True
    ca_file = args.ca_file or tls.ca_file
    server_name = args.tls_server_name or tls.server_name
    if plaintext and (ca_file or server_name):
        raise ConfigError(
            "--insecure-plaintext (worker.tls.insecure_plaintext) contradicts --ca-file and "
            "--tls-server-name (worker.tls.ca_file, server_name); choose one"
        )
    if ca_file and not Path(ca_file).is_file():
        raise ConfigError(f"--ca-file / worker.tls.ca_file: no such file {ca_file}")

    token_path = Path(args.token_file or settings.token_file)
    token = TokenFile(token_path)
    if str(token_path) == DEFAULT_TOKEN_FILE and not token_path.exists():
        # Not in a pod: fine against an operator without authentication, refused otherwise.
        logger.warning("No ServiceAccount token at %s: calls carry no token.", token_path)
    else:
        token.check()
    return ChannelSecurity(
        insecure_plaintext=plaintext,
        ca_file=Path(ca_file) if ca_file else None,
        server_name=server_name,
        token=token,
    )


def build_registry(names: Sequence[str]) -> HandlerRegistry:
    registry = HandlerRegistry()
    for name in names:
        registry.import_and_register(name)
    return registry


async def operator_reachable(
    address: str, timeout_s: float, security: ChannelSecurity | None = None
) -> tuple[bool, str]:
    """Whether a connection to ``address`` comes up (TLS included), registering nothing."""
    security = ChannelSecurity(insecure_plaintext=True) if security is None else security
    async with open_aio_channel(address, security, send_token=False) as channel:
        try:
            async with asyncio.timeout(timeout_s):
                state = channel.get_state(try_to_connect=True)
                while state is not grpc.ChannelConnectivity.READY:
                    if state is grpc.ChannelConnectivity.TRANSIENT_FAILURE:
                        return False, "the connection failed (nothing listening, or TLS refused)"
                    await channel.wait_for_state_change(state)
                    state = channel.get_state(try_to_connect=True)
        except TimeoutError:
            return False, f"no connection within {timeout_s:g} s"
    return True, "reachable"


async def dry_run(config: WorkerConfig, registry: HandlerRegistry) -> int:
    reachable, detail = await operator_reachable(
        config.operator_address, DRY_RUN_TIMEOUT_S, config.security
    )
    print(f"operator:    {config.operator_address} ({detail})")
    print(f"worker id:   {config.worker_id}")
    print(f"queue:       {config.queue}")
    print(f"pool:        {config.pool or '-'}")
    print(f"concurrency: {config.concurrency}")
    print(f"channel:     {_describe_security(config.security)}")
    print(f"handlers:    {', '.join(registry.names()) or '-'}")
    if not reachable:
        print(
            f"jobqueue-worker: cannot reach the operator at {config.operator_address}: {detail}",
            file=sys.stderr,
        )
        return 1
    return 0


def _describe_security(security: ChannelSecurity) -> str:
    if security.insecure_plaintext:
        return "PLAINTEXT (development only)"
    verified = f"CA {security.ca_file}" if security.ca_file else "the system's roots"
    return f"TLS, the operator verified with {verified}"


async def serve(config: WorkerConfig, registry: HandlerRegistry, http_address: str) -> None:
    """Run the worker (and its health endpoint) until it has drained."""
    worker = Worker(config, registry)
    loop = asyncio.get_running_loop()

    def on_signal(received: signal.Signals) -> None:
        if worker.draining:
            worker.shutdown(f"a second {received.name} arrived while draining")
        else:
            worker.drain(reason=f"received {received.name}")

    async def registered() -> None:
        if not worker.registered:
            raise ConnectionError(f"not registered with the operator at {config.operator_address}")

    for received in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(received, on_signal, received)
    runner = None
    try:
        if http_address:
            host, port = split_address(http_address, what="--http-address")
            checks = [health.Check("operator", registered, critical=True)]
            runner = await health.serve(checks, host, port)
        memory.freeze_startup()
        await worker.run()
    finally:
        if runner is not None:
            await runner.cleanup()
        for received in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(received)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
        # Configured before the rest is checked, which may warn (a missing token).
        logs.configure(settings.logging.level, format=args.log_format or settings.logging.format)
        config = worker_config(args, settings.worker)
        if args.http_address:
            split_address(args.http_address, what="--http-address")
        registry = build_registry(args.handler)
    except InvalidInputError as error:
        print(f"jobqueue-worker: {error}", file=sys.stderr)
        return 2

    if args.dry_run:
        return asyncio.run(dry_run(config, registry))
    try:
        asyncio.run(serve(config, registry, args.http_address))
    except PermanentError as error:
        logger.error("The worker stops: %s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
