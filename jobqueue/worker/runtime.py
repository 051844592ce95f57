"""The worker runtime: joins an operator, runs the attempts it is given, reports on them.

``Worker.run`` owns every task of the worker and ends them together: the connection
loop, one ``Reporter`` each for ``Started`` and ``Result`` (both send on the session's
``Report`` stream, see ``report_stream``), the heartbeat, and one task per attempt.
The connection loop is the worker's side of the protocol in workers.proto:

1. ``Register`` (with backoff), naming the attempts the worker still holds, so that
   after an operator restart their leases are kept and their slots counted;
2. wait until every report the operator has not answered yet is resent and answered;
3. open the ``Stream`` and obey its commands (assignments, cancel, drain, shutdown)
   until it ends or breaks, or a call elsewhere finds the operator gone (``Link``);
4. go back to 1. Running attempts are untouched by all of this.

An attempt is *held* from its assignment until the operator has answered its result.
Held attempts are what ``Register`` and ``Heartbeat`` list as running: an attempt whose
result is still on its way keeps its lease, so the operator does not give the job away
while its result is in flight.

Leaving is a drain (SIGTERM, or the operator's ``Drain``): the stream is cancelled,
which tells the operator to send nothing more; running attempts get the grace period
to finish and are stopped after it; every result is reported (waiting at most
``final_report_timeout_s`` for the operator to answer), then the worker deregisters.
A shutdown is a drain without grace. Attempts the worker stops on its own account are
reported FAILED (see ``attempts``), so their jobs are retried elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import socket
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc.aio

from jobqueue import __version__
from jobqueue.api.v1 import workers_pb2, workers_pb2_grpc
from jobqueue.channels import ChannelSecurity, bearer_metadata, open_aio_channel
from jobqueue.errors import PermanentError
from jobqueue.logs import job_fields
from jobqueue.metrics import WORKER_JOBS, WORKER_RUNNING_JOBS
from jobqueue.worker.attempts import Attempt, StopRequest, apply_stop, execute, job_result
from jobqueue.worker.connection import (
    BackoffPolicy,
    Link,
    Session,
    channel_options,
    describe,
    is_temporary,
)
from jobqueue.worker.execution import ExecutionResult, Outcome
from jobqueue.worker.handlers import HandlerRegistry
from jobqueue.worker.report_stream import ReportStream
from jobqueue.worker.reporting import Answer, AttemptKey, Reporter

if TYPE_CHECKING:
    from jobqueue.api.v1.workers_pb2_grpc import WorkerServiceAsyncStub

logger = logging.getLogger(__name__)

# A session that lasted this long was healthy: losing it starts the backoff afresh.
_STABLE_SESSION_S = 10.0

# How long a draining worker keeps its command stream open for the answers to reports
# that asked for them there (the operator sends them within milliseconds; past this the
# worker closes the stream anyway and those batches are sent again after their timeout).
ANSWERS_ON_COMMANDS_WAIT_S = 2.0

# What a heartbeat's stop list does to an attempt.
_DISOWNED = StopRequest(
    Outcome.CANCELLED, "cancelled: the operator no longer holds this attempt for this worker"
)


def new_worker_id(hostname: str | None = None) -> str:
    """``<hostname>-<6 hex>``: unique per process, stable across its reconnects."""
    return f"{hostname or socket.gethostname()}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class WorkerConfig:
    # host:port of the operator's gRPC API.
    operator_address: str
    # The queue served; every assignment comes from it.
    queue: str
    # Stable for the process and across reconnects (in Kubernetes, the pod name).
    worker_id: str
    pool: str = ""
    # Attempts run at once.
    concurrency: int = 4
    # Seconds between heartbeats until the operator's Register answer says otherwise.
    heartbeat_interval_s: float = 5.0
    # Seconds running attempts get to finish on a drain without a grace of its own.
    drain_grace_s: float = 30.0
    # Seconds one call (Register, Heartbeat) or report batch (Started, Result) may take.
    call_timeout_s: float = 10.0
    # Seconds a leaving worker waits for the operator to answer its last reports.
    final_report_timeout_s: float = 10.0
    # Seconds a stopped command gets between SIGTERM and SIGKILL.
    kill_grace_s: float = 5.0
    # Seconds a report may wait for others to share its call while the worker is mostly
    # idle (see ``reporting``); 0 sends each at once.
    report_linger_s: float = 0.0
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    hostname: str = field(default_factory=socket.gethostname)
    version: str = __version__
    # TLS and the token the channel uses; the default verifies with the system's roots.
    security: ChannelSecurity = field(default_factory=ChannelSecurity)
    # Variables of the worker's environment that a command job may set itself.
    job_env_overridable: frozenset[str] = frozenset()


class _Outage:
    """Consecutive connection failures; logs an outage once when it begins and ends."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.failures = 0
        self.began: float | None = None  # time.monotonic() of the first failure

    def failed(self, reason: str, *, ever_registered: bool) -> None:
        self.failures += 1
        if self.began is not None:
            logger.debug("Still cannot register with the operator at %s: %s", self.address, reason)
            return
        self.began = time.monotonic()
        if ever_registered:
            logger.warning(
                "Lost the operator at %s (%s); registering again with backoff, running jobs "
                "go on", self.address, reason,
            )  # fmt: skip
        else:
            logger.warning(
                "Cannot reach the operator at %s (%s); retrying with backoff", self.address, reason
            )

    def ended(self) -> float | None:
        """Seconds the outage lasted, or None if there was none."""
        began, self.began = self.began, None
        return None if began is None else time.monotonic() - began


