"""Settings shared by the operator, the worker and jqctl.

One YAML file (``--config`` or ``JQ_CONFIG``) holds the sections below; every setting can
be overridden by an environment variable named ``JQ_<SECTION>_<FIELD>`` in capitals
(``database.url`` is ``JQ_DATABASE_URL``), and the environment wins. That order suits
Kubernetes: the file comes from a ConfigMap, secrets come from a Secret through ``env``.

Validation happens once, at load, and a bad value is refused with a message that names
the setting and says what was expected (``ConfigError``). A secret (a password) found in
the file rather than the environment is accepted with a warning: files are read by more
people and tools than environment variables from Secrets are.

The sections are frozen dataclasses; each field's comment is its documentation. A section
may nest another (``operator.tls``): its settings are written as a mapping in the file and
as ``JQ_OPERATOR_TLS_<FIELD>`` in the environment.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import types
import typing
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from jobqueue.errors import ConfigError

logger = logging.getLogger(__name__)

ENVIRONMENT_PREFIX = "JQ_"

# Where the kubelet mounts a pod's ServiceAccount token.
DEFAULT_TOKEN_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/token"


def _secret() -> Any:
    """Field metadata marking a secret: it should come from the environment."""
    return field(default=None, metadata={"secret": True})


@dataclass(frozen=True)
class DatabaseSettings:
    # PostgreSQL connection URL, e.g. postgresql://jobqueue@db:5432/jobqueue.
    url: str | None = None
    # Password, kept out of the URL so it can come from a Secret.
    password: str | None = _secret()
    # libpq's sslmode; "verify-full" in production, "disable" for local development.
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None = (
        None
    )
    # CA bundle that verifies the server's certificate (libpq's sslrootcert), for verify-ca
    # and verify-full; unset uses libpq's default (~/.postgresql/root.crt).
    ssl_root_cert: str | None = None
    # Connections each process keeps open at least and at most.
    pool_min_size: int = field(default=2, metadata={"minimum": 1})
    pool_max_size: int = field(default=20, metadata={"minimum": 1})
    # Seconds to wait for a connection before giving up.
    connect_timeout_s: float = field(default=5.0, metadata={"minimum": 0.1})


@dataclass(frozen=True)
class RedisSettings:
    # Redis URL (redis:// or rediss:// for TLS); unset runs without Redis (polling only).
    url: str | None = None
    # User name for Redis ACLs; unset uses the URL's, or the default user.
    username: str | None = None
    # Password, kept out of the URL so it can come from a Secret.
    password: str | None = _secret()
    # CA bundle that verifies the server with rediss://; unset uses the system's roots.
    ssl_ca_file: str | None = None
    # Prefix of every key jobqueue writes, so several installations can share one Redis.
    key_prefix: str = "jobqueue:"
    # Seconds a Redis call may take before it counts as unavailable.
    socket_timeout_s: float = field(default=0.5, metadata={"minimum": 0.01})


@dataclass(frozen=True)
class KafkaSettings:
    # Comma-separated host:port list; unset keeps events in the outbox until it is set.
    bootstrap_servers: str | None = None
    # Prefix of the six lifecycle topics (<prefix>job.submitted, ...).
    topic_prefix: str = "jobqueue."
    # Partitions and replicas of each lifecycle topic the relay creates; a topic that
    # exists keeps its own. A job's events always share a partition, so any count keeps
    # each job's order; more partitions let more consumers of one group read at once, and
    # cost the broker more per request (docs/performance.md, "The local broker").
    topic_partitions: int = field(default=3, metadata={"minimum": 1})
    topic_replication: int = field(default=1, metadata={"minimum": 1})
    # How clients reach the brokers; SASL_SSL (or SSL) wherever the network is shared.
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    # The SASL mechanism, required with the SASL_* protocols.
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    # The SASL user name; its password comes from a Secret (JQ_KAFKA_SASL_PASSWORD).
    sasl_username: str | None = None
    sasl_password: str | None = _secret()
    # CA bundle that verifies the brokers when security_protocol uses SSL.
    ssl_ca_location: str | None = None


@dataclass(frozen=True)
class ServerTLSSettings:
    # PEM certificate chain the gRPC API presents (tls.crt of a cert-manager Secret). The
    # files are watched: a rotated certificate is served to new connections, no restart.
    cert_file: str | None = None
    # PEM private key of that certificate (tls.key).
    key_file: str | None = None
    # PEM bundle of the CA that issued cert_file (ca.crt of the same Secret). The operator
    # copies it into a ConfigMap beside each worker pool, whose pods verify the operator
    # with it; unset, worker pods verify against their image's system roots.
    ca_file: str | None = None
    # Serve gRPC without TLS. Only for local development: tokens and job payloads then
    # cross the network in the clear. Without it, and without a certificate, the operator
    # refuses to start.
    insecure_plaintext: bool = False


@dataclass(frozen=True)
class AuthSettings:
    # "kubernetes": every call carries a bearer token that a TokenReview verifies, and a
    # SubjectAccessReview allows (see docs/security.md). "none" turns both off, for local
    # development only; the operator logs a warning when it starts that way.
    mode: Literal["kubernetes", "none"] = "kubernetes"
    # Comma-separated audiences a token must be issued for; unset accepts the API
    # server's own audience (the default of ServiceAccount and kubeconfig tokens).
    audiences: str = ""
    # Seconds a TokenReview or SubjectAccessReview answer is reused: how long a revoked
    # token or RoleBinding may still be honoured, traded against calls to the API server.
    cache_ttl_s: float = field(default=10.0, metadata={"minimum": 0.0})
    # Most answers each cache keeps; the least recently used are forgotten first.
    cache_size: int = field(default=10000, metadata={"minimum": 1})
    # Comma-separated users (system:serviceaccount:<namespace>:<name>) whose workers may
    # register without a token bound to a pod of their pool: local worker processes in
    # development and tests. They still need the "work" verb on the queue.
    unbound_workers: str = ""


@dataclass(frozen=True)
class OperatorSettings:
    # Where the gRPC API (jobs, workers, admin) listens.
    grpc_address: str = "0.0.0.0:7070"
    # Where /metrics, /healthz and /readyz are served.
    http_address: str = "0.0.0.0:9090"
    # Seconds between two foldings of queue statistics into resource status.
    status_interval_s: float = field(default=5.0, metadata={"minimum": 0.5})
    # Seconds a claimed job's lease lasts without a heartbeat renewing it.
    lease_s: float = field(default=30.0, metadata={"minimum": 1.0})
    # Seconds between two scheduler polls when no wake-up arrives (the safety net).
    poll_interval_s: float = field(default=1.0, metadata={"minimum": 0.01})
    # HOST:PORT at which worker pods reach the gRPC API (the operator's Service); the
    # operator writes it into every worker pool's Deployment.
    service_address: str = "jobqueue-operator.jobqueue-system.svc:7070"
    # Reconcile without kopf peering. Leave it off when several replicas run: peering
    # (the ClusterKopfPeering named by peering_name) lets exactly one of them reconcile.
    standalone: bool = False
    peering_name: str = "jobqueue"
    # Comma-separated namespaces whose JobQueues and pools this operator reconciles;
    # empty reconciles every namespace (cluster-wide, the usual install).
    namespaces: str = ""
    # A ConfigMap (key ca.crt) that exists in every namespace with worker pools, kept there
    # by trust-manager or by hand; worker pods mount it to verify the operator. It wins
    # over tls.ca_file, and needs no ConfigMap writes by the operator.
    worker_ca_configmap: str = ""
    # TLS of the gRPC API.
    tls: ServerTLSSettings = field(default_factory=ServerTLSSettings)
    # Who may call the gRPC API, and what each caller may do.
    auth: AuthSettings = field(default_factory=AuthSettings)


@dataclass(frozen=True)
class ClientTLSSettings:
    # CA bundle that verifies the operator's certificate (ca.crt of its Secret); unset
    # uses the system's roots.
    ca_file: str | None = None
    # The name the operator's certificate must carry, when it differs from the host
    # dialled (a port-forward to localhost, an IP address).
    server_name: str | None = None
    # Talk to an operator that serves plaintext (operator.tls.insecure_plaintext). Only
    # for local development: the token then crosses the network in the clear.
    insecure_plaintext: bool = False


@dataclass(frozen=True)
class WorkerSettings:
    # host:port of the operator's gRPC API.
    operator_address: str = "localhost:7070"
    # The queue this worker serves and the pool it belongs to.
    queue: str | None = None
    pool: str | None = None
    # Jobs run at once by this worker.
    concurrency: int = field(default=4, metadata={"minimum": 1})
    # Seconds between heartbeats.
    heartbeat_interval_s: float = field(default=5.0, metadata={"minimum": 0.1})
    # Seconds running jobs get to finish after SIGTERM before they are stopped.
    drain_grace_s: float = field(default=30.0, metadata={"minimum": 0.0})
    # Seconds a Started or Result report may wait for others to share its call, while at
    # most a quarter of the worker's slots are taken and reports come often (it and the two
    # before it within this time); 0 sends each at once. A result then reaches the store
    # up to this much later; the recorded start is the worker's own stamp.
    report_linger_s: float = field(default=0.02, metadata={"minimum": 0.0, "maximum": 1.0})
    # The bearer token the worker proves itself with: its pod's ServiceAccount token,
    # re-read whenever the kubelet rotates it. A missing file at this default path means
    # no token (a local worker against an operator without authentication).
    token_file: str = DEFAULT_TOKEN_FILE
    # Names of the environment variables of this worker that a command job may set to a
    # value of its own (comma-separated). Any other variable the worker has is the
    # worker's, and a job that tries to set it fails (see docs/security.md).
    job_env_overridable: str = ""
    # How the worker verifies the operator.
    tls: ClientTLSSettings = field(default_factory=ClientTLSSettings)


@dataclass(frozen=True)
class LoggingSettings:
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # "auto" writes JSON lines unless the output is a terminal.
    format: Literal["auto", "json", "text"] = "auto"


@dataclass(frozen=True)
class Settings:
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    operator: OperatorSettings = field(default_factory=OperatorSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)


def load_settings(
    path: Path | str | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read the file (if any), apply ``JQ_*`` overrides, validate, and warn about secrets."""
    environ = os.environ if environ is None else environ
    if path is None and environ.get(f"{ENVIRONMENT_PREFIX}CONFIG"):
        path = environ[f"{ENVIRONMENT_PREFIX}CONFIG"]
    document = _read_file(Path(path)) if path is not None else {}

    sections: dict[str, Any] = {}
    for section in dataclasses.fields(Settings):
        raw = document.pop(section.name, None) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{section.name}: must be a mapping of settings, got {raw!r}")
        section_type = typing.get_type_hints(Settings)[section.name]
        sections[section.name] = _build_section(section.name, section_type, raw, environ, path)
    if document:
        raise ConfigError(
            f"unknown section(s) {', '.join(sorted(map(str, document)))}; "
            f"known: {', '.join(f.name for f in dataclasses.fields(Settings))}"
        )
    settings = Settings(**sections)
    _check_consistency(settings)
    return settings


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"cannot read the configuration file {path}: {error}") from error
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from error
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, not {type(document).__name__}")
    return document


