"""The scheduler: which connected worker runs which ready job, and when.

Each operator replica dispatches only to the workers whose streams it holds. It keeps a
``WorkerSession`` per worker (its free slots, the attempts it runs, a queue of commands
for its stream) and runs one dispatch loop that, for every queue with free slots, claims
ready jobs in a single statement (``JobStore.claim``: row locks with SKIP LOCKED, so
replicas never claim one job twice) and pushes them down the streams.

When the loop runs:
- at once when a job is submitted (the API calls ``wake``; other replicas hear it
  through a Redis wake-up when this one has no free slot left for it: a replica that can
  run a new job itself keeps it, which spares every replica a wake-up and an empty claim
  per submit), when a worker connects, or when a worker frees a slot on a queue that may
  hold more ready jobs (not after a claim found fewer than it had slots for: the next
  submit or wake-up says when there is more);
- otherwise every ``poll_interval_s``, the safety net for wake-ups that were lost
  (Redis down, retries whose backoff ran out, a job whose ``run_after`` came).

Fairness: one cycle claims at most ``claim_batch`` jobs per queue, and all queues with
free slots are served in the same cycle, so a deep queue cannot starve a shallow one.
Within a queue, slots are filled round-robin across workers so load spreads evenly.

Answers to a worker's report batches may ride on its stream (``answer_later``): a worker
that asks for it (``ReportBatch.answer_on_commands``) gets them on the next command it is
sent, or alone after ``answer_delay_s`` when no command follows; a worker that is sent
jobs at a steady pace then gets no message of their own for its answers. While the
worker's stream is not open, and when it closes with answers still waiting, they go on
the Report stream the batch came by.

Upkeep runs beside it every ``upkeep_interval_s``: due retries become pending, expired
leases (a worker that vanished) and attempts past their timeout go back to the queue or
to the dead letters, and the workers concerned are told to stop. Leases live in
PostgreSQL and are extended by heartbeats, so a Redis outage cannot make live workers
look dead; Redis only speeds things up (wake-ups) and carries rate-limit tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import Histogram

from jobqueue import metrics
from jobqueue.api.v1 import workers_pb2
from jobqueue.errors import JobQueueError, NotFoundError, UnavailableError
from jobqueue.operator import convert
from jobqueue.store import (
    AttemptRef,
    AttemptResult,
    Claimed,
    Clock,
    DirectSlots,
    Job,
    JobState,
    JobStore,
    LostAttempt,
    Outcome,
    QueuePolicy,
    ReportOutcome,
    Submitted,
    WorkerInfo,
)

logger = logging.getLogger(__name__)


class TokenBuckets(Protocol):
    """Rate-limit tokens shared by replicas (Redis) or local to this one (fallback)."""

    async def take_tokens(self, queue: str, wanted: int, rate_per_s: float, burst: int) -> int: ...


class WakeupBus(Protocol):
    async def publish_wakeup(self, queue: str) -> None: ...


@dataclass
class InFlight:
    """An attempt pushed to a worker and not yet reported finished."""

    queue: str
    ready_at: float  # monotonic seconds when the job became ready, for dispatch latency
    started: bool = False


@dataclass(frozen=True)
class _LateAnswer:
    """An answer to a report batch, waiting to go down the worker's stream."""

    reply: workers_pb2.ReportAnswer
    by_report_stream: Callable[[workers_pb2.ReportAnswer], None]  # where it goes otherwise
    sent: asyncio.Future[None]  # done once it left, one way or the other


def _set_event() -> asyncio.Event:
    event = asyncio.Event()
    event.set()
    return event


