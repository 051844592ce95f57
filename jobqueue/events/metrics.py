"""Metrics of the outbox relay, kept beside its code (``jobqueue.metrics`` has the rest).

Only the replica that holds the relay lock updates them; a standby's values stay where they
were, so alert on the maximum across replicas.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

OUTBOX_BACKLOG = Gauge(
    "jobqueue_outbox_backlog_events",
    "Job events written to the outbox and not yet published to Kafka.",
)
KAFKA_DELIVERY_ERRORS = Counter(
    "jobqueue_kafka_delivery_errors_total",
    "Job events the broker did not acknowledge (they are sent again), by topic.",
    ["topic"],
)
OUTBOX_PUBLISHED = Counter(
    "jobqueue_outbox_published_total",
    "Job events acknowledged by Kafka and marked published.",
)
OUTBOX_REFUSED = Counter(
    "jobqueue_outbox_refused_total",
    "Job events Kafka refused for good (too large for the topic, say), by what the relay did "
    "instead: sent them without their data (stub), or, refused that way too, skipped them "
    "(skipped). Either way the whole event stays in PostgreSQL.",
    ["outcome"],
)
