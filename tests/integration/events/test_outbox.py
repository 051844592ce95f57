"""The outbox relay against real PostgreSQL and Kafka: every event arrives, in order per job,
through a broker outage, and only one relay publishes at a time.

Events are written straight into ``job_events`` (the relay reads only that table), for many
jobs with interleaved ids, and read back from the six topics by a real consumer.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, Message
from confluent_kafka.admin import AdminClient, NewTopic
from prometheus_client import REGISTRY

from jobqueue.config import KafkaSettings
from jobqueue.devenv import Environment
from jobqueue.devenv.processes import free_port
from jobqueue.events import (
    OUTBOX_LOCK_KEY,
    KafkaSender,
    OutboxEvent,
    OutboxRelay,
    Position,
    RenderedEvent,
    all_topics,
    encode_event,
    ensure_topics,
    topic_for,
)
from jobqueue.events import relay as relay_module
from jobqueue.events.relay import _Outbox
from tests.conftest import KafkaTarget

pytestmark = pytest.mark.integration

# One job's events, in order: it fails once, then succeeds. Two events of each job land on
# the "started" topic, so order within a topic is really tested.
LIFECYCLE: tuple[tuple[str, int], ...] = (
    ("submitted", 0),
    ("started", 1),
    ("failed", 1),
    ("started", 2),
    ("succeeded", 2),
)


@dataclass(frozen=True)
class Written:
    id: int
    job_id: str
    kind: str


@dataclass(frozen=True)
class Received:
    topic: str
    job_id: str
    event_id: int
    document: dict[str, object]
    headers: Mapping[str, object]


_INSERT = """
    INSERT INTO job_events (job_id, queue, kind, attempt, occurred_at, data)
    SELECT job_id, 'emails', kind, attempt, %(now)s, jsonb_build_object('step', kind)
    FROM unnest(%(job_ids)s::uuid[], %(kinds)s::text[], %(attempts)s::int[])
        AS step(job_id, kind, attempt)
    RETURNING id, job_id::text, kind
"""


async def write_steps(dsn: str, job_ids: Sequence[str], steps: range) -> list[Written]:
    """Write lifecycle ``steps`` of every job, step by step (one transaction each), so the
    ids of different jobs interleave."""
    written: list[Written] = []
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as connection:
        for step in steps:
            kind, attempt = LIFECYCLE[step]
            cursor = await connection.execute(
                _INSERT,
                {
                    "now": datetime.now(UTC),
                    "job_ids": list(job_ids),
                    "kinds": [kind] * len(job_ids),
                    "attempts": [attempt] * len(job_ids),
                },
            )
            written += [Written(*row) for row in await cursor.fetchall()]
    return written


async def published_ids(dsn: str) -> set[int]:
    """The events at or before the relay's progress."""
    async with await psycopg.AsyncConnection.connect(dsn) as connection:
        cursor = await connection.execute(
            "SELECT id FROM job_events, outbox_progress AS p"
            " WHERE (job_events.xid, job_events.id) <= (p.xid, p.event_id)"
        )
        return {row[0] for row in await cursor.fetchall()}


async def unpublished_count(dsn: str) -> int:
    async with await psycopg.AsyncConnection.connect(dsn) as connection:
        cursor = await connection.execute(
            "SELECT count(*) FROM job_events, outbox_progress AS p"
            " WHERE (job_events.xid, job_events.id) > (p.xid, p.event_id)"
        )
        row = await cursor.fetchone()
        assert row is not None
        return int(row[0])


def _received(message: Message) -> Received:
    assert message.error() is None, message.error()
    value, key, topic = message.value(), message.key(), message.topic()
    assert value is not None
    assert key is not None
    assert topic is not None
    document = json.loads(value)
    headers = dict(message.headers() or [])
    return Received(topic, key.decode(), document["event_id"], document, headers)


def consume(kafka: KafkaTarget, expected: set[int], timeout_s: float = 60) -> list[Received]:
    """Read the six topics from the start until every expected event id was seen, then a
    second more (anything arriving then is a duplicate)."""
    consumer = Consumer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "group.id": f"{kafka.topic_prefix}check-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe(all_topics(kafka.topic_prefix))
    received: list[Received] = []
    deadline = time.monotonic() + timeout_s
    tail_ends: float | None = None
    try:
        while time.monotonic() < (tail_ends or deadline):
            message = consumer.poll(0.2)
            if message is not None:
                received.append(_received(message))
            if tail_ends is None and expected <= {r.event_id for r in received}:
                tail_ends = time.monotonic() + 1.0
    finally:
        consumer.close()
    return received


