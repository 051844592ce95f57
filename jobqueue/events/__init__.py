"""Job lifecycle events: the outbox relay from PostgreSQL to Kafka.

``OutboxRelay`` publishes the rows of ``job_events`` to one topic per event kind
(``topic_for``), at least once and in order per job; ``ensure_topics`` creates the topics.
This package reads the events table directly and knows nothing of the job store's API,
gRPC or kopf.
"""

from jobqueue.events.kafka import KafkaSender, ensure_topics
from jobqueue.events.messages import (
    DEFAULT_TOPIC_PREFIX,
    EVENT_KINDS,
    KafkaMessage,
    OutboxEvent,
    Position,
    RenderedEvent,
    acknowledged_prefix,
    all_topics,
    encode_event,
    message_of,
    topic_for,
)
from jobqueue.events.relay import OUTBOX_LOCK_KEY, OutboxRelay

__all__ = [
    "DEFAULT_TOPIC_PREFIX",
    "EVENT_KINDS",
    "OUTBOX_LOCK_KEY",
    "KafkaMessage",
    "KafkaSender",
    "OutboxEvent",
    "OutboxRelay",
    "Position",
    "RenderedEvent",
    "acknowledged_prefix",
    "all_topics",
    "encode_event",
    "ensure_topics",
    "message_of",
    "topic_for",
]