def _build_section(
    name: str,
    section_type: type[Any],
    raw: dict[str, Any],
    environ: Mapping[str, str],
    path: Path | str | None,
) -> Any:
    hints = typing.get_type_hints(section_type)
    known = {f.name: f for f in dataclasses.fields(section_type)}
    unknown = set(raw) - set(known)
    if unknown:
        raise ConfigError(
            f"{name}: unknown setting(s) {', '.join(sorted(map(str, unknown)))}; "
            f"known: {', '.join(known)}"
        )

    values: dict[str, Any] = {}
    for field_name, spec in known.items():
        setting = f"{name}.{field_name}"
        variable = f"{ENVIRONMENT_PREFIX}{setting}".replace(".", "_").upper()
        if dataclasses.is_dataclass(hints[field_name]):
            nested = raw.get(field_name) or {}
            if not isinstance(nested, dict):
                raise ConfigError(f"{setting}: must be a mapping of settings, got {nested!r}")
            values[field_name] = _build_section(setting, hints[field_name], nested, environ, path)
            continue
        if variable in environ:
            values[field_name] = _parse(setting, hints[field_name], environ[variable], variable)
        elif field_name in raw:
            values[field_name] = _parse(setting, hints[field_name], raw[field_name], None)
            if spec.metadata.get("secret") and raw[field_name] is not None:
                logger.warning(
                    "The secret %s is set in %s; set it with the environment variable %s "
                    "(from a Secret) instead",
                    setting, path, variable,
                )  # fmt: skip
        else:
            continue
        minimum = spec.metadata.get("minimum")
        if minimum is not None and values[field_name] is not None and values[field_name] < minimum:
            raise ConfigError(f"{setting}: must be at least {minimum}, got {values[field_name]}")
        maximum = spec.metadata.get("maximum")
        if maximum is not None and values[field_name] is not None and values[field_name] > maximum:
            raise ConfigError(f"{setting}: must be at most {maximum}, got {values[field_name]}")
    _warn_about_url_passwords(name, raw, path)
    return section_type(**values)