def check_delivery(
    kafka: KafkaTarget, written: Sequence[Written], received: Sequence[Received]
) -> int:
    """Every written event arrived on its kind's topic, keyed by its job, and each job's
    events on a topic arrived in id order. Returns the number of duplicates."""
    by_id = {event.id: event for event in written}
    assert {message.event_id for message in received} == set(by_id), "events were lost"

    sequences: dict[tuple[str, str], list[int]] = defaultdict(list)
    for message in received:
        event = by_id[message.event_id]
        assert message.topic == topic_for(kafka.topic_prefix, event.kind)
        assert message.job_id == event.job_id
        assert message.document["kind"] == event.kind
        assert message.document["queue"] == "emails"
        assert message.document["data"] == {"step": event.kind}
        assert message.headers["event-id"] == str(event.id).encode()
        assert message.headers["event-kind"] == event.kind.encode()
        sequences[(message.topic, message.job_id)].append(message.event_id)

    for (topic, job_id), ids in sequences.items():
        first_seen = list(dict.fromkeys(ids))
        assert first_seen == sorted(first_seen), f"{job_id} out of order on {topic}: {ids}"
    return len(received) - len(by_id)


async def _wait_for(condition: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running(relay: OutboxRelay) -> AsyncIterator[asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop), name="outbox-relay")
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def make_relay(
    database_url: str, kafka: KafkaTarget, batch_size: int = 128, **settings: Any
) -> OutboxRelay:
    """A relay with short intervals, so tests move quickly; 128 makes several full batches.
    ``settings`` are KafkaSettings fields."""
    return OutboxRelay(
        database_url,
        KafkaSettings(kafka.bootstrap_servers, topic_prefix=kafka.topic_prefix, **settings),
        batch_size=batch_size,
        idle_interval_s=0.05,
        standby_interval_s=0.1,
        retry_delay_s=0.2,
        stop_grace_s=1.0,
    )


def new_jobs(count: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(count)]


async def test_every_event_arrives_once_in_order_per_job_and_is_marked(
    database_url: str, kafka: KafkaTarget
) -> None:
    jobs = new_jobs(200)
    written = await write_steps(database_url, jobs, range(len(LIFECYCLE)))
    relay = make_relay(database_url, kafka)

    async with running(relay):

        async def all_published() -> bool:
            return relay.published == len(written)

        await _wait_for(all_published, 60, "every event to be published")

    received = await asyncio.to_thread(consume, kafka, {event.id for event in written})
    assert check_delivery(kafka, written, received) == 0
    assert await published_ids(database_url) == {event.id for event in written}


async def test_the_relay_creates_its_topics_with_the_partitions_configured(
    database_url: str, kafka: KafkaTarget
) -> None:
    written = await write_steps(database_url, new_jobs(20), range(len(LIFECYCLE)))
    relay = make_relay(database_url, kafka, topic_partitions=2)

    async with running(relay):

        async def all_published() -> bool:
            return relay.published == len(written)

        await _wait_for(all_published, 60, "every event to be published")

    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    topics = (await asyncio.to_thread(admin.list_topics, timeout=10)).topics
    assert {name: len(topics[name].partitions) for name in all_topics(kafka.topic_prefix)} == (
        dict.fromkeys(all_topics(kafka.topic_prefix), 2)
    )


# Event data as the store writes it, and the awkward cases JSON encoders differ on.
_TRICKY_DATA: tuple[dict[str, object], ...] = (
    {"worker_id": "w-1", "exit_code": 0, "run_time_s": 0.00012},
    {"worker_id": "w-1", "exit_code": None, "run_time_s": 2.0},
    {"error": 'exit status 3 — «bad» "quoted"\n\ttabbed \\ \u2028', "retry_at": None},
    {"reason": "", "nested": {"list": [1, 2.5, True, False, None], "empty": {}}},
    {},
)


