"""The outbox relay: publishes ``job_events`` rows to Kafka, in order, and remembers how far.

Every state change of a job writes an event row in the same transaction (the transactional
outbox), so an event exists exactly when its change was committed. This relay is the only
reader. It publishes the events in (xid, id) order, where xid is the id of the transaction
that wrote the event, and keeps the last (xid, id) it has published in the one row of
``outbox_progress``. One cycle:

1. read the next events after the progress, up to ``batch_size``, taking only those whose
   transaction is older than every transaction still running (the xmin of the read's
   snapshot): no transaction can add an event to those any more, so an event committed
   later always sorts after them and is never skipped;
2. produce them all with an idempotent producer and wait for the delivery reports;
3. move the progress to the end of the longest run of acknowledged events from the start
   of the batch; from the first event the broker did not acknowledge on, the next cycle
   reads and sends again.

So delivery is at least once and ordered per job within each topic; a consumer that must
not act twice deduplicates on ``event_id``. A job's events follow its changes in (xid, id)
order because every transaction that writes a job's event holds that job's row lock.
Marking each event published instead would cost an UPDATE of the row per event (a new row
version and new entries in every index of the table); the progress costs one row update
per batch. The price: an event waits for every transaction that began before its own to
end, so one long-running writing transaction anywhere on the server holds publication
back for its length (reads do not: a transaction has an xid only once it writes).

While the broker is down the producer holds the batch (no message timeout) and the cycle
waits; the progress does not move, nothing is dropped, and the batch goes out when the
broker is back. The outage is logged once, by the sender.

An event the broker refuses for good (larger than the topic's ``max.message.bytes``, say)
would be refused every cycle and hold back all the events after it. The relay sends it
again alone (the broker judges whole batches), then, refused again, a stub in its place:
the same document with an empty ``data`` and a ``data_omitted`` saying why; a stub refused
for good too is skipped. Stubs and skips are logged as errors and counted
(``jobqueue_outbox_refused_total``); the whole event stays in PostgreSQL. Other refusals (a
missing topic, a denied write) are sent again until someone fixes their cause.

Only one relay runs at a time across operator replicas: it holds a PostgreSQL session
advisory lock (``OUTBOX_LOCK_KEY``) on its own connection and does all its reads and
updates on that connection, so losing the connection loses the lock and stops the relay
at the same moment. Replicas without the lock try again every ``standby_interval_s``.
TCP keepalives on both ends make a silently vanished relay release the lock within about
a minute rather than the kernel's two hours.

Wake-ups: the relay polls. When a batch was full it reads again at once; otherwise it
waits ``idle_interval_s`` (200 ms). LISTEN/NOTIFY would save those idle queries but needs
a NOTIFY in every event-writing transaction; an event reaching Kafka up to 200 ms late is
fine for lifecycle events, and one indexed query five times a second is cheap.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final, LiteralString

import psycopg
from confluent_kafka import KafkaError

from jobqueue.config import KafkaSettings
from jobqueue.errors import ConfigError, JobQueueError, PermanentError, UnavailableError
from jobqueue.events.kafka import KafkaSender, ensure_topics
from jobqueue.events.messages import (
    Position,
    RenderedEvent,
    acknowledged_prefix,
    stub_of,
)
from jobqueue.events.metrics import OUTBOX_BACKLOG, OUTBOX_PUBLISHED, OUTBOX_REFUSED

logger = logging.getLogger(__name__)

# The advisory lock the relay holds while it runs: "jqoutbox" in ASCII as a 64-bit
# integer. Fixed and documented so an operator can see who holds it in pg_locks
# (classid 1785884533, objid 1952608120: its high and low 32 bits).
OUTBOX_LOCK_KEY: Final = 0x6A71_6F75_7462_6F78

# Take the relay lock if no other session holds it; never waits.
_TRY_LOCK: LiteralString = "SELECT pg_try_advisory_lock(%(key)s)"

# Where the relay has got to.
_READ_PROGRESS: LiteralString = "SELECT xid::text, event_id FROM outbox_progress"

# The next events after the progress whose transactions can add no more (see the module
# docstring; job_events_relay_order serves this), each with its message value: the
# document of messages.encode_event, rendered here, with the time in UTC to the
# microsecond and a Z, as messages.rfc3339 writes it. (The order names the table's
# columns: a bare "xid" would be the text column of the output, sorted as text.)
_READ_BATCH: LiteralString = """
    SELECT id, job_id::text, kind, json_build_object(
      'event_id', id, 'job_id', job_id, 'queue', queue, 'kind', kind, 'attempt', attempt,
      'occurred_at', to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
      'data', data
    )::text, xid::text AS xid_text
    FROM job_events
    WHERE (xid, id) > (%(xid)s::xid8, %(id)s::bigint)
      AND xid < pg_snapshot_xmin(pg_current_snapshot())
    ORDER BY job_events.xid, job_events.id
    LIMIT %(limit)s