class Worker:
    """One worker process's runtime; see the module docstring."""

    def __init__(self, config: WorkerConfig, registry: HandlerRegistry) -> None:
        self.config = config
        self._registry = registry
        self._link = Link()
        self._stub: WorkerServiceAsyncStub | None = None
        self._sessions = 0
        self._attempts: dict[AttemptKey, Attempt] = {}
        # Attempts whose command or handler runs now; the gauge reads it when scraped,
        # which costs nothing per job (an inc and a dec take a lock each). The gauge is
        # the process's: it follows the Worker made last, and a process runs one.
        self._running = 0
        WORKER_RUNNING_JOBS.set_function(lambda: self._running)
        self._attempt_tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(config.concurrency)
        self._draining = asyncio.Event()
        self._drain_grace_s = config.drain_grace_s
        self._leaving_reason = ""
        # Once set, every attempt held now or assigned later is stopped with it.
        self._stop_everything: StopRequest | None = None
        # The counter of finished attempts for each outcome, looked up once, not per job.
        self._finished_jobs = {
            outcome: WORKER_JOBS.labels(queue=config.queue, outcome=outcome.value)
            for outcome in Outcome
        }
        # Both reporters send on the session's Report stream.
        self._reports = ReportStream(config.worker_id, config.call_timeout_s)
        # The session whose command stream is being read: its reports are answered there.
        self._commands_open: Session | None = None
        self._started: Reporter[workers_pb2.JobAttempt] = Reporter(
            "Started",
            queue=config.queue,
            link=self._link,
            send=self._send_started,
            key=lambda job: (job.job_id, job.attempt),
            linger_s=config.report_linger_s,
            may_linger=self._mostly_idle,
        )
        self._results: Reporter[workers_pb2.JobResult] = Reporter(
            "Result",
            queue=config.queue,
            link=self._link,
            send=self._send_results,
            key=lambda result: (result.job.job_id, result.job.attempt),
            linger_s=config.report_linger_s,
            may_linger=self._mostly_idle,
        )

    # The outside view ---------------------------------------------------------------

    @property
    def registered(self) -> bool:
        """Whether the worker holds a live session with an operator (its readiness)."""
        return self._link.session is not None

    @property
    def draining(self) -> bool:
        return self._draining.is_set()

    def held(self) -> list[AttemptKey]:
        """Attempts running here or whose result the operator has not answered yet."""
        return list(dict.fromkeys([*self._attempts, *self._results.unanswered()]))

    def free_slots(self) -> int:
        if self.draining:
            return 0
        return max(0, self.config.concurrency - len(self._attempts))

    def drain(self, grace_s: float | None = None, *, reason: str = "asked to drain") -> None:
        """Take nothing new; let running attempts finish within ``grace_s``, then leave."""
        if self.draining:
            return
        self._drain_grace_s = self.config.drain_grace_s if grace_s is None else grace_s
        self._leaving_reason = reason
        logger.info(
            "Draining (%s): taking no new jobs; %d running job(s) get %g s to finish",
            reason, len(self._attempts), self._drain_grace_s,
        )  # fmt: skip
        self._draining.set()

    def shutdown(self, reason: str) -> None:
        """Stop every attempt now, report them, deregister and leave."""
        logger.info("Shutting down (%s): stopping %d running job(s)", reason, len(self._attempts))
        self._leaving_reason = reason
        self._drain_grace_s = 0.0
        self._stop_all(StopRequest(Outcome.FAILED, f"stopped: {reason}"))
        self._draining.set()

    async def run(self) -> None:
        """Serve until a drain or shutdown is complete.

        Raises ``PermanentError`` when the operator refuses the worker for good (a bad
        queue name, a rejected credential): retrying would fail the same way.
        """
        address = self.config.operator_address
        options = channel_options(self.config.backoff)
        # TLS as configured (see jobqueue.channels). The token goes with each call
        # (``_metadata``) rather than through the channel's interceptors: grpc.aio runs an
        # intercepted stream's every message through an extra queue and task, which
        # cost the worker more than the rest of a no-op job's handling.
        async with open_aio_channel(
            address, self.config.security, options, send_token=False
        ) as channel:
            self._stub = workers_pb2_grpc.WorkerServiceStub(channel)
            name = self.config.worker_id
            background = [
                asyncio.create_task(self._stay_connected(), name=f"{name} connection"),
                asyncio.create_task(self._started.run(), name=f"{name} Started reporter"),
                asyncio.create_task(self._results.run(), name=f"{name} Result reporter"),
                asyncio.create_task(self._send_heartbeats(), name=f"{name} heartbeat"),
            ]
            try:
                await self._while_healthy("drain wait", self._draining.wait(), background)
                await self._while_healthy("wind-down", self._wind_down(), background)
            finally:
                leftovers = [*background, *self._attempt_tasks]
                for task in leftovers:
                    task.cancel()
                await asyncio.gather(*leftovers, return_exceptions=True)
                await self._reports.close()
                self._stub = None
        logger.info("Worker %s stopped", name)

    # Life-long tasks ------------------------------------------------------------------

    async def _while_healthy(
        self, name: str, step: Coroutine[Any, Any, Any], background: Sequence[asyncio.Task[None]]
    ) -> None:
        """Run ``step``; if a life-long task ends first (it never should), raise its error."""
        task = asyncio.create_task(step, name=f"{self.config.worker_id} {name}")
        try:
            await asyncio.wait({task, *background}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not task.done():
                task.cancel()
                await asyncio.wait({task})
        for life_long in background:
            if life_long.done():
                life_long.result()
                raise RuntimeError(f"the worker's task {life_long.get_name()!r} ended early")
        task.result()

    async def _stay_connected(self) -> None:
        """Register, resend what is unanswered, obey the stream; again after every loss."""
        outage = _Outage(self.config.operator_address)
        while True:
            session = await self._register_with_backoff(outage)
            began = time.monotonic()
            await self._serve(session)

            # A session that held for a while is a fresh outage; a short one, more of it.
            if time.monotonic() - began >= _STABLE_SESSION_S:
                outage.failures = 0
            outage.failed(self._link.lost_reason, ever_registered=True)
            await asyncio.sleep(self.config.backoff.delay_s(outage.failures))

    async def _register_with_backoff(self, outage: _Outage) -> Session:
        while True:
            try:
                session = await self._register()
            except grpc.aio.AioRpcError as error:
                if not is_temporary(error):
                    raise PermanentError(
                        f"the operator at {self.config.operator_address} refused to register "
                        f"worker {self.config.worker_id}: {describe(error)}"
                    ) from error
                outage.failed(describe(error), ever_registered=self._sessions > 0)
                await asyncio.sleep(self.config.backoff.delay_s(outage.failures))
                continue

            outage_s = outage.ended()
            if session.number == 1:
                logger.info(
                    "Registered with operator %s at %s as worker %s (queue %s, concurrency %d)",
                    session.operator_id, self.config.operator_address, self.config.worker_id,
                    self.config.queue, self.config.concurrency,
                )  # fmt: skip
            elif outage_s is not None:
                logger.info(
                    "Reconnected to operator %s at %s after %.1f s; %d job(s) still held",
                    session.operator_id, self.config.operator_address, outage_s,
                    len(self.held()),
                )  # fmt: skip
            return session

    async def _register(self) -> Session:
        request = workers_pb2.RegisterRequest(
            worker_id=self.config.worker_id,
            queue=self.config.queue,
            pool=self.config.pool,
            concurrency=self.config.concurrency,
            handlers=self._registry.names(),
            hostname=self.config.hostname,
            version=self.config.version,
            running=[workers_pb2.JobAttempt(job_id=j, attempt=n) for j, n in self.held()],
        )
        response = await self._operator().Register(
            request, timeout=self.config.call_timeout_s, metadata=self._metadata()
        )

        self._sessions += 1
        heartbeat_interval_s = response.heartbeat_interval.ToTimedelta().total_seconds()
        session = Session(
            number=self._sessions,
            operator_id=response.operator_id or "unnamed",
            heartbeat_interval_s=heartbeat_interval_s or self.config.heartbeat_interval_s,
            lease_s=response.lease.ToTimedelta().total_seconds(),
        )
        self._link.establish(session)
        return session

    async def _serve(self, session: Session) -> None:
        """Everything one session does; returns once the session is lost."""
        # The operator hears the results of before the outage before it sends new work.
        name = self.config.worker_id
        flushed = asyncio.create_task(self._reports_flushed(), name=f"{name} resend")
        lost = asyncio.create_task(self._link.wait_lost(), name=f"{name} resend loss")
        try:
            await asyncio.wait({flushed, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            flushed.cancel()
            lost.cancel()
            await asyncio.gather(flushed, lost, return_exceptions=True)

        if self._link.session is session and not self.draining:
            await self._obey_stream(session)
        # Draining or not, the session stays up for the reports until it is lost.
        await self._link.wait_lost()

    async def _obey_stream(self, session: Session) -> None:
        """Read commands until the stream ends, the session is lost, or a drain begins."""
        call = self._operator().Stream(
            workers_pb2.StreamRequest(worker_id=self.config.worker_id), metadata=self._metadata()
        )
        name = self.config.worker_id
        reader = asyncio.create_task(self._read_commands(session, call), name=f"{name} stream")
        lost = asyncio.create_task(self._link.wait_lost(), name=f"{name} stream loss")
        leaving = asyncio.create_task(self._draining.wait(), name=f"{name} stream drain")
        waiters = (reader, lost, leaving)
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if leaving.done() and not (reader.done() or lost.done()):
                await self._settle_answers_on_commands(reader, lost)
        finally:
            # Cancelling the call is how a draining worker says "send nothing more".
            call.cancel()
            for task in waiters:
                task.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
        if reader.done() and not reader.cancelled():
            failure = reader.exception()
            if failure is not None:
                raise failure  # a fault in obeying a command: let the worker fail loudly

    async def _settle_answers_on_commands(
        self, reader: asyncio.Task[None], lost: asyncio.Task[None]
    ) -> None:
        """Before a draining worker closes its command stream: ask for no more answers
        there, and wait (a little) for those asked for, reading commands meanwhile."""
        self._commands_open = None
        settled = asyncio.create_task(
            self._reports.answers_on_commands_settled(), name="answers settled"
        )
        try:
            await asyncio.wait(
                (settled, reader, lost),
                timeout=ANSWERS_ON_COMMANDS_WAIT_S,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            settled.cancel()

    async def _read_commands(
        self,
        session: Session,
        call: grpc.aio.UnaryStreamCall[workers_pb2.StreamRequest, workers_pb2.WorkerCommand],
    ) -> None:
        self._commands_open = session
        try:
            async for command in call:
                self._obey(command)
            reason = "the operator closed the stream"
        except grpc.aio.AioRpcError as error:
            reason = f"the stream broke ({describe(error)})"
        finally:
            if self._commands_open is session:
                self._commands_open = None
        self._link.lose(session, reason)

    async def _send_heartbeats(self) -> None:
        while True:
            session = await self._link.online()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._link.wait_lost(), session.heartbeat_interval_s)
            if self._link.session is not session:
                continue

            request = workers_pb2.HeartbeatRequest(
                worker_id=self.config.worker_id,
                running=[workers_pb2.JobAttempt(job_id=j, attempt=n) for j, n in self.held()],
                free_slots=self.free_slots(),
            )
            try:
                response = await self._operator().Heartbeat(
                    request, timeout=self.config.call_timeout_s, metadata=self._metadata()
                )
            except grpc.aio.AioRpcError as error:
                self._link.lose(session, f"Heartbeat failed ({describe(error)})")
                continue
            for job in response.stop:
                self._stop_attempt((job.job_id, job.attempt), _DISOWNED)

    async def _send_started(self, jobs: list[workers_pb2.JobAttempt]) -> workers_pb2.ReportAnswer:
        return await self._send_report(started=jobs)

    async def _send_results(self, results: list[workers_pb2.JobResult]) -> workers_pb2.ReportAnswer:
        return await self._send_report(results=results)

    async def _send_report(
        self,
        started: Sequence[workers_pb2.JobAttempt] = (),
        results: Sequence[workers_pb2.JobResult] = (),
    ) -> workers_pb2.ReportAnswer:
        session = self._link.session
        return await self._reports.send(
            self._operator(),
            session,
            self._metadata(),
            started=started,
            results=results,
            answer_on_commands=session is not None and self._commands_open is session,
        )

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        """The call metadata: the worker's token as it is now (a rotated file is reread)."""
        return bearer_metadata(self.config.security)

    def _operator(self) -> WorkerServiceAsyncStub:
        if self._stub is None:
            raise RuntimeError("the worker talks to its operator only while Worker.run runs")
        return self._stub

    # Commands -------------------------------------------------------------------------

    def _obey(self, command: workers_pb2.WorkerCommand) -> None:
        if command.report_answers:
            self._reports.deliver(command.report_answers)
        kind = command.WhichOneof("command")
        if kind is None and command.report_answers:
            return  # answers alone
        if kind == "assignments":
            jobs = command.assignments.jobs
            if len(jobs) > self.free_slots():
                logger.warning(
                    "The operator assigned %d job(s) with %d slot(s) free; the extra ones wait "
                    "for a slot", len(jobs), self.free_slots(),
                )  # fmt: skip
            for assignment in jobs:
                self._accept(assignment)
        elif kind == "cancel":
            reason = f"cancelled: {command.cancel.reason or 'by the operator'}"
            for job in command.cancel.jobs:
                self._stop_attempt(
                    (job.job_id, job.attempt), StopRequest(Outcome.CANCELLED, reason)
                )
        elif kind == "drain":
            grace = command.drain.grace
            grace_s = (
                grace.ToTimedelta().total_seconds() if command.drain.HasField("grace") else None
            )
            self.drain(grace_s, reason="the operator asked this worker to drain")
        elif kind == "shutdown":
            self.shutdown(f"the operator shut this worker down: {command.shutdown.reason or '-'}")
        else:
            logger.warning("Ignoring a command this worker does not know (a newer operator?)")

    def _accept(self, assignment: workers_pb2.Assignment) -> None:
        attempt = Attempt(assignment)
        if attempt.key in self._attempts or self._results.holds(attempt.key):
            self._debug(attempt, "Ignoring a repeated assignment of attempt %d")
            return
        if self._stop_everything is not None:
            # Sent before the operator saw the worker leave: it still gets its result.
            attempt.stop(self._stop_everything.outcome, self._stop_everything.reason)

        self._attempts[attempt.key] = attempt
        task = asyncio.create_task(
            self._run_attempt(attempt), name=f"attempt {attempt.number} of job {attempt.job_id}"
        )
        self._attempt_tasks.add(task)
        task.add_done_callback(self._attempt_tasks.discard)
        self._debug(attempt, "Accepted attempt %d")

    def _debug(self, attempt: Attempt, message: str, *args: object, **more: object) -> None:
        """A DEBUG record about ``attempt``, its number the message's first argument.

        Its fields are only built when DEBUG is on: this runs several times per job.
        """
        if logger.isEnabledFor(logging.DEBUG):
            fields = job_fields(attempt.job_id, self.config.queue, attempt=attempt.number, **more)
            logger.debug(message, attempt.number, *args, extra=fields)

    def _stop_attempt(self, key: AttemptKey, request: StopRequest) -> None:
        attempt = self._attempts.get(key)
        if attempt is None:
            logger.debug(
                "Asked to stop attempt %d, which no longer runs here", key[1],
                extra=job_fields(key[0], self.config.queue),
            )  # fmt: skip
            return
        attempt.stop(request.outcome, request.reason, report=request.report)

    def _stop_all(self, request: StopRequest) -> None:
        self._stop_everything = request
        for attempt in self._attempts.values():
            attempt.stop(request.outcome, request.reason, report=request.report)

    def _mostly_idle(self) -> bool:
        """Whether reports may linger (see ``reporting``): not draining, and at most a
        quarter of the slots taken as the operator counts them, unreported results too."""
        taken = len(self._attempts) + self._results.outstanding
        return taken * 4 <= self.config.concurrency and not self._draining.is_set()

    # One attempt ----------------------------------------------------------------------

    async def _run_attempt(self, attempt: Attempt) -> None:
        # The start is reported once the job is seen to take a while (``execute``'s
        # ``on_wait``); a handler that ends in its first step reports its result alone,
        # which records the start too, and costs no Started report at all.
        started: asyncio.Future[Answer] | None = None

        def report_start() -> None:
            nonlocal started
            started = self._started.submit(attempt.to_proto())
            started.add_done_callback(functools.partial(self._on_started_answer, attempt))

        try:
            async with self._slots:
                if attempt.stop_request is not None:
                    # Stopped before it had a slot: it never ran, so no start is reported.
                    stop = attempt.stop_request
                    result = ExecutionResult(stop.outcome, error=stop.reason)
                else:
                    result = await self._execute(attempt, report_start)
        except asyncio.CancelledError:
            # The worker is being torn down without a drain: execution already stopped the
            # job's process; the operator settles the attempt when its lease expires.
            self._attempts.pop(attempt.key, None)
            raise

        # Recording is one synchronous step, so no cancellation can split it: the attempt
        # leaves ``_attempts`` in the same instant its result joins the reporter, and is
        # held (listed in heartbeats) throughout.
        self._record(attempt, result, started)

    async def _execute(self, attempt: Attempt, on_wait: Callable[[], None]) -> ExecutionResult:
        self._debug(attempt, "Attempt %d started")
        self._running += 1
        attempt.begin()
        try:
            result = await execute(
                attempt.assignment,
                self._registry,
                stop=attempt.stop_event,
                kill_grace_s=self.config.kill_grace_s,
                env_overridable=self.config.job_env_overridable,
                on_wait=on_wait,
            )
        except Exception as error:
            fields = job_fields(attempt.job_id, self.config.queue, attempt=attempt.number)
            logger.exception("Attempt %d failed inside the worker", attempt.number, extra=fields)
            result = ExecutionResult(
                Outcome.FAILED, error=f"the worker failed to run the job: {error!r}"
            )
        finally:
            self._running -= 1
        return apply_stop(result, attempt.stop_request)

    def _on_started_answer(self, attempt: Attempt, answer: asyncio.Future[Answer]) -> None:
        if answer.cancelled() or answer.result().accepted:
            return
        # The operator disowned the attempt (cancelled or given away): stop working on it.
        reason = f"the operator refused its start: {answer.result().reason or 'stale'}"
        attempt.stop(Outcome.CANCELLED, reason, report=False)

    def _record(
        self, attempt: Attempt, result: ExecutionResult, started: asyncio.Future[Answer] | None
    ) -> None:
        outcome = result.outcome.value
        del self._attempts[attempt.key]
        self._finished_jobs[result.outcome].inc()
        if attempt.stop_request is not None and not attempt.stop_request.report:
            self._debug(attempt, "Attempt %d ended; its result is not reported", outcome=outcome)
            return
        self._debug(attempt, "Attempt %d ended: %s", outcome, outcome=outcome)
        if started is not None and self._started.withdraw(attempt.key):
            # Its Started report had not left yet: the result reports the start as well.
            started = None
        self._results.submit(job_result(attempt, result), after=started)

    # Leaving --------------------------------------------------------------------------

    async def _wind_down(self) -> None:
        """After a drain began: finish or stop attempts, report everything, deregister."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._drain_grace_s
        while self._attempt_tasks:
            remaining_s = deadline - loop.time()
            if remaining_s <= 0 and self._stop_everything is None:
                self._stop_all(
                    StopRequest(
                        Outcome.FAILED,
                        f"stopped: the worker drained and its grace of {self._drain_grace_s:g} s "
                        "ran out",
                    )
                )
            timeout_s = None if self._stop_everything is not None else remaining_s
            await asyncio.wait(set(self._attempt_tasks), timeout=timeout_s)

        try:
            async with asyncio.timeout(self.config.final_report_timeout_s):
                await self._reports_flushed()
        except TimeoutError:
            logger.warning(
                "The operator did not answer %d report(s) within %g s; their jobs are "
                "settled when their leases expire",
                len(self._results.unanswered()), self.config.final_report_timeout_s,
            )  # fmt: skip
        await self._deregister()

    async def _reports_flushed(self) -> None:
        await self._started.flushed()
        await self._results.flushed()

    async def _deregister(self) -> None:
        if self._sessions == 0:
            return  # never registered: the operator has nothing to forget
        request = workers_pb2.DeregisterRequest(
            worker_id=self.config.worker_id, reason=self._leaving_reason
        )
        try:
            await self._operator().Deregister(
                request, timeout=self.config.call_timeout_s, metadata=self._metadata()
            )
        except grpc.aio.AioRpcError as error:
            logger.warning(
                "Could not deregister from the operator (%s); it forgets this worker when "
                "its heartbeats stop", describe(error),
            )  # fmt: skip
        else:
            logger.info("Deregistered from the operator (%s)", self._leaving_reason)
