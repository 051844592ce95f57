from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from jobqueue.config import Settings, load_settings
from jobqueue.errors import ConfigError


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "jobqueue.yaml"
    path.write_text(text)
    return path


def test_defaults_apply_without_a_file_or_environment() -> None:
    settings = load_settings(environ={})

    assert settings == Settings()
    assert settings.worker.concurrency == 4


def test_file_values_are_read_and_the_environment_wins(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "database:\n  url: postgresql://jq@db/jq\n  pool_max_size: 5\n"
        "worker:\n  concurrency: 8\n  queue: emails\n",
    )

    settings = load_settings(
        path, environ={"JQ_WORKER_CONCURRENCY": "16", "JQ_REDIS_URL": "redis://cache:6379/0"}
    )

    assert settings.database.url == "postgresql://jq@db/jq"
    assert settings.database.pool_max_size == 5
    assert settings.worker.concurrency == 16
    assert settings.worker.queue == "emails"
    assert settings.redis.url == "redis://cache:6379/0"


def test_config_file_can_be_named_by_the_environment(tmp_path: Path) -> None:
    path = _write(tmp_path, "logging:\n  level: DEBUG\n")

    settings = load_settings(environ={"JQ_CONFIG": str(path)})

    assert settings.logging.level == "DEBUG"


@pytest.mark.parametrize(
    ("text", "environ", "message"),
    [
        ("worker:\n  concurrency: many\n", {}, "worker.concurrency: must be a whole number"),
        ("worker:\n  concurrency: 0\n", {}, "worker.concurrency: must be at least 1"),
        ("", {"JQ_WORKER_CONCURRENCY": "x"}, "worker.concurrency (from JQ_WORKER_CONCURRENCY)"),
        ("logging:\n  level: LOUD\n", {}, "logging.level: must be one of DEBUG, INFO"),
        ("database:\n  sslmode: maybe\n", {}, "database.sslmode: must be one of disable"),
        ("database:\n  pool_maxsize: 3\n", {}, "database: unknown setting(s) pool_maxsize"),
        ("databse:\n  url: x\n", {}, "unknown section(s) databse"),
        ("database:\n  url: mysql://x/y\n", {}, "database.url: must start with postgresql://"),
        ("database:\n  pool_min_size: 9\n  pool_max_size: 3\n", {}, "pool_min_size (9) is above"),
        ("kafka:\n  security_protocol: SASL_SSL\n", {}, "kafka.sasl_mechanism: must be set"),
        ("worker: [1, 2]\n", {}, "worker: must be a mapping"),
        ("operator:\n  lease_s: yes\n", {}, "operator.lease_s: must be a number"),
        ("worker:\n  report_linger_s: 5\n", {}, "worker.report_linger_s: must be at most 1.0"),
        ("", {"JQ_KAFKA_TOPIC_PARTITIONS": "0"}, "kafka.topic_partitions: must be at least 1"),
        ("- just\n- a list\n", {}, "must hold a mapping of sections"),
        ("database: {url: [unclosed\n", {}, "is not valid YAML"),
    ],
)
def test_invalid_settings_are_refused_with_the_setting_named(
    tmp_path: Path, text: str, environ: dict[str, str], message: str
) -> None:
    path = _write(tmp_path, text)

    with pytest.raises(ConfigError) as refused:
        load_settings(path, environ=environ)

    assert message in str(refused.value)


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the configuration file"):
        load_settings(tmp_path / "absent.yaml", environ={})


def test_secrets_in_the_file_are_accepted_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _write(
        tmp_path,
        "database:\n  url: postgresql://jq:hunter2@db/jq\nkafka:\n  sasl_password: s3cret\n",
    )

    with caplog.at_level(logging.WARNING, logger="jobqueue.config"):
        settings = load_settings(path, environ={})

    assert settings.kafka.sasl_password == "s3cret"
    warnings = " ".join(record.getMessage() for record in caplog.records)
    assert "JQ_KAFKA_SASL_PASSWORD" in warnings
    assert "JQ_DATABASE_PASSWORD" in warnings
    assert "s3cret" not in warnings
    assert "hunter2" not in warnings


def test_secrets_from_the_environment_raise_no_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="jobqueue.config"):
        settings = load_settings(environ={"JQ_DATABASE_PASSWORD": "hunter2"})

    assert settings.database.password == "hunter2"
    assert caplog.records == []


def test_nested_sections_are_read_from_the_file_and_the_environment(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "operator:\n  tls:\n    cert_file: /etc/tls/tls.crt\n    key_file: /etc/tls/tls.key\n"
        "  auth:\n    cache_ttl_s: 30\n",
    )

    settings = load_settings(
        path, environ={"JQ_OPERATOR_AUTH_MODE": "none", "JQ_WORKER_TLS_CA_FILE": "/ca.crt"}
    )

    assert settings.operator.tls.cert_file == "/etc/tls/tls.crt"
    assert settings.operator.auth.cache_ttl_s == 30
    assert settings.operator.auth.mode == "none"
    assert settings.worker.tls.ca_file == "/ca.crt"


def test_security_is_on_by_default() -> None:
    settings = load_settings(environ={})

    assert settings.operator.auth.mode == "kubernetes"
    assert not settings.operator.tls.insecure_plaintext
    assert not settings.worker.tls.insecure_plaintext


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"JQ_OPERATOR_TLS_INSECURE_PLAINTEXT": "true", "JQ_OPERATOR_TLS_CERT_FILE": "c"},
            "operator.tls.insecure_plaintext: cannot be true",
        ),
        ({"JQ_OPERATOR_TLS_CERT_FILE": "c"}, "set both or neither"),
        (
            {"JQ_WORKER_TLS_INSECURE_PLAINTEXT": "yes", "JQ_WORKER_TLS_CA_FILE": "ca"},
            "worker.tls.insecure_plaintext: cannot be true",
        ),
        (
            {"JQ_OPERATOR_AUTH_MODE": "trust-me"},
            "operator.auth.mode (from JQ_OPERATOR_AUTH_MODE): must be one of kubernetes, none",
        ),
        (
            {"JQ_REDIS_URL": "redis://cache:6379/0", "JQ_REDIS_SSL_CA_FILE": "ca"},
            "only used with a rediss://",
        ),
        ({"JQ_KAFKA_SSL_CA_LOCATION": "ca"}, "kafka.ssl_ca_location: is only used"),
        (
            {"JQ_DATABASE_SSLMODE": "disable", "JQ_DATABASE_SSL_ROOT_CERT": "ca"},
            "database.ssl_root_cert: is not used",
        ),
    ],
)
def test_contradictory_transport_settings_are_refused(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings(environ=environ)
