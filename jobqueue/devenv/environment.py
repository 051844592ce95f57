"""The local environment: every real server jobqueue needs, on loopback, in one object.

Tests (one session-wide instance), ``make demo`` and ``make dev-env`` all use this same
code. It creates a temporary directory, starts etcd, kube-apiserver and
kube-controller-manager, PostgreSQL, Redis and a Kafka broker on free ports, waits until
each answers a real request, writes an admin kubeconfig, and on exit stops them all and
removes the directory.

Nothing may outlive it: every server dies with the thread that started it (see
``processes``), SIGTERM and SIGHUP are turned into ``KeyboardInterrupt`` while it runs so
``with`` blocks and pytest fixtures unwind, and a directory left behind by a run that was
killed outright is swept by the next one.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import signal
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Literal, Protocol

import yaml

from jobqueue.devenv import prerequisites
from jobqueue.devenv.certificates import mint_control_plane_certificates
from jobqueue.devenv.servers import (
    Etcd,
    KafkaBroker,
    KubeApiserver,
    KubeControllerManager,
    PostgresServer,
    RedisServer,
    remove_tree,
)

logger = logging.getLogger(__name__)

Component = Literal["kubernetes", "postgres", "redis", "kafka"]
ALL_COMPONENTS: frozenset[Component] = frozenset({"kubernetes", "postgres", "redis", "kafka"})

_DIRECTORY_PREFIX = "jobqueue-devenv-"
_OWNER_FILE = "owner.pid"


class _Server(Protocol):
    def prepare(self) -> None: ...
    def start(self) -> None: ...
    def wait_ready(self) -> None: ...
    def stop(self) -> None: ...


@dataclass(frozen=True)
class Endpoints:
    """How to reach each server; what a test or a person plugs into jobqueue's settings."""

    kubeconfig: Path | None
    kube_bin_dir: Path | None
    database_url: str | None
    redis_url: str | None
    kafka_bootstrap_servers: str | None

    def as_environment(self) -> dict[str, str]:
        """The variables a shell (or a jobqueue process) needs to use this environment."""
        variables = {
            "KUBECONFIG": str(self.kubeconfig) if self.kubeconfig else None,
            "JQ_DATABASE_URL": self.database_url,
            "JQ_REDIS_URL": self.redis_url,
            "JQ_KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap_servers,
        }
        return {name: value for name, value in variables.items() if value}