@dataclass
class WorkerSession:
    info: WorkerInfo
    commands: asyncio.Queue[workers_pb2.WorkerCommand] = field(default_factory=asyncio.Queue)
    in_flight: dict[AttemptRef, InFlight] = field(default_factory=dict)
    streaming: bool = False  # a stream is open: the worker takes new work
    draining: bool = False
    last_seen: float = field(default_factory=time.monotonic)
    reserved: int = 0  # slots offered to submits under way (see ``Scheduler.reserving``)
    replaced: bool = False  # the worker registered again: nothing new is assigned here
    # Claims and submits under way that were offered this session's slots (``offering``);
    # ``settled`` is set while there are none.
    offers: int = 0
    settled: asyncio.Event = field(default_factory=_set_event)
    # Answers to report batches that go with the next command (``answer_later``), and the
    # timer that sends them alone if none comes.
    answers: list[_LateAnswer] = field(default_factory=list)
    answers_timer: asyncio.TimerHandle | None = None

    @property
    def free_slots(self) -> int:
        if not self.streaming or self.draining or self.replaced:
            return 0
        return max(0, self.info.concurrency - len(self.in_flight) - self.reserved)

    def answer_later(
        self,
        reply: workers_pb2.ReportAnswer,
        by_report_stream: Callable[[workers_pb2.ReportAnswer], None],
        delay_s: float,
    ) -> asyncio.Future[None] | None:
        """Send ``reply`` with the next command, or alone within ``delay_s``; on the Report
        stream (``by_report_stream``) at once, and None, while the worker's stream is not
        open. The future is done once the answer has left."""
        if not self.streaming:
            by_report_stream(reply)
            return None
        sent = asyncio.get_running_loop().create_future()
        self.answers.append(_LateAnswer(reply, by_report_stream, sent))
        if self.answers_timer is None:
            self.answers_timer = asyncio.get_running_loop().call_later(
                delay_s, self._send_answers_alone
            )
        return sent

    def _send_answers_alone(self) -> None:
        self.answers_timer = None
        if self.answers and self.commands.empty():
            self.commands.put_nowait(workers_pb2.WorkerCommand())
        # Otherwise they go with the command already queued.

    def attach_answers(self, command: workers_pb2.WorkerCommand) -> None:
        """Add the waiting answers to ``command``, which is about to be sent."""
        if not self.answers:
            return
        for late in self.answers:
            command.report_answers.append(late.reply)
        self._answers_left()

    def answer_by_report_streams(self) -> None:
        """The worker's stream closed: waiting answers go on their Report streams."""
        for late in self.answers:
            late.by_report_stream(late.reply)
        self._answers_left()

    def _answers_left(self) -> None:
        for late in self.answers:
            if not late.sent.done():
                late.sent.set_result(None)
        self.answers.clear()
        if self.answers_timer is not None:
            self.answers_timer.cancel()
            self.answers_timer = None

    @contextlib.contextmanager
    def offering(self) -> Iterator[None]:
        """Mark a claim or submit under way that may assign jobs to this session's worker."""
        self.offers += 1
        self.settled.clear()
        try:
            yield
        finally:
            self.offers -= 1
            if not self.offers:
                self.settled.set()


@dataclass(frozen=True)
class SchedulerSettings:
    lease_s: float = 30.0  # a claim's lease; heartbeats extend it
    heartbeat_interval_s: float = 5.0  # what workers are told to use
    poll_interval_s: float = 1.0  # the safety-net poll when no wake-up comes
    upkeep_interval_s: float = 1.0  # retries, lost leases, timeouts
    policy_refresh_s: float = 5.0  # how stale a cached queue policy may be
    claim_batch: int = 256  # most jobs claimed for one queue in one cycle
    timeout_grace_s: float = 5.0  # past its timeout, a job's worker gets this long to report
    # How long an answer to a report batch waits for a command to ride on before it is
    # sent alone. Above the gap between two pushes to a worker at moderate rates (4 ms
    # for each of two workers at 500 jobs a second), so those carry the answers.
    answer_delay_s: float = 0.005


