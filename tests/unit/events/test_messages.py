"""The pure rules of the outbox relay: topic names, message encoding, what may be marked."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from jobqueue.errors import InvalidInputError
from jobqueue.events import (
    EVENT_KINDS,
    OutboxEvent,
    RenderedEvent,
    acknowledged_prefix,
    all_topics,
    encode_event,
    message_of,
    topic_for,
)
from jobqueue.events.messages import stub_of

_MOMENT = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)


def _event(event_id: int, job_id: str, kind: str = "started", attempt: int = 1) -> OutboxEvent:
    return OutboxEvent(event_id, job_id, "emails", kind, attempt, _MOMENT, {"worker_id": "w-1"})


def test_each_event_kind_has_its_own_topic_under_the_prefix() -> None:
    assert all_topics("jobqueue.") == [
        "jobqueue.jobs.submitted",
        "jobqueue.jobs.started",
        "jobqueue.jobs.succeeded",
        "jobqueue.jobs.failed",
        "jobqueue.jobs.dead-lettered",
        "jobqueue.jobs.cancelled",
    ]
    assert topic_for("acme.", "dead_lettered") == "acme.jobs.dead-lettered"


def test_unknown_event_kind_has_no_topic() -> None:
    with pytest.raises(InvalidInputError, match="unknown event kind 'retried'"):
        topic_for("jobqueue.", "retried")


def test_event_kinds_match_the_stores() -> None:
    model = pytest.importorskip("jobqueue.store.model")

    assert set(EVENT_KINDS) == {kind.value for kind in model.EventKind}


def test_message_is_keyed_by_job_and_carries_the_event_as_json() -> None:
    event = OutboxEvent(
        id=42,
        job_id="0b4c9c1e-5f43-4d0c-9a57-2f0d0a3c1f00",
        queue="emails",
        kind="failed",
        attempt=2,
        occurred_at=_MOMENT,
        data={"error": "exit status 3 — «bad»", "retry_at": None},
    )

    message = encode_event("jobqueue.", event)

    assert message.topic == "jobqueue.jobs.failed"
    assert message.key == b"0b4c9c1e-5f43-4d0c-9a57-2f0d0a3c1f00"
    assert json.loads(message.value) == {
        "event_id": 42,
        "job_id": "0b4c9c1e-5f43-4d0c-9a57-2f0d0a3c1f00",
        "queue": "emails",
        "kind": "failed",
        "attempt": 2,
        "occurred_at": "2026-03-04T05:06:07.891011Z",
        "data": {"error": "exit status 3 — «bad»", "retry_at": None},
    }
    assert message.headers == (("event-kind", b"failed"), ("event-id", b"42"))


def test_a_stub_is_the_event_without_its_data_saying_why() -> None:
    event = OutboxEvent(7, "job-1", "emails", "failed", 2, _MOMENT, {"error": "x" * 5000})
    full = encode_event("jobqueue.", event)
    rendered = RenderedEvent(7, "job-1", "failed", full.value.decode(), xid="42")

    stub = message_of("jobqueue.", stub_of(rendered, "Broker: Message size too large"))

    document = json.loads(stub.value)
    assert document == json.loads(full.value) | {
        "data": {},
        "data_omitted": "Kafka refused the whole event: Broker: Message size too large",
    }
    assert (stub.topic, stub.key, stub.headers) == (full.topic, full.key, full.headers)


def test_event_time_is_written_in_utc_whatever_its_zone() -> None:
    east = timezone(timedelta(hours=2))
    event = OutboxEvent(1, "j", "q", "submitted", 0, datetime(2026, 1, 1, 2, 0, tzinfo=east))

    document = json.loads(encode_event("p.", event).value)

    assert document["occurred_at"] == "2026-01-01T00:00:00.000000Z"


def test_event_time_without_a_zone_is_refused() -> None:
    event = OutboxEvent(1, "j", "q", "submitted", 0, datetime(2026, 1, 1))

    with pytest.raises(InvalidInputError, match="no time zone"):
        encode_event("p.", event)


def test_everything_acknowledged_is_published() -> None:
    batch = [_event(1, "a"), _event(2, "b"), _event(3, "a")]

    assert acknowledged_prefix(batch, {1, 2, 3}) == 3


def test_the_progress_stops_before_the_first_event_not_acknowledged() -> None:
    batch = [
        _event(1, "a", "submitted"),
        _event(2, "b", "submitted"),
        _event(3, "a", "started"),  # not acknowledged
        _event(4, "b", "started"),
        _event(5, "a", "succeeded"),  # acknowledged, but after a hole in job a
    ]

    # Events 3 to 5 are sent again; 4 and 5 then arrive twice, none out of order.
    assert acknowledged_prefix(batch, {1, 2, 4, 5}) == 2


def test_nothing_acknowledged_at_the_start_publishes_nothing() -> None:
    assert acknowledged_prefix([_event(1, "a"), _event(2, "b")], {2}) == 0
    assert acknowledged_prefix([_event(1, "a")], set()) == 0
    assert acknowledged_prefix([], {1}) == 0
