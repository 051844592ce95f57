"""Fixtures shared by every test.

Integration tests talk to real servers: one ``jobqueue.devenv.Environment`` for the whole
session (started on first use, so a unit-only run starts nothing), and per test a fresh
namespace, a fresh database cloned from a migrated template, a flushed Redis database
and a unique Kafka topic prefix. A missing server is an error, never a skip.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
import redis
from kubernetes import client as kube_client
from kubernetes import config as kube_config
from psycopg import sql

from jobqueue.devenv import Environment

TEMPLATE_DATABASE = "jobqueue_template"


@pytest.fixture(scope="session")
def devenv() -> Iterator[Environment]:
    with Environment() as environment:
        yield environment


# Kubernetes ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def kube_api_client(devenv: Environment) -> Iterator[kube_client.ApiClient]:
    api_client = kube_config.new_client_from_config(config_file=str(devenv.kubeconfig))
    yield api_client
    api_client.close()


@pytest.fixture
def namespace(kube_api_client: kube_client.ApiClient) -> Iterator[str]:
    """A namespace of the test's own, deleted (without waiting) when it ends."""
    core = kube_client.CoreV1Api(kube_api_client)
    name = f"test-{uuid.uuid4().hex[:10]}"
    core.create_namespace(kube_client.V1Namespace(metadata=kube_client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)


# PostgreSQL ---------------------------------------------------------------------------


def _prepare_template(admin_dsn: str) -> None:
    """Create the template every test database is cloned from, with every migration applied."""
    from psycopg.conninfo import make_conninfo

    from jobqueue.store.migrations import apply_migrations

    with psycopg.connect(admin_dsn, autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE_DATABASE)))
    apply_migrations(make_conninfo(admin_dsn, dbname=TEMPLATE_DATABASE))


@pytest.fixture(scope="session")
def database_template(devenv: Environment) -> str:
    assert devenv.postgres is not None
    _prepare_template(devenv.postgres.dsn)
    return TEMPLATE_DATABASE


@pytest.fixture
def database_url(devenv: Environment, database_template: str) -> Iterator[str]:
    """A database of the test's own, cloned from the template (cheap: a file copy)."""
    assert devenv.postgres is not None
    name = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(devenv.postgres.dsn, autocommit=True) as connection:
        connection.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(database_template)
            )
        )
    yield devenv.postgres.dsn_for(name)
    with psycopg.connect(devenv.postgres.dsn, autocommit=True) as connection:
        connection.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


# Redis --------------------------------------------------------------------------------

# Database 0 is left for hand use; tests take 1..63 in turn (the server has 64).
_redis_databases = itertools.cycle(range(1, 64))


@pytest.fixture
def redis_url(devenv: Environment) -> str:
    """A Redis database emptied for this test."""
    assert devenv.redis is not None
    url = devenv.redis.url_for(next(_redis_databases))
    with redis.Redis.from_url(url) as connection:
        connection.flushdb()
    return url


# Kafka --------------------------------------------------------------------------------


@dataclass(frozen=True)
class KafkaTarget:
    bootstrap_servers: str
    topic_prefix: str  # unique per test, so tests never read each other's messages


@pytest.fixture
def kafka(devenv: Environment) -> KafkaTarget:
    assert devenv.kafka is not None
    return KafkaTarget(devenv.kafka.bootstrap_servers, f"test-{uuid.uuid4().hex[:10]}.")