class Scheduler:
    def __init__(
        self,
        store: JobStore,
        *,
        operator_id: str,
        settings: SchedulerSettings = SchedulerSettings(),
        tokens: TokenBuckets | None = None,
        fallback_tokens: TokenBuckets | None = None,
        wakeup_bus: WakeupBus | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.store = store
        self.operator_id = operator_id
        self.settings = settings
        self._tokens = tokens
        self._fallback_tokens = fallback_tokens
        self._wakeup_bus = wakeup_bus
        self.sessions: dict[str, WorkerSession] = {}
        self._policies: dict[str, QueuePolicy] = {}
        self._policies_loaded_at = 0.0
        self._woken: set[str] = set()
        # Queues whose last claim found fewer ready jobs than it had slots for, and that
        # nothing has woken since: a slot freed on one of them has nothing to take.
        self._drained: set[str] = set()
        self._first_worker = 0  # where the next _slots starts among a queue's workers
        self._wakeup = asyncio.Event()
        self._job_changed: defaultdict[str, set[asyncio.Event]] = defaultdict(set)
        del clock  # the store owns time; kept in the signature for symmetry with tests

    # Wake-ups ----------------------------------------------------------------------------

    def wake(self, queue: str) -> None:
        """Run a dispatch cycle for ``queue`` as soon as possible."""
        self._drained.discard(queue)
        self._woken.add(queue)
        self._wakeup.set()

    def _slot_freed(self, queue: str) -> None:
        # Fill the slot in the next cycle, unless the queue's last claim found nothing
        # more to take: then that cycle would only run an empty claim. New work wakes the
        # queue anyway (a submit, a wake-up, a promoted retry), and the poll finds the rest
        # (a job whose run_after came).
        if queue not in self._drained:
            self.wake(queue)

    async def announce(self, queues: Iterable[str]) -> None:
        """Wake this replica and, through Redis, the others; Redis trouble only delays them."""
        names = set(queues)
        for queue in names:
            self.wake(queue)
        await self._publish(names)

    async def announce_jobs(self, queues: Sequence[str]) -> None:
        """New jobs, one queue name each: wake this replica, and the others for the queues
        whose new jobs outnumber this replica's free slots (see the module docstring)."""
        counts = Counter(queues)
        for queue in counts:
            self.wake(queue)
        await self._publish(
            queue for queue, jobs in counts.items() if jobs > self.free_slots(queue)
        )

    def free_slots(self, queue: str) -> int:
        return sum(s.free_slots for s in self.sessions.values() if s.info.queue == queue)

    # Assignment at submit -----------------------------------------------------------------

    @contextlib.contextmanager
    def reserving(self, queues: Sequence[str]) -> Iterator[DirectSlots | None]:
        """Offer free slots to new jobs, one queue name each, for the length of the block.

        A queue is offered slots only when it is known to hold nothing ready: its last
        claim found fewer jobs than it had slots for, and nothing has woken it since. A new
        job there would be the next one claimed anyway, so the store may assign it at
        insert (see ``DirectSlots``) and spare it the claim and the wait for a cycle; on a
        queue with a backlog new jobs queue behind it. ``submitted`` pushes what was
        assigned; slots not taken are free again when the block ends.
        """
        offered: dict[str, list[str]] = {}
        for queue, jobs in Counter(queues).items():
            if queue in self._drained and queue not in self._woken:
                slots = self._slots(queue)[:jobs]
                if slots:
                    offered[queue] = slots
        if not offered:
            yield None
            return
        # The very sessions reserved on are freed again, even if a worker registers anew
        # meanwhile (its new session starts with nothing reserved).
        reserved = [
            (self.sessions[worker_id], count)
            for worker_id, count in Counter(itertools.chain.from_iterable(offered.values())).items()
        ]
        with contextlib.ExitStack() as offers:
            for session, count in reserved:
                session.reserved += count
                offers.enter_context(session.offering())
            try:
                yield DirectSlots(offered, self.settings.lease_s)
            finally:
                for session, count in reserved:
                    session.reserved -= count

    async def submitted(self, submitted: Sequence[Submitted]) -> None:
        """New jobs are in: push those assigned at insert, announce the others."""
        created = [item.job for item in submitted if item.created]
        assigned = [job for job in created if job.state is JobState.ASSIGNED]
        self._push(assigned)
        await self.announce_jobs([job.queue for job in created if job.state is JobState.PENDING])

    async def _publish(self, queues: Iterable[str]) -> None:
        if self._wakeup_bus is None:
            return
        for queue in queues:
            try:
                await self._wakeup_bus.publish_wakeup(queue)
            except UnavailableError:
                logger.debug("Wake-up for queue %s not published; other replicas will poll.", queue)
                return

    # Job change notifications, for Watch ---------------------------------------------------

    @contextlib.contextmanager
    def watching(self, job_id: str) -> Iterator[asyncio.Event]:
        """An event set whenever this replica changes the job (other replicas: poll)."""
        event = asyncio.Event()
        watchers = self._job_changed[job_id]
        watchers.add(event)
        try:
            yield event
        finally:
            watchers.discard(event)
            if not watchers:
                del self._job_changed[job_id]

    def notify_changed(self, job_ids: Iterable[str]) -> None:
        for job_id in job_ids:
            for event in self._job_changed.get(job_id, ()):
                event.set()

    # Workers -----------------------------------------------------------------------------

    async def register(self, info: WorkerInfo, running: Sequence[AttemptRef]) -> WorkerSession:
        """A worker (re)connected; the attempts it still runs keep their slots and leases.

        Whatever is assigned to the worker that it did not name never reached it: it went
        down a stream that died, this replica's or another's (one that failed, say). It is
        sent again, unless it is still queued for the old stream of this replica, which the
        new stream takes over.
        """
        await self.store.register_worker(info)
        previous = self.sessions.get(info.id)
        session = WorkerSession(info=info)
        if previous is not None:
            # Nothing new is assigned on the old session from now on, and what was being
            # assigned on it is queued before the database is asked what the worker lacks.
            previous.replaced = True
            await previous.settled.wait()
            # Shared, so reports that arrive meanwhile free their slots in both.
            session.in_flight = previous.in_flight
        for attempt in running:
            session.in_flight.setdefault(attempt, InFlight(info.queue, time.monotonic(), True))
        stop = await self.store.extend_leases(info.id, list(running), self.settings.lease_s)
        for attempt in stop:
            session.in_flight.pop(attempt, None)
        if stop:
            session.commands.put_nowait(_cancel_command(stop, "no longer assigned to this worker"))
        await self._release_unheld(session, running)
        unheld = await self.store.unheld_assigned(info.id, running)

        # No await from here on: the new session takes over in one step.
        queued = _take_commands(previous, session) if previous is not None else set()
        lost = [job for job in unheld if AttemptRef(job.id, job.attempt) not in queued]
        held = {*running, *queued, *(AttemptRef(job.id, job.attempt) for job in lost)}
        for attempt in [attempt for attempt in session.in_flight if attempt not in held]:
            del session.in_flight[attempt]  # it moved on: finished, cancelled or recovered
        self.sessions[info.id] = session
        if lost:
            self._resend(session, lost)
        self._update_worker_gauges(info.queue)
        logger.info(
            "Worker %s registered for queue %s with %d slots.",
            info.id,
            info.queue,
            info.concurrency,
            extra={"worker_id": info.id, "queue": info.queue},
        )
        return session

    async def _release_unheld(self, session: WorkerSession, running: Sequence[AttemptRef]) -> None:
        """Started attempts the worker did not name are lost (its process restarted): they
        go back now rather than when their leases expire."""
        for lost in await self.store.release_unheld(session.info.id, running):
            session.in_flight.pop(AttemptRef(lost.job.id, _lost_attempt_number(lost)), None)
            metrics.JOBS_FINISHED.labels(lost.job.queue, "lost").inc()
            self.wake(lost.job.queue)

    def _resend(self, session: WorkerSession, jobs: Sequence[Job]) -> None:
        logger.info(
            "Sending %d assignment(s) again to worker %s: its old stream lost them.",
            len(jobs),
            session.info.id,
            extra={"worker_id": session.info.id, "queue": session.info.queue},
        )
        self._push(jobs)

    def session(self, worker_id: str) -> WorkerSession:
        session = self.sessions.get(worker_id)
        if session is None:
            raise NotFoundError(f"worker {worker_id} is not registered with this operator")
        return session

    async def stream(self, worker_id: str) -> AsyncIterator[workers_pb2.WorkerCommand]:
        """The commands for one worker's stream; the worker takes new work while it is open."""
        session = self.session(worker_id)
        session.streaming = True
        self.wake(session.info.queue)
        try:
            while True:
                command = await session.commands.get()
                session.attach_answers(command)
                if command.WhichOneof("command") is None and not command.report_answers:
                    continue  # answers it was queued for went with an earlier command
                yield command
        finally:
            # The stream ended: the worker is draining, gone or reconnecting. Its leases
            # stay; a worker that does not come back loses them when they expire.
            session.streaming = False
            session.answer_by_report_streams()
            self._update_worker_gauges(session.info.queue)

    def answer_later(
        self,
        worker_id: str,
        reply: workers_pb2.ReportAnswer,
        by_report_stream: Callable[[workers_pb2.ReportAnswer], None],
    ) -> asyncio.Future[None] | None:
        """Answer a report batch on the worker's stream (see the module docstring); None
        when it went on the Report stream at once."""
        session = self.sessions.get(worker_id)
        if session is None:
            by_report_stream(reply)
            return None
        return session.answer_later(reply, by_report_stream, self.settings.answer_delay_s)

    async def started(self, worker_id: str, attempts: Sequence[AttemptRef]) -> list[ReportOutcome]:
        session = self.session(worker_id)
        outcomes = await self.store.report_started(worker_id, attempts, self.settings.lease_s)
        now = time.monotonic()
        for outcome in outcomes:
            reference = AttemptRef(outcome.job_id, outcome.attempt)
            in_flight = session.in_flight.get(reference)
            if outcome.accepted and in_flight is not None and not in_flight.started:
                in_flight.started = True
                metrics.DISPATCH_LATENCY.labels(in_flight.queue).observe(now - in_flight.ready_at)
        self.notify_changed(outcome.job_id for outcome in outcomes if outcome.accepted)
        return outcomes

    async def results(
        self, worker_id: str, results: Sequence[AttemptResult]
    ) -> list[ReportOutcome]:
        session = self.session(worker_id)
        outcomes = await self.store.report_results(worker_id, results)

        # Accepted or refused, a reported attempt no longer holds a slot on this worker.
        queue = session.info.queue
        now = time.monotonic()
        latency = metrics.DISPATCH_LATENCY.labels(queue)
        for result, outcome in zip(results, outcomes, strict=True):
            in_flight = session.in_flight.pop(AttemptRef(result.job_id, result.attempt), None)
            if outcome.accepted and in_flight is not None and not in_flight.started:
                # A worker sends no Started for an attempt that ended before the report
                # left; its result is then the first word that the attempt had started.
                latency.observe(now - in_flight.ready_at)
        _count_finished(queue, results, outcomes)
        self.notify_changed(outcome.job_id for outcome in outcomes if outcome.accepted)
        self._update_worker_gauges(queue)
        self._slot_freed(queue)
        return outcomes

    async def heartbeat(self, worker_id: str, running: Sequence[AttemptRef]) -> list[AttemptRef]:
        """Extend the leases of what the worker runs; returns what it must stop."""
        session = self.session(worker_id)
        session.last_seen = time.monotonic()
        stop = await self.store.extend_leases(worker_id, running, self.settings.lease_s)
        for attempt in stop:
            session.in_flight.pop(attempt, None)
        return stop

    async def deregister(self, worker_id: str, reason: str) -> None:
        """The worker left on purpose; whatever it still held goes back to the queue."""
        session = self.sessions.pop(worker_id, None)
        lost = await self.store.release_worker(worker_id)
        await self.store.deregister_worker(worker_id)
        queue = session.info.queue if session else None
        if queue is not None:
            self._update_worker_gauges(queue)
        for attempt in lost:
            metrics.JOBS_FINISHED.labels(attempt.job.queue, "lost").inc()
        if lost:
            await self.announce(attempt.job.queue for attempt in lost)
        logger.info(
            "Worker %s deregistered (%s); %d unfinished attempt(s) returned.",
            worker_id,
            reason or "no reason given",
            len(lost),
            extra={"worker_id": worker_id, "queue": queue},
        )

    def drain(self, worker_id: str, grace_s: float) -> WorkerSession:
        session = self.session(worker_id)
        session.draining = True
        command = workers_pb2.WorkerCommand(
            drain=workers_pb2.Drain(grace=convert.duration(grace_s))
        )
        session.commands.put_nowait(command)
        return session

    def shutdown(self, worker_id: str, reason: str) -> WorkerSession:
        session = self.session(worker_id)
        session.draining = True
        command = workers_pb2.WorkerCommand(shutdown=workers_pb2.Shutdown(reason=reason))
        session.commands.put_nowait(command)
        return session

    def tell_to_stop(self, worker_id: str | None, attempts: Sequence[AttemptRef], why: str) -> None:
        """Push a cancel to a worker connected here; others learn it from their heartbeat."""
        session = self.sessions.get(worker_id or "")
        if session is None or not attempts:
            return
        for attempt in attempts:
            session.in_flight.pop(attempt, None)
        session.commands.put_nowait(_cancel_command(attempts, why))
        self.wake(session.info.queue)

    def busy_slots(self, worker_id: str) -> int:
        session = self.sessions.get(worker_id)
        return len(session.in_flight) if session else 0

    def connected_workers(self, queue: str) -> int:
        return sum(1 for s in self.sessions.values() if s.info.queue == queue and s.streaming)

    def _update_worker_gauges(self, queue: str) -> None:
        sessions = [s for s in self.sessions.values() if s.info.queue == queue]
        metrics.WORKERS_CONNECTED.labels(queue).set(sum(1 for s in sessions if s.streaming))
        metrics.WORKER_SLOTS_BUSY.labels(queue).set(sum(len(s.in_flight) for s in sessions))

    # The dispatch loop -------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Dispatch until ``stop`` is set; upkeep runs in a task tied to this call."""
        upkeep = asyncio.create_task(self._run_upkeep(stop), name="scheduler-upkeep")
        try:
            while not stop.is_set():
                await self._wait_for_work(stop)
                started = time.perf_counter()
                try:
                    await self.dispatch_once()
                except JobQueueError as error:
                    logger.warning("Dispatch cycle failed, retrying: %s", error)
                    await _sleep_unless(stop, self.settings.poll_interval_s)
                metrics.SCHEDULER_CYCLE.observe(time.perf_counter() - started)
        finally:
            upkeep.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await upkeep

    async def _wait_for_work(self, stop: asyncio.Event) -> None:
        if self._woken:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.poll_interval_s):
                await self._wakeup.wait()
        if not self._woken:
            # The poll: every queue with a free slot gets a look.
            self._woken.update(s.info.queue for s in self.sessions.values() if s.free_slots)

    async def dispatch_once(self) -> int:
        """One cycle over the woken queues; returns how many jobs were pushed."""
        self._wakeup.clear()
        queues, self._woken = self._woken, set()
        await self._refresh_policies()
        pushed = await asyncio.gather(*(self._dispatch_queue(queue) for queue in queues))
        return sum(pushed)

    async def _dispatch_queue(self, queue: str) -> int:
        slots = self._slots(queue)
        if not slots:
            return 0
        with contextlib.ExitStack() as offers:
            for worker_id in dict.fromkeys(slots):
                offers.enter_context(self.sessions[worker_id].offering())
            wanted = await self._rate_limited(queue, len(slots))
            if wanted == 0:
                return 0
            jobs = await self.store.claim_for_dispatch(queue, slots[:wanted], self.settings.lease_s)
            self._push(jobs)
        if len(jobs) == wanted and wanted == self.settings.claim_batch:
            self.wake(queue)  # more may be waiting: come back in the next cycle
        elif len(jobs) < wanted and self._unlimited(queue):
            # Not held back by a concurrency limit: the queue had nothing more ready.
            self._drained.add(queue)
        return len(jobs)

    def _unlimited(self, queue: str) -> bool:
        policy = self._policies.get(queue)
        return policy is not None and policy.concurrency_limit is None

    def _slots(self, queue: str) -> list[str]:
        """One worker id per free slot, round-robin across the queue's workers.

        Each call starts one worker further on, so jobs that come one at a time (a quiet
        queue, assigned at submit) go round the workers too rather than all to the first.
        """
        free = [
            [session.info.id] * session.free_slots
            for session in self.sessions.values()
            if session.info.queue == queue and session.free_slots
        ]
        if len(free) > 1:
            first = self._first_worker % len(free)
            self._first_worker += 1
            free = free[first:] + free[:first]
        interleaved = itertools.chain.from_iterable(itertools.zip_longest(*free))
        slots = [worker_id for worker_id in interleaved if worker_id is not None]
        return slots[: self.settings.claim_batch]

    async def _rate_limited(self, queue: str, wanted: int) -> int:
        policy = self._policies.get(queue)
        if policy is None or policy.rate_limit is None:
            return wanted
        limit = policy.rate_limit
        for buckets in (self._tokens, self._fallback_tokens):
            if buckets is None:
                continue
            try:
                return await buckets.take_tokens(queue, wanted, limit.per_second, limit.burst)
            except UnavailableError:
                logger.debug("Rate-limit tokens unavailable for %s; using the fallback.", queue)
        return 0

    def _push(self, jobs: Sequence[Claimed] | Sequence[Job]) -> None:
        """Send assigned jobs (claimed, or assigned at submit) down their workers' streams."""
        by_worker: dict[str, list[Claimed | Job]] = defaultdict(list)
        for job in jobs:
            by_worker[job.worker_id or ""].append(job)
        now = time.monotonic()
        for worker_id, assigned in by_worker.items():
            session = self.sessions.get(worker_id)
            if session is None:
                # The worker left between the claim and now; its lease will expire.
                continue
            for job in assigned:
                ready_at = now - _age_s(job)
                session.in_flight[AttemptRef(job.id, job.attempt)] = InFlight(job.queue, ready_at)
            # Built in place: a message given to a constructor is copied, field by field.
            command = workers_pb2.WorkerCommand()
            jobs_field = command.assignments.jobs
            for job in assigned:
                convert.fill_assignment(jobs_field.add(), job)
            session.commands.put_nowait(command)
            self._update_worker_gauges(session.info.queue)

    async def _refresh_policies(self, force: bool = False) -> None:
        if (
            not force
            and time.monotonic() - self._policies_loaded_at < self.settings.policy_refresh_s
        ):
            return
        policies = await self.store.list_queues()
        self._policies = {policy.name: policy for policy in policies}
        self._policies_loaded_at = time.monotonic()

    def forget_policies(self) -> None:
        """Reload queue policies in the next cycle (after a pause, resume or new queue)."""
        self._policies_loaded_at = 0.0

    # Upkeep ------------------------------------------------------------------------------

    async def _run_upkeep(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.upkeep_once()
            except JobQueueError as error:
                logger.warning("Scheduler upkeep failed, retrying: %s", error)
            await _sleep_unless(stop, self.settings.upkeep_interval_s)

    async def upkeep_once(self) -> None:
        promoted = await self.store.promote_due_retries()
        if promoted:
            await self.announce(self._policies)
        lost = await self.store.recover_expired_leases()
        lost += await self.store.recover_timed_out(self.settings.timeout_grace_s)
        self._return_lost(lost)
        await self.store.touch_workers(list(self.sessions))

    def _return_lost(self, lost: Sequence[LostAttempt]) -> None:
        for attempt in lost:
            job = attempt.job
            why = "timed out" if attempt.timed_out else "lease expired"
            # The job's attempt number moved on if it went back to pending; the worker
            # knows it by the attempt it ran.
            previous = AttemptRef(job.id, _lost_attempt_number(attempt))
            self.tell_to_stop(attempt.worker_id, [previous], why)
            outcome = "timed_out" if attempt.timed_out else "lease_expired"
            metrics.JOBS_FINISHED.labels(job.queue, outcome).inc()
            logger.info(
                "Job attempt %s of %s %s; now %s.",
                previous.attempt,
                job.id,
                why,
                job.state,
                extra={"job_id": job.id, "queue": job.queue, "worker_id": attempt.worker_id},
            )
        for queue in {attempt.job.queue for attempt in lost}:
            self.wake(queue)


def _take_commands(previous: WorkerSession, session: WorkerSession) -> set[AttemptRef]:
    """Move the commands the old stream had not sent yet (assignments among them) to the
    new one; left behind, their jobs would wait for their leases to expire. Returns the
    attempts of the assignments moved."""
    queued: set[AttemptRef] = set()
    while not previous.commands.empty():
        command = previous.commands.get_nowait()
        if command.WhichOneof("command") is None:
            continue  # queued to carry the old stream's answers, which stay with it
        queued.update(_assigned(command))
        session.commands.put_nowait(command)
    return queued


def _assigned(command: workers_pb2.WorkerCommand) -> list[AttemptRef]:
    """The attempts an assignments command carries; none for any other command."""
    if command.WhichOneof("command") != "assignments":
        return []
    return [AttemptRef(job.job_id, job.attempt) for job in command.assignments.jobs]


def _lost_attempt_number(attempt: LostAttempt) -> int:
    # The store returns the job as it is after recovery; a recovered attempt never starts
    # a new one (that happens at the next claim), so the attempt number is the lost one's.
    return attempt.job.attempt


def _age_s(job: Claimed | Job) -> float:
    """How long ago the job became ready (its run_after), by the store's clock."""
    if job.assigned_at is None:
        return 0.0
    return max(0.0, (job.assigned_at - job.run_after).total_seconds())


def _count_finished(
    queue: str, results: Sequence[AttemptResult], outcomes: Sequence[ReportOutcome]
) -> None:
    """Count a batch's accepted results, looking each metric's labels up once per batch."""
    finished: Counter[str] = Counter()
    run_times: dict[Outcome, Histogram] = {}
    for result, outcome in zip(results, outcomes, strict=True):
        if not outcome.accepted:
            continue
        dead = outcome.state is not None and outcome.state.value == "dead_lettered"
        finished["dead_lettered" if dead else result.outcome.value] += 1
        if result.run_time_s is None or result.outcome is Outcome.CANCELLED:
            continue
        histogram = run_times.get(result.outcome)
        if histogram is None:
            histogram = metrics.JOB_RUN_TIME.labels(queue, result.outcome.value)
            run_times[result.outcome] = histogram
        histogram.observe(result.run_time_s)
    for label, count in finished.items():
        metrics.JOBS_FINISHED.labels(queue, label).inc(count)


def _cancel_command(attempts: Sequence[AttemptRef], reason: str) -> workers_pb2.WorkerCommand:
    jobs = [workers_pb2.JobAttempt(job_id=a.job_id, attempt=a.attempt) for a in attempts]
    return workers_pb2.WorkerCommand(cancel=workers_pb2.CancelJobs(jobs=jobs, reason=reason))


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()
