"""The relay's edge with confluent-kafka: client settings, topic creation, and the sender.

librdkafka reports one outage many times: every reconnect attempt is a log line and an
error callback. Here its log lines go to DEBUG on ``jobqueue.events.librdkafka`` (a
configuration warning stays a WARNING), and ``KafkaSender`` turns the stream of error
callbacks into one WARNING when an outage starts and one INFO when a delivery succeeds
again.

The sender's methods block (produce may wait for queue space, flush waits for delivery
reports), so the relay calls them through ``asyncio.to_thread``, one call at a time: a
sender is never used from two threads at once.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic  # re-exported by .admin, but only the stub here types

from jobqueue.config import KafkaSettings
from jobqueue.errors import (
    ConfigError,
    JobQueueError,
    PermanentError,
    PermissionDeniedError,
    UnavailableError,
)
from jobqueue.events.messages import RenderedEvent, all_topics, route_of
from jobqueue.events.metrics import KAFKA_DELIVERY_ERRORS

logger = logging.getLogger(__name__)
_librdkafka_logger = logging.getLogger("jobqueue.events.librdkafka")

# Delivery settings of the relay's producer. Idempotence makes the broker drop the
# duplicates that the producer's own retries would create and keeps each partition in
# produce order across retries; it implies acks=all.
PRODUCER_SETTINGS: Mapping[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    # 0 means never time out: while the broker is down, messages wait in the producer
    # rather than failing and being produced again behind their successors.
    "message.timeout.ms": 0,
    "linger.ms": 5,  # batch what is produced within 5 ms into one request
    # Larger, compressed batches cost the broker far less per event. Relaying 60,000
    # events on one 2-core machine, these two took the broker from 15-28 to 6-10 us of CPU
    # per event, and the relay from 17-18 to 14-15 (every Kafka client library reads lz4).
    "batch.size": 1_000_000,
    "compression.type": "lz4",
    # Report failures only: a Python callback per delivered message costs more than the
    # rest of relaying it. What was sent and not reported failed was delivered, once
    # nothing is outstanding (see KafkaSender.acknowledged).
    "delivery.report.only.error": True,
    "log.connection.close": False,  # brokers close idle connections; that is no news
}

_CONFIGURATION_CODES = frozenset(
    {
        KafkaError.INVALID_REPLICATION_FACTOR,
        KafkaError.INVALID_PARTITIONS,
        KafkaError.INVALID_CONFIG,
        KafkaError.POLICY_VIOLATION,
        KafkaError.TOPIC_EXCEPTION,
    }
)
_PERMISSION_CODES = frozenset(
    {
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError._AUTHENTICATION,
    }
)
_PURGE_CODES = frozenset({KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT})

_Headers = list[tuple[str, str | bytes | None]]  # as Producer.produce takes them


class _LibrdkafkaLog:
    """The ``logger`` librdkafka is given: its lines go to DEBUG (errors arrive as callbacks)."""

    def log(self, level: int, message: str, *arguments: object) -> None:
        text = message % arguments if arguments else message
        if level >= logging.WARNING and "CONFWARN" in text:
            _librdkafka_logger.warning("%s", text)
        else:
            _librdkafka_logger.debug("%s", text)


def client_settings(settings: KafkaSettings) -> dict[str, Any]:
    """librdkafka settings for reaching the brokers (address and security), from our config."""
    if not settings.bootstrap_servers:
        raise ConfigError("kafka.bootstrap_servers: must be set to publish job events")
    config: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "security.protocol": settings.security_protocol,
        "logger": _LibrdkafkaLog(),
    }
    if settings.sasl_mechanism:
        config["sasl.mechanism"] = settings.sasl_mechanism
    if settings.sasl_username is not None:
        config["sasl.username"] = settings.sasl_username
    if settings.sasl_password is not None:
        config["sasl.password"] = settings.sasl_password
    if settings.ssl_ca_location:
        config["ssl.ca.location"] = settings.ssl_ca_location
    return config


def wrap_kafka_error(error: KafkaError, doing: str) -> JobQueueError:
    """Our error for a librdkafka one: unavailable when it may pass, else permanent."""
    message = f"Kafka: {doing} failed: {error.str()} ({error.name()})"
    if error.code() in _CONFIGURATION_CODES:
        return ConfigError(message)
    if error.code() in _PERMISSION_CODES:
        return PermissionDeniedError(message)
    if error.fatal():
        return PermanentError(message)
    return UnavailableError(message, retry_after_s=5.0)


def ensure_topics(
    bootstrap: str | KafkaSettings,
    prefix: str,
    partitions: int = 3,
    replication: int = 1,
    *,
    timeout_s: float = 10.0,
) -> list[str]:
    """Create the six event topics that do not exist yet; return the names created.

    Idempotent: a topic that already exists is left as it is (its partition count is not
    changed, since that would move keys to other partitions and break per-job order).
    Blocks for up to about ``timeout_s``; an unreachable broker raises ``UnavailableError``.
    """
    settings = bootstrap if isinstance(bootstrap, KafkaSettings) else KafkaSettings(bootstrap)
    admin = AdminClient(client_settings(settings))
    wanted = [NewTopic(name, partitions, replication) for name in all_topics(prefix)]
    futures = admin.create_topics(wanted, operation_timeout=timeout_s, request_timeout=timeout_s)

    created: list[str] = []
    for name, future in futures.items():
        try:
            future.result()
        except KafkaException as exception:
            error = exception.args[0]
            if error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise wrap_kafka_error(error, f"creating topic {name}") from exception
        created.append(name)
    if created:
        logger.info("Created the Kafka topics %s", ", ".join(sorted(created)))
    return created


class KafkaSender:
    """An idempotent producer that remembers which events the broker acknowledged.

    ``send`` produces a batch of events under the settings' topic prefix; ``wait`` serves
    delivery reports until none is outstanding or the time is up; ``acknowledged`` is the
    set of event ids the broker confirmed since the last ``send``.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        client_id: str = "jobqueue-outbox",
        overrides: Mapping[str, Any] | None = None,
    ) -> None:
        # ``overrides`` are librdkafka settings over PRODUCER_SETTINGS (tests use them).
        config = client_settings(settings) | dict(PRODUCER_SETTINGS) | dict(overrides or {})
        config["client.id"] = client_id
        config["error_cb"] = self._on_error
        try:
            self._producer = Producer(config)
        except KafkaException as exception:
            raise wrap_kafka_error(exception.args[0], "creating the producer") from exception
        self._prefix = settings.topic_prefix
        self._routes: dict[str, tuple[str, tuple[str, bytes]]] = {}  # by event kind
        self._sent: list[int] = []
        self._failures: dict[int, KafkaError] = {}
        self._outage_since: float | None = None  # time.monotonic() of the first error
        self.fatal_error: KafkaError | None = None

    @property
    def in_outage(self) -> bool:
        return self._outage_since is not None

    @property
    def acknowledged(self) -> frozenset[int]:
        """The events of the last ``send`` the broker confirmed.

        Only failures are reported, so this is what was sent less what failed; and only
        once nothing is outstanding: until then no event counts as confirmed.
        """
        if len(self._producer):
            return frozenset()
        return frozenset(self._sent).difference(self._failures)

    @property
    def failures(self) -> Mapping[int, KafkaError]:
        return dict(self._failures)

    def send(self, events: Sequence[RenderedEvent]) -> None:
        """Begin a batch of ``events`` and produce them all; blocks while the local queue
        is full."""
        self.begin(events)
        self.produce(events)

    def begin(self, events: Sequence[RenderedEvent]) -> None:
        """Begin a batch: ``acknowledged`` and ``failures`` speak of ``events`` from now on.

        Produce them with ``produce``, in order, in one call or several.
        """
        self._sent = [event.id for event in events]
        self._failures.clear()

    def produce(self, events: Sequence[RenderedEvent], *, wait_for_room: bool = True) -> int:
        """Produce each event, in order, as ``messages.message_of`` describes it; returns
        how many the producer took.

        While the local queue is full this blocks, serving delivery reports until there is
        room; without ``wait_for_room`` it returns instead, at the first event not taken.
        The message is not built as an object: the key and value go to the producer as the
        text they are (it encodes them in C), and the topic and kind header are made once
        per kind. Producing 30,000 events (five alternating runs), that took this from
        4.1-4.8 to 2.0-2.7 us of CPU per event.
        """
        produce = self._producer.produce
        routes = self._routes
        for taken, event in enumerate(events):
            route = routes.get(event.kind) or self._route(event.kind)
            topic = route[0]
            headers: _Headers = [route[1], ("event-id", str(event.id).encode())]
            # Bound per message, so a failure names its event without reading the report.
            report = functools.partial(self._on_failure, event.id, topic)
            try:
                produce(topic, event.value, event.job_id, headers=headers, on_delivery=report)
            except BufferError:
                if not wait_for_room:
                    return taken
                self._produce_when_there_is_room(event, topic, headers, report)
            except KafkaException as exception:
                # Refused before it left (too large, say): a failed delivery of this event.
                self._failed(event.id, topic, exception.args[0])
        return len(events)

    def _route(self, kind: str) -> tuple[str, tuple[str, bytes]]:
        route = self._routes[kind] = route_of(self._prefix, kind)
        return route

    def _produce_when_there_is_room(
        self,
        event: RenderedEvent,
        topic: str,
        headers: _Headers,
        report: Callable[[KafkaError | None, Message | None], None],
    ) -> None:
        """Serve delivery reports until the full local queue takes the message."""
        while True:
            self._producer.poll(0.1)
            try:
                self._producer.produce(
                    topic, event.value, event.job_id, headers=headers, on_delivery=report
                )
                return
            except BufferError:
                continue
            except KafkaException as exception:
                self._failed(event.id, topic, exception.args[0])
                return

    def wait(self, timeout_s: float) -> int:
        """Serve delivery reports for up to ``timeout_s``; return how many are outstanding."""
        outstanding = self._producer.flush(timeout_s)
        if not outstanding and len(self._failures) < len(self._sent):
            self._end_outage()  # something got through
        return outstanding

    def serve(self) -> None:
        """Serve pending callbacks without waiting (safe to call on the event loop)."""
        self._producer.poll(0)

    def abandon(self) -> None:
        """Drop what is not delivered yet (it stays unpublished and is sent again later)."""
        self._producer.purge()
        self._producer.flush(0)

    def close(self) -> None:
        """Abandon what is outstanding, then shut the producer down.

        Purging first matters: ``close`` flushes, and with no message timeout a flush
        during an outage would never end.
        """
        self.abandon()
        self._producer.close()

    def _on_failure(
        self, event_id: int, topic: str, error: KafkaError | None, _message: Message | None
    ) -> None:
        """librdkafka's delivery report, made for failed messages only (see the settings)."""
        if error is not None:
            self._failed(event_id, topic, error)

    def _failed(self, event_id: int, topic: str, error: KafkaError) -> None:
        self._failures[event_id] = error
        if error.code() not in _PURGE_CODES:  # purged by us on shutdown: not the broker's doing
            KAFKA_DELIVERY_ERRORS.labels(topic=topic).inc()

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            # The idempotent producer cannot go on (its sequence is broken); the relay builds
            # a new one and resends everything not yet acknowledged.
            self.fatal_error = error
            logger.error("The Kafka producer failed for good: %s", error.str())
            return
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            logger.warning(
                "Kafka is unreachable (%s); job events wait in the outbox until it is back",
                error.str(),
            )
        else:
            logger.debug("Kafka still unreachable: %s", error.str())

    def _end_outage(self) -> None:
        if self._outage_since is not None:
            logger.info(
                "Kafka is reachable again after %.1f s; publishing job events resumes",
                time.monotonic() - self._outage_since,
            )
            self._outage_since = None
