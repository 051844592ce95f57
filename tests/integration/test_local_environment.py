"""Smoke tests: every server of the local environment is real and answers real requests."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
import redis
from confluent_kafka import Consumer, KafkaError, Producer
from kubernetes import client as kube_client
from kubernetes import watch

from tests.conftest import KafkaTarget

pytestmark = pytest.mark.integration


def _wait_for_event(stream: Iterator[dict[str, object]], predicate: object) -> dict[str, object]:
    for event in stream:
        if predicate(event):  # type: ignore[operator]
            return event
    raise AssertionError("the watch ended before the expected event arrived")


def test_namespace_is_created_and_read_back(
    kube_api_client: kube_client.ApiClient, namespace: str
) -> None:
    core = kube_client.CoreV1Api(kube_api_client)

    read = core.read_namespace(namespace)

    assert read.metadata.name == namespace
    assert read.status.phase == "Active"


@pytest.fixture
def widget_crd(kube_api_client: kube_client.ApiClient) -> Iterator[tuple[str, str]]:
    """A namespaced CRD of the test's own (CRDs are cluster-wide), removed afterwards."""
    extensions = kube_client.ApiextensionsV1Api(kube_api_client)
    plural = f"widgets{uuid.uuid4().hex[:8]}"
    group = "smoke.jobqueue.dev"
    name = f"{plural}.{group}"
    extensions.create_custom_resource_definition(
        {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": name},
            "spec": {
                "group": group,
                "scope": "Namespaced",
                "names": {"plural": plural, "singular": plural[:-1], "kind": plural.title()},
                "versions": [
                    {
                        "name": "v1",
                        "served": True,
                        "storage": True,
                        "schema": {
                            "openAPIV3Schema": {
                                "type": "object",
                                "properties": {
                                    "spec": {
                                        "type": "object",
                                        "properties": {"size": {"type": "integer", "minimum": 1}},
                                    }
                                },
                            }
                        },
                    }
                ],
            },
        }
    )
    stream = watch.Watch().stream(
        extensions.list_custom_resource_definition,
        field_selector=f"metadata.name={name}",
        timeout_seconds=30,
    )
    _wait_for_event(
        stream,
        lambda event: any(
            condition.type == "Established" and condition.status == "True"
            for condition in (event["object"].status.conditions or [])
        ),
    )
    yield group, plural
    extensions.delete_custom_resource_definition(name)


def test_custom_resource_is_stored_validated_and_read_back(
    kube_api_client: kube_client.ApiClient, namespace: str, widget_crd: tuple[str, str]
) -> None:
    group, plural = widget_crd
    custom = kube_client.CustomObjectsApi(kube_api_client)
    kind = plural.title()

    custom.create_namespaced_custom_object(
        group, "v1", namespace, plural,
        {"apiVersion": f"{group}/v1", "kind": kind, "metadata": {"name": "one"},
         "spec": {"size": 3}},
    )  # fmt: skip
    read = custom.get_namespaced_custom_object(group, "v1", namespace, plural, "one")
    with pytest.raises(kube_client.ApiException) as refused:
        custom.create_namespaced_custom_object(
            group, "v1", namespace, plural,
            {"apiVersion": f"{group}/v1", "kind": kind, "metadata": {"name": "two"},
             "spec": {"size": 0}},
        )  # fmt: skip

    assert read["spec"] == {"size": 3}
    assert refused.value.status == 422
    assert "spec.size" in refused.value.body


def test_controller_manager_gives_a_deployment_its_replica_set(
    kube_api_client: kube_client.ApiClient, namespace: str
) -> None:
    apps = kube_client.AppsV1Api(kube_api_client)
    labels = {"app": "smoke"}
    apps.create_namespaced_deployment(
        namespace,
        kube_client.V1Deployment(
            metadata=kube_client.V1ObjectMeta(name="smoke"),
            spec=kube_client.V1DeploymentSpec(
                replicas=1,
                selector=kube_client.V1LabelSelector(match_labels=labels),
                template=kube_client.V1PodTemplateSpec(
                    metadata=kube_client.V1ObjectMeta(labels=labels),
                    spec=kube_client.V1PodSpec(
                        containers=[kube_client.V1Container(name="main", image="busybox")]
                    ),
                ),
            ),
        ),
    )

    stream = watch.Watch().stream(apps.list_namespaced_replica_set, namespace, timeout_seconds=30)
    event = _wait_for_event(stream, lambda event: event["type"] == "ADDED")

    owner = event["object"].metadata.owner_references[0]
    assert (owner.kind, owner.name) == ("Deployment", "smoke")


def test_postgres_answers_queries(database_url: str) -> None:
    with psycopg.connect(database_url) as connection:
        one = connection.execute("SELECT 1").fetchone()
        version = connection.execute("SHOW server_version_num").fetchone()

    assert one == (1,)
    assert version is not None
    assert int(version[0]) >= 150000


def test_each_test_gets_a_migrated_database_of_its_own(database_url: str) -> None:
    # A table made here would show up in the next test's clone if the database were shared.
    with psycopg.connect(database_url) as connection:
        before = {
            row[0]
            for row in connection.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            )
        }
        connection.execute("CREATE TABLE only_mine (id int)")

    assert "only_mine" not in before
    assert {"queues", "jobs", "job_events", "workers", "schema_migrations"} <= before


def test_redis_answers_ping_and_starts_empty(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as connection:
        assert connection.ping() is True
        assert connection.dbsize() == 0
        connection.set("smoke", "yes", ex=60)
        assert connection.get("smoke") == b"yes"


def test_kafka_delivers_a_produced_message(kafka: KafkaTarget) -> None:
    topic = f"{kafka.topic_prefix}smoke"
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers})
    delivered: list[KafkaError | None] = []
    producer.produce(
        topic, key=b"k", value=b"hello", on_delivery=lambda err, _: delivered.append(err)
    )
    assert producer.flush(30) == 0
    assert delivered == [None]

    consumer = Consumer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "group.id": f"{kafka.topic_prefix}smoke",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    deadline = time.monotonic() + 30
    try:
        message = None
        while message is None and time.monotonic() < deadline:
            candidate = consumer.poll(1.0)
            if candidate is not None and candidate.error() is None:
                message = candidate
    finally:
        consumer.close()

    assert message is not None, "no message consumed within 30 s"
    assert (message.key(), message.value()) == (b"k", b"hello")
