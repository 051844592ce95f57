"""Reports to the operator, batched by the traffic itself: ``Started`` and ``Result``.

One ``Reporter`` per kind of report keeps a few calls in flight (``MAX_CALLS_IN_FLIGHT``).
An item submitted while fewer are under way goes at once; one submitted while all are
under way waits, and goes in the next batch the moment one returns: an idle worker
reports each item at once, a busy one sends many per round trip, and no timer adds
latency to either. More than one call in flight matters at moderate rates: with one, a
job that ended while the previous report was out waited for that report's whole round
trip (the operator's statement included), which at 500 jobs a second was most of the
time from a job's assignment to its recorded start.

An item stays with the reporter until the operator has answered for it. The answer is
final either way: accepted, or refused as stale (the job was cancelled or given to
another worker), which is logged and dropped. A call that fails for a reason that may
pass (the operator restarting) puts its batch back at the front, tells the ``Link`` the
session is lost, and waits for the worker to register again before resending: no report
is lost, and since the operator refuses a second report of the same attempt as stale,
none is recorded twice.

A worker that is mostly idle may let a report linger (``linger_s``, while ``may_linger``
says so) for others to share its call: at a moderate rate each job otherwise costs a
call, a task and a statement of its own in the operator, which at 500 jobs a second was
the largest part of the operator's work. It lingers only when company is likely: the
report and the ``COMPANY`` before it were all submitted within ``linger_s``. A lone
report, the usual case at a low rate, goes at once, as a linger would delay it for
nothing. After a linger that nobody joined, the next lingers are skipped, one at first
and twice as many after each such linger (up to ``MAX_LINGER_BACKOFF``): where a client
waits for each job's end before it submits the next, reports come often but never
together, and each linger would add its whole length to the job it held. Nothing that
depends on timing waits for it: the start recorded is the worker's own stamp
(``JobAttempt.started_at``), and the worker lingers only while few of its slots are
taken, so the operator, which counts a slot taken until the result arrives, still has
most of them to give. A result then reaches the store up to ``linger_s`` later, which is
all a caller waiting on the job sees of it.

An item may wait for another report to be answered first (``after``): a result is sent
only once its attempt's ``Started`` was answered, so the operator never sees the end of
an attempt before its start. An item not sent yet can be withdrawn instead: an attempt
that ends while its ``Started`` still waits for a call (a busy worker, or a short handler:
the reporter lets ready attempts run a step before it takes a batch) sends only its
result, and the operator records the start and the end together, in that order. That
saves a call and a database write per short job. A handler that ends in its very first
step submits no ``Started`` at all (``Worker._run_attempt``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc.aio
from google.protobuf.message import Message

from jobqueue.api.v1 import workers_pb2
from jobqueue.logs import job_fields
from jobqueue.worker.connection import Link, Session, describe, is_temporary

logger = logging.getLogger(__name__)

Item = TypeVar("Item", bound=Message)
AttemptKey = tuple[str, int]  # (job_id, attempt)

# A batch stays well under gRPC's default 4 MiB message limit on the operator's side,
# even with a full 1 MiB of command output in one result.
MAX_BATCH_BYTES = 2 * 1024 * 1024
MAX_BATCH_ITEMS = 500
# Calls of one kind under way at once. The batches of a busy worker stay large: items
# wait only while every call is out.
MAX_CALLS_IN_FLIGHT = 3
# The reports that must have come just before one (within the linger) for it to wait for
# more: two, so a worker lingers from about 100 reports a second of a kind upwards, where
# a linger of 20 ms gathers a few to a call.
COMPANY = 2
# Lingers skipped, at most, after one that nobody joined (see the module docstring).
MAX_LINGER_BACKOFF = 256


@dataclass(frozen=True)
class Answer:
    """The operator's final word on one reported item."""

    accepted: bool
    reason: str = ""


@dataclass(frozen=True)
class _Entry(Generic[Item]):
    item: Item
    key: AttemptKey
    answer: asyncio.Future[Answer]
    after: asyncio.Future[Any] | None
    since: float  # the loop's time when it was submitted

    def ready(self) -> bool:
        return self.after is None or self.after.done()


SendBatch = Callable[[list[Item]], Awaitable[workers_pb2.ReportAnswer]]

_ACCEPTED = Answer(True)