async def test_the_relay_sends_the_document_encode_event_defines(
    database_url: str, kafka: KafkaTarget
) -> None:
    # The relay has PostgreSQL render each value; encode_event is the definition.
    job_id = new_jobs(1)[0]
    moments = [datetime(2026, 3, 4, 5, 6, 7, micros, tzinfo=UTC) for micros in (0, 1, 891011)]
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as connection:
        events = []
        for index, data in enumerate(_TRICKY_DATA):
            cursor = await connection.execute(
                "INSERT INTO job_events (job_id, queue, kind, attempt, occurred_at, data)"
                " VALUES (%s, 'émails', 'failed', %s, %s, %s::jsonb) RETURNING id",
                (job_id, index, moments[index % len(moments)], json.dumps(data)),
            )
            row = await cursor.fetchone()
            assert row is not None
            moment = moments[index % len(moments)]
            events.append(OutboxEvent(row[0], job_id, "émails", "failed", index, moment, data))
    relay = make_relay(database_url, kafka)

    async with running(relay):

        async def all_published() -> bool:
            return relay.published == len(events)

        await _wait_for(all_published, 60, "every event to be published")

    received = await asyncio.to_thread(consume, kafka, {event.id for event in events})
    by_id = {message.event_id: message for message in received}
    for event in events:
        expected = encode_event(kafka.topic_prefix, event)
        message = by_id[event.id]
        assert message.document == json.loads(expected.value)
        assert message.topic == expected.topic
        assert message.job_id.encode() == expected.key
        assert tuple(message.headers.items()) == expected.headers


def _create_topic(kafka: KafkaTarget, topic: str, max_message_bytes: int) -> None:
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    config = {"max.message.bytes": str(max_message_bytes)}
    (created,) = admin.create_topics([NewTopic(topic, 1, 1, config=config)]).values()
    created.result(timeout=30)


def _refused(outcome: str) -> float:
    return REGISTRY.get_sample_value("jobqueue_outbox_refused_total", {"outcome": outcome}) or 0.0


async def test_an_event_kafka_refuses_for_good_goes_as_a_stub_and_holds_nothing_back(
    database_url: str, kafka: KafkaTarget
) -> None:
    # Failed events may be 1000 bytes, cancelled ones 100: not even a stub fits in that.
    prefix = kafka.topic_prefix
    await asyncio.to_thread(_create_topic, kafka, topic_for(prefix, "failed"), 1000)
    await asyncio.to_thread(_create_topic, kafka, topic_for(prefix, "cancelled"), 100)
    big, small = new_jobs(2)
    rows = [
        (big, "submitted", {"step": "submitted"}),
        # Random, so that no compression brings it under the topic's limit.
        (big, "failed", {"error": base64.b64encode(os.urandom(6000)).decode()}),
        (small, "failed", {"error": "short"}),
        (big, "cancelled", {"reason": "no room for this one"}),
        (big, "succeeded", {"step": "succeeded"}),
    ]
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as connection:
        ids = []
        for job_id, kind, data in rows:
            cursor = await connection.execute(
                "INSERT INTO job_events (job_id, queue, kind, attempt, occurred_at, data)"
                " VALUES (%s, 'emails', %s, 1, now(), %s::jsonb) RETURNING id",
                (job_id, kind, json.dumps(data)),
            )
            row = await cursor.fetchone()
            assert row is not None
            ids.append(row[0])
    submitted, refused, fine, skipped, succeeded = ids
    stubs, skips = _refused("stub"), _refused("skipped")
    relay = make_relay(database_url, kafka)

    async with running(relay):

        async def all_past() -> bool:
            return await published_ids(database_url) == set(ids)

        await _wait_for(all_past, 60, "the relay to move past every event")

    delivered = {submitted, refused, fine, succeeded}
    received = await asyncio.to_thread(consume, kafka, delivered)
    by_id = {message.event_id: message for message in received}
    assert set(by_id) == delivered  # the skipped one never arrives
    stub = by_id[refused].document
    assert stub["data"] == {}
    assert "Kafka refused the whole event" in str(stub["data_omitted"])
    assert (stub["job_id"], stub["kind"], stub["attempt"]) == (big, "failed", 1)
    assert by_id[fine].document["data"] == {"error": "short"}
    assert by_id[succeeded].document["data"] == {"step": "succeeded"}
    assert relay.published == 4
    assert (_refused("stub") - stubs, _refused("skipped") - skips) == (1.0, 1.0)
    assert skipped not in by_id


async def test_an_event_of_an_older_transaction_committed_later_is_not_skipped(
    database_url: str, kafka: KafkaTarget
) -> None:
    # The older transaction takes its id first and writes its event only after a younger
    # one has committed: an event committed later than another may sort before it.
    relay = make_relay(database_url, kafka)
    older = await psycopg.AsyncConnection.connect(database_url)
    try:
        await older.execute("SELECT pg_current_xact_id()")  # the xid is taken now
        younger = await write_steps(database_url, new_jobs(1), range(1))
        async with running(relay):
            await asyncio.wait_for(relay.active.wait(), 10)
            # While the older transaction runs, nothing after its xid may go: the
            # relay must not move its progress past the younger event. (Waiting for an
            # absence: a few of the relay's 50 ms cycles.)
            await asyncio.sleep(0.5)
            assert relay.published == 0
            cursor = await older.execute(
                _INSERT,
                {
                    "now": datetime.now(UTC),
                    "job_ids": new_jobs(1),
                    "kinds": ["submitted"],
                    "attempts": [0],
                },
            )
            older_events = [Written(*row) for row in await cursor.fetchall()]
            await older.commit()

            async def both_published() -> bool:
                return relay.published == 2

            await _wait_for(both_published, 30, "both events to be published")
    finally:
        await older.close()

    written = older_events + younger
    assert older_events[0].id > younger[0].id  # committed in the opposite order of ids
    received = await asyncio.to_thread(consume, kafka, {event.id for event in written})
    assert check_delivery(kafka, written, received) == 0
    assert await published_ids(database_url) == {event.id for event in written}