"""

# Move the progress past what was published.
_ADVANCE: LiteralString = """
    UPDATE outbox_progress
    SET xid = %(xid)s::xid8, event_id = %(id)s::bigint, updated_at = %(now)s
"""

# Events still waiting, for the backlog gauge.
_COUNT_BACKLOG: LiteralString = """
    SELECT count(*) FROM job_events, outbox_progress AS p
    WHERE (job_events.xid, job_events.id) > (p.xid, p.event_id)
"""

# Make the server notice a vanished relay (and free its lock) within about a minute.
_SERVER_KEEPALIVES: Sequence[LiteralString] = (
    "SET tcp_keepalives_idle = 30",
    "SET tcp_keepalives_interval = 10",
    "SET tcp_keepalives_count = 3",
)

_TOPIC_RETRY_S = 30.0  # seconds between attempts to create the topics while that fails
_TOPIC_TIMEOUT_S = 5.0  # seconds one attempt may take (the relay waits for it)
_BACKLOG_INTERVAL_S = 5.0  # seconds between two counts of the backlog
# Events handed to the producer between two turns of the event loop (see ``_produce``).
_PRODUCE_CHUNK = 50
_FAILURE_WARNING_INTERVAL_S = 60.0  # seconds between two warnings about refused events

# Delivery errors that sending the same message again cannot cure. Anything else (the
# broker away, a missing topic, a denied write) is sent again until it passes: those are
# fixed outside, and the event must not be lost meanwhile.
_REFUSED_FOR_GOOD = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_RECORD,
        KafkaError.INVALID_MSG_SIZE,
    }
)


@contextlib.contextmanager
def _database_errors(doing: str) -> Iterator[None]:
    """psycopg errors as ours: a lost or refused connection may pass, anything else will not."""
    try:
        yield
    except (psycopg.OperationalError, psycopg.InterfaceError) as error:
        raise UnavailableError(f"PostgreSQL: {doing} failed: {error}") from error
    except psycopg.Error as error:
        raise PermanentError(f"PostgreSQL: {doing} failed: {error}") from error


async def _produce(sender: KafkaSender, events: Sequence[RenderedEvent]) -> None:
    """Hand ``events`` to the producer on the event loop, a chunk at a time.

    The loop is the operator's, and dispatch waits while it is busy. Producing costs a few
    microseconds of Python an event; a batch produced in one go held the loop (or, from a
    thread, the GIL) for milliseconds at a time, which jobs submitted meanwhile waited
    out. Between chunks, whatever else is ready runs. Only a full local queue, which takes
    waiting for the broker, is waited out in a thread.
    """
    sender.begin(events)
    for start in range(0, len(events), _PRODUCE_CHUNK):
        chunk = events[start : start + _PRODUCE_CHUNK]
        taken = sender.produce(chunk, wait_for_room=False)
        if taken < len(chunk):
            await asyncio.to_thread(sender.produce, chunk[taken:])
        await asyncio.sleep(0)


async def _sleep_unless_stopped(stop: asyncio.Event, seconds: float) -> bool:
    """Wait ``seconds`` or until ``stop`` is set; say whether it was set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