class Reporter(Generic[Item]):
    """Sends one kind of report in batches; see the module docstring."""

    def __init__(
        self,
        kind: str,
        *,
        queue: str,
        link: Link,
        send: SendBatch[Item],
        key: Callable[[Item], AttemptKey],
        max_batch_items: int = MAX_BATCH_ITEMS,
        max_batch_bytes: int = MAX_BATCH_BYTES,
        max_calls_in_flight: int = MAX_CALLS_IN_FLIGHT,
        linger_s: float = 0.0,
        may_linger: Callable[[], bool] = lambda: False,
    ) -> None:
        self.kind = kind
        self._queue = queue
        self._link = link
        self._send = send
        self._key = key
        self._max_batch_items = max_batch_items
        self._max_batch_bytes = max_batch_bytes
        self._max_calls_in_flight = max_calls_in_flight
        self._linger_s = linger_s
        self._may_linger = may_linger
        # When the latest reports were submitted (the loop's time), to tell company.
        self._recent: deque[float] = deque(maxlen=COMPANY + 1)
        # After a linger nobody joined: lingers to skip before the next, and how many the
        # next such linger will set.
        self._skip_lingers = 0
        self._linger_backoff = 1
        # Items not sent yet, by attempt, oldest first; a dict so withdrawing one is cheap.
        self._waiting: dict[AttemptKey, _Entry[Item]] = {}
        # The calls under way with their batches, and the attempts those carry.
        self._calls: dict[asyncio.Task[None], list[_Entry[Item]]] = {}
        self._in_flight_keys: set[AttemptKey] = set()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.calls = 0  # calls made, for tests and debugging

    def submit(
        self, item: Item, *, after: asyncio.Future[Any] | None = None
    ) -> asyncio.Future[Answer]:
        """Queue ``item``; the returned future holds the operator's answer for it.

        One item per attempt waits at a time: for an attempt whose item waits already,
        that item's answer is returned and ``item`` is dropped.
        """
        key = self._key(item)
        queued = self._waiting.get(key)
        if queued is not None:
            return queued.answer
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Answer] = loop.create_future()
        now = loop.time()
        self._waiting[key] = _Entry(item, key, answer, after, now)
        self._recent.append(now)
        if after is not None and not after.done():
            after.add_done_callback(lambda _: self._wake.set())
        self._idle.clear()
        self._wake.set()
        return answer

    def withdraw(self, key: AttemptKey) -> bool:
        """Take back the item for ``key`` if it has not been sent; its answer is cancelled.

        False when it is in flight or already answered: then it must run its course.
        """
        entry = self._waiting.pop(key, None)
        if entry is None:
            return False
        entry.answer.cancel()
        if not self._waiting and not self._in_flight_keys:
            self._idle.set()
        return True

    def unanswered(self) -> list[AttemptKey]:
        """The attempts whose report the operator has not answered yet."""
        return [*self._in_flight_keys, *self._waiting]

    @property
    def outstanding(self) -> int:
        """How many reports the operator has not answered yet; cheap, unlike ``unanswered``."""
        return len(self._waiting) + len(self._in_flight_keys)

    def holds(self, key: AttemptKey) -> bool:
        """Whether the report for ``key`` is still unanswered; cheap, unlike ``unanswered``."""
        return key in self._waiting or key in self._in_flight_keys

    async def flushed(self) -> None:
        """Wait until every submitted item has been answered."""
        await self._idle.wait()

    async def run(self) -> None:
        """The sender loop; runs until cancelled, and then ends the calls under way."""
        try:
            while True:
                await self._wake.wait()
                if len(self._calls) >= self._max_calls_in_flight:
                    await asyncio.wait(list(self._calls), return_when=asyncio.FIRST_COMPLETED)
                    continue
                # Let what is ready run first: an attempt that ends at once withdraws its
                # Started report (see ``withdraw``) and the result alone goes.
                await asyncio.sleep(0)
                lingered = False
                if self._linger_s > 0 and self._may_linger() and self._linger_pays():
                    lingered = await self._linger()
                session = await self._link.online()
                batch = self._take_batch()
                if lingered:
                    self._learn_from_linger(joined=len(batch) > 1)
                if not batch:
                    # Everything left waits for an earlier report; its answer wakes us.
                    self._wake.clear()
                    continue
                call = asyncio.create_task(
                    self._send_batch(session, batch), name=f"{self.kind} report call"
                )
                self._calls[call] = batch
                self._in_flight_keys.update(entry.key for entry in batch)
                call.add_done_callback(self._call_ended)
        finally:
            # A cancelled call's batch goes back, to be sent first in the next session.
            calls = list(self._calls)
            for call in calls:
                call.cancel()
            if calls:
                await asyncio.wait(calls)

    def _linger_pays(self) -> bool:
        """Whether to linger now: company is likely (the latest report and the ``COMPANY``
        before it came within ``linger_s``) and no linger is left to skip (which this
        one then uses up)."""
        recent = self._recent
        if not self._waiting or len(recent) <= COMPANY:
            return False
        if recent[-1] - recent[0] >= self._linger_s:
            return False
        if self._skip_lingers:
            self._skip_lingers -= 1
            return False
        return True

    def _learn_from_linger(self, *, joined: bool) -> None:
        """Back off from lingering after a linger nobody joined; a shared one resets it."""
        if joined:
            self._linger_backoff = 1
        else:
            self._skip_lingers = self._linger_backoff
            self._linger_backoff = min(2 * self._linger_backoff, MAX_LINGER_BACKOFF)

    async def _linger(self) -> bool:
        """Wait until the oldest report has waited ``linger_s``: others may join it.
        Whether it waited."""
        oldest = next(iter(self._waiting.values()), None)
        if oldest is None or len(self._waiting) >= self._max_batch_items:
            return False
        loop = asyncio.get_running_loop()
        left_s = oldest.since + self._linger_s - loop.time()
        if left_s <= 0:
            return False
        await asyncio.sleep(left_s)
        return True

    def _call_ended(self, call: asyncio.Task[None]) -> None:
        batch = self._calls.pop(call)
        self._in_flight_keys.difference_update(entry.key for entry in batch)
        if call.cancelled():
            # Perhaps before it even began; none of its items was answered.
            self._put_back(batch)
        if not self._waiting and not self._in_flight_keys:
            self._idle.set()

    def _take_batch(self) -> list[_Entry[Item]]:
        batch: list[_Entry[Item]] = []
        size = 0
        for entry in self._waiting.values():
            if not entry.ready():
                continue
            size += entry.item.ByteSize()
            if batch and (size > self._max_batch_bytes or len(batch) >= self._max_batch_items):
                break
            batch.append(entry)
        for entry in batch:
            del self._waiting[entry.key]
        return batch

    def _put_back(self, batch: list[_Entry[Item]]) -> None:
        """Return an unsent batch to the front, in order: it goes first next time."""
        self._waiting = {entry.key: entry for entry in batch} | self._waiting
        self._wake.set()

    async def _send_batch(self, session: Session, batch: list[_Entry[Item]]) -> None:
        """One call; a cancelled one leaves its batch to ``_call_ended``."""
        self.calls += 1
        try:
            answer = await self._send([entry.item for entry in batch])
        except grpc.aio.AioRpcError as error:
            if is_temporary(error):
                # Resent first, once the worker is registered again.
                self._put_back(batch)
                self._link.lose(session, f"{self.kind} call failed ({describe(error)})")
            else:
                logger.error(
                    "The operator refused a %s call of %d report(s) for good (%s); they are "
                    "dropped and their jobs will be settled when their leases expire",
                    self.kind, len(batch), describe(error),
                )  # fmt: skip
                self._settle(batch, {}, default=Answer(False, describe(error)))
        else:
            self._settle(batch, _answers(batch, answer), default=None)

    def _settle(
        self,
        batch: list[_Entry[Item]],
        answers: dict[AttemptKey, Answer],
        *,
        default: Answer | None,
    ) -> None:
        for entry in batch:
            answer = answers.get(entry.key, default)
            if answer is None:
                # Not resent: an operator that skips an item would skip it again.
                logger.warning(
                    "The operator did not answer for the %s report of attempt %d",
                    self.kind, entry.key[1],
                    extra=job_fields(entry.key[0], self._queue),
                )  # fmt: skip
                answer = Answer(False, "the operator did not answer for this report")
            elif not answer.accepted:
                logger.debug(
                    "The operator refused the %s report of attempt %d: %s",
                    self.kind, entry.key[1], answer.reason or "no reason given",
                    extra=job_fields(entry.key[0], self._queue),
                )  # fmt: skip
            if not entry.answer.done():
                entry.answer.set_result(answer)


def _answers(
    batch: Sequence[_Entry[Any]], answer: workers_pb2.ReportAnswer
) -> dict[AttemptKey, Answer]:
    """Each reported attempt's answer: all accepted at once, or outcome by outcome."""
    if answer.all_accepted:
        return dict.fromkeys((entry.key for entry in batch), _ACCEPTED)
    return _match(batch, answer.outcomes)


def _match(
    batch: Sequence[_Entry[Any]], outcomes: Sequence[workers_pb2.ReportOutcome]
) -> dict[AttemptKey, Answer]:
    """Each reported attempt's answer: by the attempt an outcome names, else by position.

    workers.proto promises one outcome per item in request order, each naming its
    attempt; naming is what counts, position only fills in for an outcome that names none.
    """
    answers: dict[AttemptKey, Answer] = {}
    for position, outcome in enumerate(outcomes):
        if outcome.job.job_id:
            key = (outcome.job.job_id, outcome.job.attempt)
        elif position < len(batch):
            key = batch[position].key
        else:
            continue
        answers[key] = Answer(outcome.accepted, outcome.reason)
    return answers