async def test_the_relay_reads_in_transaction_order_not_by_the_digits(database_url: str) -> None:
    # Events as transactions 3, 9 and 10 would write them (all long over): as text,
    # "10" < "3" < "9".
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as connection:
        ids = []
        for xid in ("10", "9", "3"):
            cursor = await connection.execute(
                "INSERT INTO job_events (job_id, queue, kind, attempt, occurred_at, xid)"
                " VALUES (gen_random_uuid(), 'emails', 'submitted', 0, now(), %s::xid8)"
                " RETURNING id",
                (xid,),
            )
            row = await cursor.fetchone()
            assert row is not None
            ids.append(row[0])
        batch = await _Outbox(connection).read_batch(Position("1", 0), limit=10)

    assert [(event.xid, event.id) for event in batch] == [
        ("3", ids[2]),
        ("9", ids[1]),
        ("10", ids[0]),
    ]


async def test_events_written_while_relaying_follow_the_earlier_ones(
    database_url: str, kafka: KafkaTarget
) -> None:
    jobs = new_jobs(50)
    relay = make_relay(database_url, kafka)

    async with running(relay):
        written: list[Written] = []
        for step in range(len(LIFECYCLE)):
            written += await write_steps(database_url, jobs, range(step, step + 1))
            await asyncio.sleep(0.05)  # let the relay pick up part of the stream

        async def all_published() -> bool:
            return await unpublished_count(database_url) == 0

        await _wait_for(all_published, 60, "every event to be published")

    received = await asyncio.to_thread(consume, kafka, {event.id for event in written})
    assert check_delivery(kafka, written, received) == 0