def _parse(setting: str, hint: Any, value: Any, variable: str | None) -> Any:
    """Check ``value`` against a field's type; strings from the environment are converted."""
    source = f" (from {variable})" if variable else ""
    from_environment = variable is not None
    is_union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    allowed = typing.get_args(hint) if is_union else (hint,)
    optional = type(None) in allowed
    allowed = tuple(a for a in allowed if a is not type(None))

    if value is None or (from_environment and value == "" and optional):
        if optional:
            return None
        raise ConfigError(f"{setting}{source}: must be set")
    (kind,) = allowed

    if typing.get_origin(kind) is Literal:
        choices = typing.get_args(kind)
        if value not in choices:
            raise ConfigError(
                f"{setting}{source}: must be one of {', '.join(map(str, choices))}; got {value!r}"
            )
        return value
    if kind is bool:
        return _parse_bool(setting + source, value, from_environment)
    if kind in (int, float):
        return _parse_number(setting + source, kind, value, from_environment)
    if not isinstance(value, str):
        raise ConfigError(f"{setting}{source}: must be a string, got {value!r}")
    return value


def _parse_bool(setting: str, value: Any, from_environment: bool) -> bool:
    if isinstance(value, bool):
        return value
    words = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
    if from_environment and isinstance(value, str) and value.lower() in words:
        return words[value.lower()]
    raise ConfigError(f"{setting}: must be true or false, got {value!r}")