def sweep_stale_directories(parent: Path | None = None) -> list[Path]:
    """Remove environment directories whose owning process no longer exists."""
    parent = parent or Path(tempfile.gettempdir())
    removed = []
    for directory in parent.glob(f"{_DIRECTORY_PREFIX}*"):
        try:
            owner = int((directory / _OWNER_FILE).read_text())
        except (OSError, ValueError):
            owner = None
        if owner is not None and _process_alive(owner):
            continue
        remove_tree(directory)
        removed.append(directory)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Environment:
    """Start with ``with Environment() as env:``; ``env.endpoints`` says where things are."""

    def __init__(self, components: Iterable[Component] = ALL_COMPONENTS) -> None:
        self.components = frozenset(components)
        unknown = self.components - ALL_COMPONENTS
        if unknown:
            raise ValueError(
                f"unknown components {sorted(unknown)}; known: {sorted(ALL_COMPONENTS)}"
            )
        self.root: Path | None = None
        self.postgres: PostgresServer | None = None
        self.redis: RedisServer | None = None
        self.kafka: KafkaBroker | None = None
        self.etcd: Etcd | None = None
        self.apiserver: KubeApiserver | None = None
        self.controller_manager: KubeControllerManager | None = None
        self.kubeconfig: Path | None = None
        self.kube_bin_dir: Path | None = None
        self.startup_s: float | None = None  # seconds from start() to all ready
        self._started: list[_Server] = []
        self._previous_handlers: dict[int, Any] = {}  # whatever signal.signal returned

    @property
    def endpoints(self) -> Endpoints:
        return Endpoints(
            kubeconfig=self.kubeconfig,
            kube_bin_dir=self.kube_bin_dir,
            database_url=self.postgres.dsn if self.postgres else None,
            redis_url=self.redis.url if self.redis else None,
            kafka_bootstrap_servers=self.kafka.bootstrap_servers if self.kafka else None,
        )

    def __enter__(self) -> Environment:
        self._trap_termination_signals()
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        began = time.monotonic()
        sweep_stale_directories()
        self.root = Path(tempfile.mkdtemp(prefix=_DIRECTORY_PREFIX))
        # PostgreSQL runs as its own user under root and must be able to reach its directory.
        self.root.chmod(0o755)
        (self.root / _OWNER_FILE).write_text(str(os.getpid()))

        servers = self._create_servers(self.root)
        # One-off set-up (initdb, the Kafka storage format) runs in threads: those processes
        # end before their thread does, so the parent-death signal cannot cut them short.
        with ThreadPoolExecutor(
            max_workers=len(servers), thread_name_prefix="devenv-prepare"
        ) as pool:
            for future in [pool.submit(server.prepare) for server in servers]:
                future.result()

        # Long-lived servers start from this thread, slowest first, and come up together.
        for server in servers:
            server.start()
            self._started.append(server)
        if self.apiserver is not None:
            self._start_kube_controller_manager()
        for server in self._started:
            server.wait_ready()
        self.startup_s = time.monotonic() - began
        logger.info("Local environment ready in %.1f s at %s", self.startup_s, self.root)

    def _create_servers(self, root: Path) -> list[_Server]:
        servers: list[_Server] = []
        if "kafka" in self.components:
            self.kafka = KafkaBroker(root / "kafka")
            servers.append(self.kafka)
        if "kubernetes" in self.components:
            self.kube_bin_dir = prerequisites.control_plane_bin_dir()
            certificates = mint_control_plane_certificates(root / "pki")
            self.etcd = Etcd(root / "etcd", self.kube_bin_dir)
            self.apiserver = KubeApiserver(
                root / "kube-apiserver",
                self.kube_bin_dir,
                etcd_url=self.etcd.url,
                certificates=certificates,
            )
            self.kubeconfig = root / "kubeconfig"
            self._write_kubeconfig(self.kubeconfig, self.apiserver)
            servers += [self.etcd, self.apiserver]
        if "postgres" in self.components:
            self.postgres = PostgresServer(root / "postgres")
            servers.append(self.postgres)
        if "redis" in self.components:
            self.redis = RedisServer(root / "redis")
            servers.append(self.redis)
        return servers

    def _start_kube_controller_manager(self) -> None:
        # It gives up when the apiserver does not answer at start, so it waits for it.
        assert self.apiserver is not None
        assert self.etcd is not None
        assert self.kube_bin_dir is not None
        assert self.kubeconfig is not None
        assert self.root
        self.etcd.wait_ready()
        self.apiserver.wait_ready()
        self.controller_manager = KubeControllerManager(
            self.root / "kube-controller-manager",
            self.kube_bin_dir,
            kubeconfig=self.kubeconfig,
            certificates=self.apiserver.certificates,
        )
        self.controller_manager.prepare()
        self.controller_manager.start()
        self._started.append(self.controller_manager)

    @staticmethod
    def _write_kubeconfig(path: Path, apiserver: KubeApiserver) -> None:
        certificates = apiserver.certificates

        def encoded(file: Path) -> str:
            return base64.b64encode(file.read_bytes()).decode()

        document = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "jobqueue-devenv",
                    "cluster": {
                        "server": apiserver.url,
                        "certificate-authority-data": encoded(certificates.ca.cert_path),
                    },
                }
            ],
            "users": [
                {
                    "name": "jobqueue-devenv-admin",
                    "user": {
                        "client-certificate-data": encoded(certificates.admin.cert_path),
                        "client-key-data": encoded(certificates.admin.key_path),
                    },
                }
            ],
            "contexts": [
                {
                    "name": "jobqueue-devenv",
                    "context": {"cluster": "jobqueue-devenv", "user": "jobqueue-devenv-admin"},
                }
            ],
            "current-context": "jobqueue-devenv",
        }
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        path.chmod(0o600)

    def stop(self) -> None:
        """Stop every server, newest first, and remove the directory. Safe to call twice."""
        while self._started:
            server = self._started.pop()
            try:
                server.stop()
            except Exception:
                logger.exception("Stopping %s failed", type(server).__name__)
        if self.root is not None:
            remove_tree(self.root)
            self.root = None
        self._restore_signal_handlers()

    def _trap_termination_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def interrupt(signum: int, frame: FrameType | None) -> None:
            raise KeyboardInterrupt(f"received {signal.Signals(signum).name}")

        for signum in (signal.SIGTERM, signal.SIGHUP):
            self._previous_handlers[signum] = signal.signal(signum, interrupt)

    def _restore_signal_handlers(self) -> None:
        for signum, handler in self._previous_handlers.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(signum, handler)
        self._previous_handlers.clear()


@contextlib.contextmanager
def running(components: Iterable[Component] = ALL_COMPONENTS) -> Iterator[Environment]:
    with Environment(components) as environment:
        yield environment
