"""The real servers of the local environment, one class each.

Each server owns a directory, picks its loopback ports once (so a restart keeps its
address, which the broker-outage tests rely on) and has the same small life cycle:
``start()`` launches it without blocking, ``wait_ready()`` polls until it answers a real
request, ``stop()`` ends it. Set-up that must finish before the first start (initdb, the
KRaft storage format) runs in ``prepare()``.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import os
import pwd
import shutil
import signal
import ssl
import uuid
from pathlib import Path

import psycopg
import redis

from jobqueue.devenv import prerequisites
from jobqueue.devenv.certificates import ControlPlaneCertificates
from jobqueue.devenv.processes import ManagedProcess, free_port, run_to_completion

_START_TIMEOUT_S = 90.0  # a cold JVM or apiserver on a loaded 2-core machine is slow


def _https_get_ok(port: int, path: str, *, context: ssl.SSLContext, expect: bytes = b"ok") -> bool:
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=2)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status == 200 and response.read().strip() == expect
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


class PostgresServer:
    """A throwaway PostgreSQL cluster, tuned for tests: no fsync, trust auth on loopback.

    PostgreSQL refuses to run as root, so under root (CI, containers) it runs as the
    ``postgres`` user that Debian's package creates.
    """

    user = "jobqueue"

    def __init__(self, directory: Path, *, durable: bool = False) -> None:
        self.directory = directory
        self.data_dir = directory / "data"
        self.port = free_port()
        self.durable = durable
        self._bin = prerequisites.postgres_bin_dir()
        self._run_as = "postgres" if os.geteuid() == 0 else None
        # SIGINT is PostgreSQL's "fast" shutdown; SIGTERM would wait for every client.
        self.process = ManagedProcess(
            "postgres",
            self._argv(),
            log_path=directory / "postgres.log",
            user=self._run_as,
            stop_signal=signal.SIGINT,
        )

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"

    def dsn_for(self, database: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def _argv(self) -> list[str]:
        settings = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.directory),
            "max_connections": "300",
            "shared_buffers": "256MB",
            "log_min_messages": "warning",
        }
        if not self.durable:
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        argv = [str(self._bin / "postgres"), "-D", str(self.data_dir), "-p", str(self.port)]
        for name, value in settings.items():
            argv += ["-c", f"{name}={value}"]
        return argv

    def prepare(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self._run_as:
            record = pwd.getpwnam(self._run_as)
            os.chown(self.directory, record.pw_uid, record.pw_gid)
        run_to_completion(
            "initdb",
            [
                str(self._bin / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                self.user,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
                "--no-instructions",
            ],
            log_path=self.directory / "initdb.log",
            timeout_s=60,
            user=self._run_as,
        )

    def start(self) -> None:
        self.process.start()

    def _answers(self) -> bool:
        try:
            with psycopg.connect(self.dsn, connect_timeout=2) as connection:
                connection.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def wait_ready(self) -> None:
        self.process.wait_ready(self._answers, timeout_s=_START_TIMEOUT_S, what="accepting queries")

    def stop(self) -> None:
        self.process.stop()


class RedisServer:
    """A throwaway Redis with persistence off."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        binary = prerequisites.program("redis-server", package="redis-server")
        argv = [
            str(binary),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
            "--protected-mode",
            "no",
            "--databases",
            "64",
        ]
        self.process = ManagedProcess("redis", argv, log_path=directory / "redis.log")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def url_for(self, database: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{database}"

    def prepare(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        self.process.start()

    def _answers(self) -> bool:
        client = redis.Redis(port=self.port, socket_connect_timeout=1, socket_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def wait_ready(self) -> None:
        self.process.wait_ready(self._answers, timeout_s=_START_TIMEOUT_S, what="answering PING")

    def stop(self) -> None:
        self.process.stop()


_KAFKA_LOG4J = """\
rootLogger.level = WARN
rootLogger.appenderRef.stdout.ref = STDOUT
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
logger.kafka.name = kafka.server.KafkaServer
logger.kafka.level = INFO
"""


class KafkaBroker:
    """One Apache Kafka node in KRaft mode, broker and controller at once.

    The controller quorum is a static single voter, so no `--standalone` formatting is
    needed; every internal topic has replication factor 1.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.controller_port = free_port()
        self._lib = prerequisites.kafka_lib_dir()
        self._java = prerequisites.program("java", package="openjdk-17-jre-headless")
        self._properties = directory / "server.properties"
        self.process = ManagedProcess(
            "kafka",
            self._java_argv("kafka.Kafka", str(self._properties)),
            log_path=directory / "kafka.log",
        )

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _java_argv(self, main_class: str, *arguments: str) -> list[str]:
        return [
            str(self._java),
            "-Xms256m", "-Xmx768m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
            # The quick compiler only: a small local broker never needs the optimising
            # one, whose compiling went on long after start-up and was half the broker's
            # CPU at 500 jobs a second (docs/performance.md, "The local broker").
            "-XX:TieredStopAtLevel=1",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.directory / 'log4j2.properties'}",
            "-cp", f"{self._lib}/*",
            main_class, *arguments,
        ]  # fmt: skip

    def _write_configuration(self) -> None:
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": (
                f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}"
            ),
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.directory / "data"),
            "num.partitions": "1",
            "auto.create.topics.enable": "true",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # Threads for a machine of a core or two, not the defaults' 3 and 8: each
            # request woke several of them, each a wake-up and a switch.
            "num.network.threads": "1",
            "num.io.threads": "2",
        }
        self._properties.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        (self.directory / "log4j2.properties").write_text(_KAFKA_LOG4J)

    def prepare(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._write_configuration()
        # A KRaft cluster id is 16 random bytes in URL-safe base64 without padding. It may
        # start with '-', so it is passed as --cluster-id=<id>, never as a separate word.
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        run_to_completion(
            "kafka storage format",
            self._java_argv(
                "kafka.tools.StorageTool",
                "format",
                f"--cluster-id={cluster_id}",
                "-c",
                str(self._properties),
            ),
            log_path=self.directory / "format.log",
            timeout_s=120,
        )

    def start(self) -> None:
        self.process.start()

    def _answers(self) -> bool:
        from confluent_kafka.admin import AdminClient  # noqa: PLC0415 - heavy, only here

        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers, "log_level": 0})
        try:
            metadata = admin.list_topics(timeout=2)
        except Exception:  # noqa: BLE001 - any failure here means "not ready yet"
            return False
        return bool(metadata.brokers)

    def wait_ready(self) -> None:
        self.process.wait_ready(self._answers, timeout_s=_START_TIMEOUT_S, what="serving metadata")

    def stop(self) -> None:
        self.process.stop(grace_s=20)


class Etcd:
    def __init__(self, directory: Path, bin_dir: Path) -> None:
        self.directory = directory
        self.port = free_port()
        peer_port = free_port()
        client_url = f"http://127.0.0.1:{self.port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        argv = [
            str(bin_dir / "etcd"), "--name", "devenv", "--data-dir", str(directory / "data"),
            "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"devenv={peer_url}",
            "--unsafe-no-fsync", "--log-level", "warn",
        ]  # fmt: skip
        self.process = ManagedProcess("etcd", argv, log_path=directory / "etcd.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def prepare(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        self.process.start()

    def _answers(self) -> bool:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            connection.request("GET", "/health")
            response = connection.getresponse()
            return response.status == 200 and b'"true"' in response.read()
        except (OSError, http.client.HTTPException):
            return False
        finally:
            connection.close()

    def wait_ready(self) -> None:
        self.process.wait_ready(self._answers, timeout_s=_START_TIMEOUT_S, what="healthy")

    def stop(self) -> None:
        self.process.stop()


class KubeApiserver:
    """kube-apiserver with real TLS and RBAC, started the way envtest starts it."""

    def __init__(
        self,
        directory: Path,
        bin_dir: Path,
        *,
        etcd_url: str,
        certificates: ControlPlaneCertificates,
    ) -> None:
        self.directory = directory
        self.port = free_port()
        self.certificates = certificates
        c = certificates
        argv = [
            str(bin_dir / "kube-apiserver"),
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={self.port}",
            f"--tls-cert-file={c.serving.cert_path}",
            f"--tls-private-key-file={c.serving.key_path}",
            f"--client-ca-file={c.ca.cert_path}",
            "--authorization-mode=RBAC",
            "--service-cluster-ip-range=10.96.0.0/16",
            "--allow-privileged=true",
            "--disable-admission-plugins=ServiceAccount",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={c.service_account_public_key}",
            f"--service-account-signing-key-file={c.service_account_key}",
            # The aggregation layer, so an extension API (external metrics) can be served.
            f"--requestheader-client-ca-file={c.front_proxy_ca.cert_path}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={c.front_proxy_client.cert_path}",
            f"--proxy-client-key-file={c.front_proxy_client.key_path}",
            "--enable-aggregator-routing=true",
            f"--cert-dir={directory / 'certs'}",
            "--v=0",
        ]  # fmt: skip
        self.process = ManagedProcess(
            "kube-apiserver", argv, log_path=directory / "kube-apiserver.log"
        )

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def admin_ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.certificates.ca.cert_path))
        context.load_cert_chain(
            str(self.certificates.admin.cert_path), str(self.certificates.admin.key_path)
        )
        return context

    def prepare(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        self.process.start()

    def wait_ready(self) -> None:
        context = self.admin_ssl_context()
        self.process.wait_ready(
            lambda: _https_get_ok(self.port, "/readyz", context=context),
            timeout_s=_START_TIMEOUT_S,
            what="ready (/readyz)",
        )

    def stop(self) -> None:
        self.process.stop()


class KubeControllerManager:
    """kube-controller-manager, so Deployments get ReplicaSets and HPAs are acted on."""

    def __init__(
        self,
        directory: Path,
        bin_dir: Path,
        *,
        kubeconfig: Path,
        certificates: ControlPlaneCertificates,
    ) -> None:
        self.directory = directory
        self.port = free_port()
        argv = [
            str(bin_dir / "kube-controller-manager"),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.port}",
            f"--cert-dir={directory / 'certs'}",
            f"--service-account-private-key-file={certificates.service_account_key}",
            f"--root-ca-file={certificates.ca.cert_path}",
            "--use-service-account-credentials=false",
            "--controllers=*",
            "--v=0",
        ]  # fmt: skip
        self.process = ManagedProcess(
            "kube-controller-manager", argv, log_path=directory / "kube-controller-manager.log"
        )

    def prepare(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        self.process.start()

    def wait_ready(self) -> None:
        # It serves a self-signed certificate of its own; only liveness is checked here.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        self.process.wait_ready(
            lambda: _https_get_ok(self.port, "/healthz", context=context),
            timeout_s=_START_TIMEOUT_S,
            what="healthy",
        )

    def stop(self) -> None:
        self.process.stop()


def remove_tree(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)