def _parse_number(setting: str, kind: type[Any], value: Any, from_environment: bool) -> Any:
    if isinstance(value, bool):  # YAML's yes/no must not pass as 1/0
        raise ConfigError(f"{setting}: must be a number, got {value!r}")
    if from_environment and isinstance(value, str):
        try:
            return kind(value)
        except ValueError:
            pass
    elif isinstance(value, int) or (kind is float and isinstance(value, float)):
        return kind(value)
    expected = "a whole number" if kind is int else "a number"
    raise ConfigError(f"{setting}: must be {expected}, got {value!r}")


def _warn_about_url_passwords(
    section: str, raw: Mapping[str, Any], path: Path | str | None
) -> None:
    url = raw.get("url")
    if isinstance(url, str) and urllib.parse.urlsplit(url).password:
        logger.warning(
            "%s.url in %s carries a password; set %s%s_PASSWORD from a Secret instead",
            section, path, ENVIRONMENT_PREFIX, section.upper(),
        )  # fmt: skip


def _check_consistency(settings: Settings) -> None:
    database = settings.database
    if database.pool_min_size > database.pool_max_size:
        raise ConfigError(
            f"database.pool_min_size ({database.pool_min_size}) is above "
            f"database.pool_max_size ({database.pool_max_size})"
        )
    if database.url is not None:
        scheme = urllib.parse.urlsplit(database.url).scheme
        if scheme not in ("postgresql", "postgres"):
            raise ConfigError(f"database.url: must start with postgresql://, got scheme {scheme!r}")
    if settings.redis.url is not None:
        scheme = urllib.parse.urlsplit(settings.redis.url).scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise ConfigError(f"redis.url: must start with redis:// or rediss://, got {scheme!r}")
    kafka = settings.kafka
    if kafka.security_protocol.startswith("SASL") and not kafka.sasl_mechanism:
        raise ConfigError(
            f"kafka.sasl_mechanism: must be set when kafka.security_protocol is "
            f"{kafka.security_protocol}"
        )
    _check_transport_security(settings)


def _check_transport_security(settings: Settings) -> None:
    """Refuse settings that ask for TLS and plaintext at once: one of them would be ignored."""
    tls = settings.operator.tls
    if tls.insecure_plaintext and (tls.cert_file or tls.key_file):
        raise ConfigError(
            "operator.tls.insecure_plaintext: cannot be true while operator.tls.cert_file or "
            "key_file is set; remove one of them"
        )
    if bool(tls.cert_file) != bool(tls.key_file):
        raise ConfigError("operator.tls.cert_file and operator.tls.key_file: set both or neither")
    worker_tls = settings.worker.tls
    if worker_tls.insecure_plaintext and (worker_tls.ca_file or worker_tls.server_name):
        raise ConfigError(
            "worker.tls.insecure_plaintext: cannot be true while worker.tls.ca_file or "
            "server_name is set; remove one of them"
        )
    redis_url = settings.redis.url or ""
    if settings.redis.ssl_ca_file and not redis_url.startswith("rediss://"):
        raise ConfigError("redis.ssl_ca_file: is only used with a rediss:// (TLS) redis.url")
    kafka = settings.kafka
    if kafka.ssl_ca_location and not kafka.security_protocol.endswith("SSL"):
        raise ConfigError(
            f"kafka.ssl_ca_location: is only used when kafka.security_protocol is SSL or "
            f"SASL_SSL, not {kafka.security_protocol}"
        )
    if settings.database.ssl_root_cert and settings.database.sslmode in ("disable", "allow"):
        raise ConfigError(
            f"database.ssl_root_cert: is not used with database.sslmode "
            f"{settings.database.sslmode}; use verify-full"
        )


def split_list(text: str) -> list[str]:
    """The items of a comma-separated setting, without blanks."""
    return [item.strip() for item in text.split(",") if item.strip()]
