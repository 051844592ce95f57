"""What the outbox relay sends: topic names, the message of one event, and the marking rule.

Each event kind has a topic of its own (``<prefix>jobs.<kind>``, with ``dead_lettered``
spelled ``dead-lettered`` as topic names usually are), so a consumer that only cares about
dead letters reads only those. The key is the job id: the default partitioner then sends
every event of one job on one topic to one partition, and Kafka keeps them in order there.

The value is a small JSON document that never carries a job's payload or output (those
stay in PostgreSQL); the headers repeat the kind and the event id so a consumer can route
or deduplicate without parsing the value. Delivery is at least once: a consumer that must
not act twice deduplicates on ``event_id``.

``encode_event`` defines the document. The relay does not run it per event: it has
PostgreSQL render the same document while reading the batch (``RenderedEvent``), which
spares it a JSON decode and an encode per event; a test checks both give the same
document for the same rows.

Everything here is pure, so the rules that matter (topic names, encoding, which delivered
events may be marked published) are tested without a broker.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from jobqueue.errors import InvalidInputError

# The event kinds of the job_events table, in lifecycle order. They are spelled out here
# rather than imported from the store so the relay depends on the table, not on JobStore.
EVENT_KINDS: tuple[str, ...] = (
    "submitted",
    "started",
    "succeeded",
    "failed",
    "dead_lettered",
    "cancelled",
)

DEFAULT_TOPIC_PREFIX = "jobqueue."


@dataclass(frozen=True)
class OutboxEvent:
    """One row of ``job_events`` waiting to be published."""

    id: int
    job_id: str
    queue: str
    kind: str
    attempt: int
    occurred_at: datetime
    data: dict[str, Any] = field(default_factory=dict)


# A RenderedEvent is made per event on the relay's hot path; a frozen dataclass spends
# about a microsecond more on each (its __init__ goes through object.__setattr__), so it
# is a plain slotted one. Nothing changes it.
@dataclass(slots=True)
class RenderedEvent:
    """An event as the relay reads it: the value ``encode_event`` would give, already
    rendered by the database, and what is needed to route and mark it."""

    id: int
    job_id: str
    kind: str
    value: str  # the JSON document
    # The writing transaction's id (xid8, as text): the relay's order is (xid, id). Empty
    # for an event rendered here (``encode_event``), which no relay orders.
    xid: str = ""


@dataclass(frozen=True)
class Position:
    """A place in the relay's order: the (xid, id) of an event, xid as text."""

    xid: str
    event_id: int


class _Identified(Protocol):
    @property
    def id(self) -> int: ...


@dataclass(frozen=True)
class KafkaMessage:
    """One event as a Kafka message: what ``message_of`` describes and the relay sends."""

    topic: str
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...]


# One encoder for every message: json.dumps with options builds a new one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


@functools.lru_cache(maxsize=64)  # a few prefixes times six kinds; asked for per event
def topic_for(prefix: str, kind: str) -> str:
    """The topic that carries events of ``kind``: ``jobqueue.jobs.dead-lettered`` and so on."""
    if kind not in EVENT_KINDS:
        raise InvalidInputError(
            f"unknown event kind {kind!r}; known kinds: {', '.join(EVENT_KINDS)}"
        )
    return f"{prefix}jobs.{kind.replace('_', '-')}"


def route_of(prefix: str, kind: str) -> tuple[str, tuple[str, bytes]]:
    """Where an event of ``kind`` goes, and the header that names its kind."""
    return topic_for(prefix, kind), ("event-kind", kind.encode())


def all_topics(prefix: str) -> list[str]:
    """The six topics, in lifecycle order."""
    return [topic_for(prefix, kind) for kind in EVENT_KINDS]


def rfc3339(moment: datetime) -> str:
    """``2026-01-02T03:04:05.123456Z``: UTC, microseconds, a ``Z`` rather than ``+00:00``."""
    if moment.tzinfo is None:
        raise InvalidInputError(f"event time {moment.isoformat()} has no time zone")
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def message_of(prefix: str, event: RenderedEvent) -> KafkaMessage:
    """The Kafka message of one event whose value is already rendered.

    ``KafkaSender.send`` produces exactly this for each event, without building it.
    """
    topic, kind_header = route_of(prefix, event.kind)
    return KafkaMessage(
        topic=topic,
        key=event.job_id.encode(),
        value=event.value.encode(),
        headers=(kind_header, ("event-id", str(event.id).encode())),
    )


def stub_of(event: RenderedEvent, refusal: str) -> RenderedEvent:
    """What is sent in place of an event the broker refused for good (too large, say).

    It is the event's document with an empty ``data`` and a ``data_omitted`` that says
    why, so consumers still see the change of state; the whole event stays in PostgreSQL,
    where ``JobService.Events`` reads it.
    """
    document = json.loads(event.value)
    document["data"] = {}
    document["data_omitted"] = f"Kafka refused the whole event: {refusal}"
    return dataclasses.replace(event, value=_ENCODER.encode(document))


def encode_event(prefix: str, event: OutboxEvent) -> KafkaMessage:
    """The Kafka message of one event."""
    document = {
        "event_id": event.id,
        "job_id": event.job_id,
        "queue": event.queue,
        "kind": event.kind,
        "attempt": event.attempt,
        "occurred_at": rfc3339(event.occurred_at),
        "data": event.data,
    }
    rendered = RenderedEvent(event.id, event.job_id, event.kind, _ENCODER.encode(document))
    return message_of(prefix, rendered)


def acknowledged_prefix(events: Sequence[_Identified], delivered: Collection[int]) -> int:
    """How many events from the start of ``events`` the broker acknowledged, all in a row.

    ``events`` is a batch in the relay's order; ``delivered`` holds the ids the broker
    acknowledged. The relay's progress moves past exactly these; from the first event not
    acknowledged on, the next round sends again, so no job's history is published with a
    hole in it (events after the hole that did arrive arrive a second time).
    """
    for count, event in enumerate(events):
        if event.id not in delivered:
            return count
    return len(events)