async def test_a_broker_outage_loses_nothing_and_marks_nothing_undelivered(
    database_url: str,
    kafka: KafkaTarget,
    devenv: Environment,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert devenv.kafka is not None
    caplog.set_level(logging.INFO, logger="jobqueue.events")
    jobs = new_jobs(200)
    relay = make_relay(database_url, kafka, batch_size=16)  # small batches: a longer stream

    try:
        async with running(relay) as task:
            await asyncio.wait_for(relay.active.wait(), 10)
            written = await write_steps(database_url, jobs, range(3))

            # Mid-stream: the broker goes while the relay is sending the first half.
            async def streaming() -> bool:
                return relay.published >= 32

            await _wait_for(streaming, 30, "the relay to start publishing")
            await asyncio.to_thread(devenv.kafka.stop)
            delivered_before_outage = await published_ids(database_url)
            second_half = await write_steps(database_url, jobs, range(3, len(LIFECYCLE)))
            written += second_half

            async def outage_noticed() -> bool:
                return "Kafka is unreachable" in caplog.text

            await _wait_for(outage_noticed, 30, "the relay to notice the outage")
            await asyncio.sleep(1.0)  # the relay keeps trying meanwhile
            assert not task.done(), "the relay must ride out the outage"
            published = await published_ids(database_url)
            assert published == delivered_before_outage, "marked what Kafka never took"
            assert not published & {event.id for event in second_half}

            # Started from this thread: a devenv server dies with the thread that started it.
            devenv.kafka.start()
            await asyncio.to_thread(devenv.kafka.wait_ready)

            async def all_published() -> bool:
                return await unpublished_count(database_url) == 0

            await _wait_for(all_published, 90, "the backlog to drain after the outage")
    finally:
        # Other tests share the broker: it must be up again whatever happened here.
        if not devenv.kafka.process.running():
            devenv.kafka.start()
        devenv.kafka.wait_ready()

    received = await asyncio.to_thread(consume, kafka, {event.id for event in written})
    check_delivery(kafka, written, received)  # duplicates are allowed: at least once
    warnings = [r for r in caplog.records if "Kafka is unreachable" in r.getMessage()]
    assert [r.levelno for r in warnings] == [logging.WARNING], "one warning per outage"
    assert "Kafka is reachable again" in caplog.text


async def test_unreachable_broker_keeps_events_unpublished_without_crashing(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="jobqueue.events")
    nowhere = KafkaTarget(f"127.0.0.1:{free_port()}", "nowhere.")
    written = await write_steps(database_url, new_jobs(20), range(2))
    relay = make_relay(database_url, nowhere)

    began = time.monotonic()
    async with running(relay) as task:

        async def outage_noticed() -> bool:
            return "Kafka is unreachable" in caplog.text

        await _wait_for(outage_noticed, 30, "the relay to notice the broker is missing")
        assert not task.done()
    assert time.monotonic() - began < 30

    assert await unpublished_count(database_url) == len(written)
    assert relay.published == 0


async def _lock_holders(dsn: str) -> int:
    """Sessions holding the relay's advisory lock in this database (pg_locks splits the
    64-bit key into its high and low 32 bits)."""
    async with await psycopg.AsyncConnection.connect(dsn) as connection:
        cursor = await connection.execute(
            """
            SELECT count(*) FROM pg_locks
            WHERE locktype = 'advisory' AND granted
              AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
              AND classid = %(high)s AND objid = %(low)s AND objsubid = 1
            """,
            {"high": OUTBOX_LOCK_KEY >> 32, "low": OUTBOX_LOCK_KEY & 0xFFFF_FFFF},
        )
        row = await cursor.fetchone()
        assert row is not None
        return int(row[0])


async def test_only_one_relay_publishes_and_a_standby_takes_over(
    database_url: str, kafka: KafkaTarget, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="jobqueue.events")
    jobs = new_jobs(40)
    first, second = make_relay(database_url, kafka), make_relay(database_url, kafka)
    stop_first, stop_second = asyncio.Event(), asyncio.Event()
    first_task = asyncio.create_task(first.run(stop_first), name="first-relay")
    second_task: asyncio.Task[None] | None = None
    try:
        await asyncio.wait_for(first.active.wait(), 10)
        second_task = asyncio.create_task(second.run(stop_second), name="second-relay")

        async def standing_by() -> bool:
            return "this one stands by" in caplog.text

        await _wait_for(standing_by, 10, "the second relay to stand by")
        written = await write_steps(database_url, jobs, range(2))

        async def first_published_all() -> bool:
            return first.published == len(written)

        await _wait_for(first_published_all, 30, "the first relay to publish")
        assert await _lock_holders(database_url) == 1
        assert not second.active.is_set()
        assert second.published == 0

        # The first stops and releases the lock; the second takes over.
        stop_first.set()
        await asyncio.wait_for(first_task, 30)
        await asyncio.wait_for(second.active.wait(), 10)
        more = await write_steps(database_url, jobs, range(2, len(LIFECYCLE)))

        async def second_published_the_rest() -> bool:
            return second.published == len(more)

        await _wait_for(second_published_the_rest, 30, "the second relay to publish")
        assert await _lock_holders(database_url) == 1
        assert first.published == len(written)
    finally:
        stop_first.set()
        stop_second.set()
        await asyncio.wait_for(asyncio.gather(first_task, *filter(None, [second_task])), 30)

    assert await _lock_holders(database_url) == 0
    received = await asyncio.to_thread(consume, kafka, {e.id for e in written + more})
    assert check_delivery(kafka, written + more, received) == 0


async def test_events_produced_past_a_full_local_queue_all_arrive_in_order(
    kafka: KafkaTarget,
) -> None:
    settings = KafkaSettings(
        bootstrap_servers=kafka.bootstrap_servers, topic_prefix=kafka.topic_prefix
    )
    await asyncio.to_thread(ensure_topics, settings, kafka.topic_prefix, 1, 1)
    # A local queue of 10 messages: the relay's chunks of 50 overflow it, and the rest of
    # each chunk is produced by a thread that waits for room.
    sender = KafkaSender(settings, overrides={"queue.buffering.max.messages": 10})
    job_id = str(uuid.uuid4())
    events = [
        RenderedEvent(number, job_id, "submitted", json.dumps({"event_id": number}))
        for number in range(1, 121)
    ]
    try:
        async with asyncio.timeout(60):
            await relay_module._produce(sender, events)
            assert await asyncio.to_thread(sender.wait, 30) == 0

        assert sender.acknowledged == {event.id for event in events}
        received = await asyncio.to_thread(consume, kafka, {event.id for event in events})
        assert [r.event_id for r in received] == [event.id for event in events]
    finally:
        await asyncio.to_thread(sender.close)