class _Outbox:
    """The relay's queries, on its one dedicated connection."""

    def __init__(self, connection: psycopg.AsyncConnection[Any]) -> None:
        self._connection = connection

    async def try_lock(self) -> bool:
        with _database_errors("taking the outbox relay lock"):
            cursor = await self._connection.execute(_TRY_LOCK, {"key": OUTBOX_LOCK_KEY})
            row = await cursor.fetchone()
        return bool(row and row[0])

    async def progress(self) -> Position:
        with _database_errors("reading the outbox progress"):
            cursor = await self._connection.execute(_READ_PROGRESS)
            row = await cursor.fetchone()
        if row is None:
            raise PermanentError("PostgreSQL: outbox_progress has no row; is the schema migrated?")
        return Position(row[0], row[1])

    async def read_batch(self, after: Position, limit: int) -> list[RenderedEvent]:
        params = {"xid": after.xid, "id": after.event_id, "limit": limit}
        with _database_errors("reading unpublished job events"):
            cursor = await self._connection.execute(_READ_BATCH, params)
            rows = await cursor.fetchall()
        return [RenderedEvent(*row) for row in rows]

    async def advance(self, to: Position, now: datetime) -> None:
        params = {"xid": to.xid, "id": to.event_id, "now": now}
        with _database_errors("recording the outbox progress"):
            await self._connection.execute(_ADVANCE, params)

    async def backlog(self) -> int:
        with _database_errors("counting unpublished job events"):
            cursor = await self._connection.execute(_COUNT_BACKLOG)
            row = await cursor.fetchone()
        return int(row[0]) if row else 0


class OutboxRelay:
    """Publishes job events from the outbox table to Kafka; run it with ``run(stop)``.

    ``kafka`` carries the brokers, the topic prefix and the security settings;
    ``bootstrap_servers`` and ``topic_prefix``, when given, override its fields (enough on
    their own for a plaintext cluster). ``active`` is set while this relay holds the lock
    and relays; ``published`` counts the events it has published (for tests and the log).
    """

    def __init__(
        self,
        dsn: str,
        kafka: KafkaSettings | None = None,
        *,
        bootstrap_servers: str | None = None,
        topic_prefix: str | None = None,
        batch_size: int = 1000,
        idle_interval_s: float = 0.2,
        standby_interval_s: float = 2.0,
        retry_delay_s: float = 1.0,
        stop_grace_s: float = 5.0,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        kafka = kafka or KafkaSettings()
        if bootstrap_servers is not None:
            kafka = dataclasses.replace(kafka, bootstrap_servers=bootstrap_servers)
        if topic_prefix is not None:
            kafka = dataclasses.replace(kafka, topic_prefix=topic_prefix)
        if not kafka.bootstrap_servers:
            raise ConfigError("kafka.bootstrap_servers: must be set to run the outbox relay")
        self._dsn = dsn
        self._kafka = kafka
        self._prefix = kafka.topic_prefix
        self.batch_size = batch_size
        self.idle_interval_s = idle_interval_s
        self.standby_interval_s = standby_interval_s
        self.retry_delay_s = retry_delay_s
        self.stop_grace_s = stop_grace_s
        self._now = now
        self.active = asyncio.Event()
        self.published = 0
        self._position = Position("1", 0)  # read from the database when relaying begins
        self._database_down = False
        self._topics_ready = False
        self._topics_warned = False
        self._next_topics_attempt = 0.0  # time.monotonic()
        self._next_failure_warning = 0.0  # time.monotonic()

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until ``stop`` is set.

        Outages of PostgreSQL or Kafka are waited out. Only a permanent error (the table is
        missing, a setting is wrong) raises, as ``PermanentError`` or ``ConfigError``.
        """
        while not stop.is_set():
            try:
                await self._hold_lock_and_relay(stop)
            except UnavailableError as error:
                if not self._database_down:
                    logger.warning(
                        "The outbox relay lost PostgreSQL (%s); retrying every %.1f s",
                        error,
                        self.retry_delay_s,
                    )
                    self._database_down = True
                await _sleep_unless_stopped(stop, self.retry_delay_s)

    async def _hold_lock_and_relay(self, stop: asyncio.Event) -> None:
        connection = await self._connect()
        async with connection:
            outbox = _Outbox(connection)
            if not await self._wait_for_lock(outbox, stop):
                return

            self.active.set()
            logger.info("This replica relays the outbox to Kafka now")
            try:
                await self._relay(outbox, stop)
            finally:
                self.active.clear()
        logger.info("The outbox relay stopped and released its lock")

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        with _database_errors("connecting the outbox relay"):
            connection = await psycopg.AsyncConnection.connect(
                self._dsn,
                autocommit=True,
                connect_timeout=5,
                application_name="jobqueue-outbox-relay",
                keepalives=1,
                keepalives_idle=30,
                keepalives_interval=10,
                keepalives_count=3,
            )
            for statement in _SERVER_KEEPALIVES:
                await connection.execute(statement)
        if self._database_down:
            logger.info("The outbox relay reached PostgreSQL again")
            self._database_down = False
        return connection

    async def _wait_for_lock(self, outbox: _Outbox, stop: asyncio.Event) -> bool:
        announced = False
        while not stop.is_set():
            if await outbox.try_lock():
                return True
            if not announced:
                logger.info("Another replica relays the outbox; this one stands by")
                announced = True
            await _sleep_unless_stopped(stop, self.standby_interval_s)
        return False

    async def _relay(self, outbox: _Outbox, stop: asyncio.Event) -> None:
        sender = KafkaSender(self._kafka)
        next_backlog_count = 0.0  # time.monotonic()
        # Read once: only the lock holder moves it, and this relay holds the lock.
        self._position = await outbox.progress()
        try:
            while not stop.is_set():
                await self._ensure_topics()

                # A producer that failed for good cannot send again; its replacement
                # resends whatever was not acknowledged.
                if sender.fatal_error is not None:
                    await asyncio.to_thread(sender.close)
                    sender = KafkaSender(self._kafka)

                pause_s = await self._relay_batch(outbox, sender, stop)

                if time.monotonic() >= next_backlog_count:
                    OUTBOX_BACKLOG.set(await outbox.backlog())
                    next_backlog_count = time.monotonic() + _BACKLOG_INTERVAL_S
                if pause_s:
                    # Error reports of an idle producer pile up until served; serve them.
                    sender.serve()
                    await _sleep_unless_stopped(stop, pause_s)
        finally:
            await asyncio.to_thread(sender.close)

    async def _relay_batch(
        self, outbox: _Outbox, sender: KafkaSender, stop: asyncio.Event
    ) -> float:
        """One cycle; returns how long to pause before the next (0 after a full batch)."""
        events = await outbox.read_batch(self._position, self.batch_size)
        if not events:
            return self.idle_interval_s

        await _produce(sender, events)
        await self._wait_for_deliveries(sender, stop)

        done = acknowledged_prefix(events, sender.acknowledged)
        if done:
            last = events[done - 1]
            reached = Position(last.xid, last.id)
            # Not shielded: if cancellation cuts this short, the events are only sent twice.
            await outbox.advance(reached, self._now())
            self._position = reached
            OUTBOX_PUBLISHED.inc(done)
            self.published += done

        failures = sender.failures
        if failures and stop.is_set():
            logger.info(
                "Stopping with %d job events unacknowledged; they stay in the outbox",
                len(events) - done,
            )
            return 0.0
        if failures:
            refused = events[done] if done < len(events) else None
            error = failures.get(refused.id) if refused else None
            if refused and error and error.code() in _REFUSED_FOR_GOOD:
                await self._replace_refused(outbox, sender, stop, refused, error)
                return 0.0
            self._report_failures(failures, len(events), len(events) - done)
            return self.retry_delay_s
        return 0.0 if len(events) == self.batch_size else self.idle_interval_s

    async def _replace_refused(
        self,
        outbox: _Outbox,
        sender: KafkaSender,
        stop: asyncio.Event,
        event: RenderedEvent,
        error: KafkaError,
    ) -> None:
        """Get past an event the broker refused for good; see the module docstring.

        It is sent again alone first: the broker judges a whole batch, so a small event
        can be refused for the company it kept. Refused alone too, a stub goes in its place
        (``stub_of``); a stub refused for good is skipped. Whatever this batch delivered
        after it is sent again behind it, as after any gap.
        """
        tries = (("alone", event), ("stub", stub_of(event, error.str())))
        outcome = "skipped"
        for name, sent in tries:
            sender.send([sent])
            await self._wait_for_deliveries(sender, stop)
            if event.id in sender.acknowledged:
                outcome = name
                break
            failure = sender.failures.get(event.id)
            if failure is None or failure.code() not in _REFUSED_FOR_GOOD:
                return  # not delivered for a reason that may pass: the next cycle tries again
        if outcome != "alone":
            logger.error(
                "Kafka refused job event %d (%s, job %s) for good: %s; %s. The whole event "
                "stays in PostgreSQL (JobService.Events)",
                event.id, event.kind, event.job_id, error.str(),
                "it was sent without its data" if outcome == "stub" else "it is skipped",
                extra={"job_id": event.job_id},
            )  # fmt: skip
            OUTBOX_REFUSED.labels(outcome).inc()
        reached = Position(event.xid, event.id)
        await outbox.advance(reached, self._now())
        self._position = reached
        if outcome != "skipped":
            OUTBOX_PUBLISHED.inc()
            self.published += 1

    def _report_failures(
        self, failures: Mapping[int, KafkaError], batch: int, unmarked: int
    ) -> None:
        """A WARNING at most once a minute: an event Kafka always refuses fails every cycle."""
        event_id, error = next(iter(failures.items()))
        warn = time.monotonic() >= self._next_failure_warning
        (logger.warning if warn else logger.debug)(
            "Kafka refused %d of %d job events (event %d: %s); the %d from the first "
            "refused one on will be sent again, in order",
            len(failures), batch, event_id, error.str(), unmarked,
        )  # fmt: skip
        if warn:
            self._next_failure_warning = time.monotonic() + _FAILURE_WARNING_INTERVAL_S

    async def _wait_for_deliveries(self, sender: KafkaSender, stop: asyncio.Event) -> None:
        """Serve delivery reports until none is outstanding; while Kafka is down, keep waiting."""
        while await asyncio.to_thread(sender.wait, 0.2):
            if sender.fatal_error is not None:
                await asyncio.to_thread(sender.abandon)
                return
            if stop.is_set():
                # Give what is in flight a moment to land, then leave the rest unmarked.
                if await asyncio.to_thread(sender.wait, self.stop_grace_s):
                    await asyncio.to_thread(sender.abandon)
                return

    async def _ensure_topics(self) -> None:
        """Create the topics once; until that works, retry every 30 s but produce anyway."""
        if self._topics_ready or time.monotonic() < self._next_topics_attempt:
            return
        self._next_topics_attempt = time.monotonic() + _TOPIC_RETRY_S
        try:
            await asyncio.to_thread(
                ensure_topics,
                self._kafka,
                self._prefix,
                self._kafka.topic_partitions,
                self._kafka.topic_replication,
                timeout_s=_TOPIC_TIMEOUT_S,
            )
        except UnavailableError as error:
            log = logger.debug if self._topics_warned else logger.warning
            log("Could not create the event topics yet (%s); retrying in %.0f s", error,
                _TOPIC_RETRY_S)  # fmt: skip
            self._topics_warned = True
            return
        except JobQueueError as error:
            # A setting or permission problem will not pass; the broker may still create
            # the topics on first use, so relaying goes on.
            logger.error("Could not create the event topics: %s", error)
        self._topics_ready = True
