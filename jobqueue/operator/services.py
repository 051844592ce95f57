"""The operator's gRPC services: JobService, WorkerService and AdminService.

Each method is a thin adapter: translate the request (``convert``), call the store or the
scheduler, translate the answer. Errors are the project's own and become status codes in
``rpc.handled``. Everything a method needs is passed in at construction, so tests build
the services on a real store without the rest of the operator.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
import grpc.aio

from jobqueue import __version__, metrics
from jobqueue.api.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    workers_pb2,
    workers_pb2_grpc,
)
from jobqueue.errors import InvalidInputError, JobQueueError, NotFoundError, UnavailableError
from jobqueue.exchange import status_of
from jobqueue.health import Health, Report
from jobqueue.operator import convert
from jobqueue.operator.dispatch import Scheduler
from jobqueue.operator.rpc import RefusedMessage, handled, handled_stream, status_code
from jobqueue.operator.submits import SubmitCoalescer
from jobqueue.store import (
    TERMINAL_STATES,
    AttemptRef,
    JobStore,
    NewJob,
    ReportOutcome,
    Submitted,
    WorkerInfo,
)

logger = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]

# Largest batch one SubmitBatch may carry; the store refuses more too.
MAX_BATCH = 1000
# Messages one SubmitStream may have unanswered (their insert under way, or their answer
# not yet taken by the client); past it, its next message is read once one is answered.
MAX_STREAM_SUBMITS_IN_FLIGHT = 1000
# A page of List holds at most this many jobs.
MAX_PAGE_SIZE = 500
# Watch re-reads a job this often when no local change woke it (another replica's work).
WATCH_POLL_S = 0.5  # seconds


class JobService(jobs_pb2_grpc.JobServiceServicer):
    def __init__(self, store: JobStore, scheduler: Scheduler) -> None:
        self.store = store
        self.scheduler = scheduler
        # Single Submits that arrive together are inserted together (see ``submits``).
        self._submits = SubmitCoalescer(self._submit_batch)

    @handled
    async def Submit(self, request: jobs_pb2.SubmitRequest, context: Context) -> Any:
        submitted = await self._submits.submit(convert.new_job(request.job))
        response = jobs_pb2.SubmitResponse(created=submitted.created)
        convert.fill_job(response.job, submitted.job)
        return response

    @handled_stream
    async def SubmitStream(
        self,
        requests: AsyncIterator[jobs_pb2.SubmitStreamRequest | RefusedMessage],
        context: Context,
    ) -> AsyncIterator[jobs_pb2.SubmitStreamResponse]:
        """Single submits on one call (jobs.proto), each answered when its insert is done.

        Each message joins the coalesced inserts as a Submit call's job does, with no task
        of its own: its answer is queued from the insert's future. The stream ends once
        the client has stopped writing and every message has been answered.
        """
        answers: asyncio.Queue[jobs_pb2.SubmitStreamResponse | None] = asyncio.Queue()
        pending: set[asyncio.Future[Submitted]] = set()
        # A permit per message not yet answered on the wire, whether its insert is under
        # way or its answer waits for the client to read: when none is left, the next
        # message is not read, and gRPC's flow control holds the client back.
        room = asyncio.Semaphore(MAX_STREAM_SUBMITS_IN_FLIGHT)

        def answer(message_id: int, started: float, future: asyncio.Future[Submitted]) -> None:
            pending.discard(future)
            reply = _stream_answer(message_id, future)
            code = status_of(reply.error_code).name
            metrics.GRPC_CALL_DURATION.labels(SUBMIT_STREAM_MESSAGE, code).observe(
                time.perf_counter() - started
            )
            answers.put_nowait(reply)

        def take(message: jobs_pb2.SubmitStreamRequest | RefusedMessage) -> None:
            started = time.perf_counter()
            if isinstance(message, RefusedMessage):
                answers.put_nowait(_stream_refusal(message.request.id, message.error))
                return
            try:
                job = convert.new_job(message.submit.job)
            except JobQueueError as error:
                metrics.GRPC_CALL_DURATION.labels(
                    SUBMIT_STREAM_MESSAGE, status_code(error).name
                ).observe(time.perf_counter() - started)
                answers.put_nowait(_stream_refusal(message.id, error))
                return
            future = self._submits.enqueue(job)
            pending.add(future)
            future.add_done_callback(functools.partial(answer, message.id, started))

        async def read() -> None:
            try:
                async for message in requests:
                    take(message)
                    await room.acquire()
                while pending:
                    await asyncio.wait(list(pending))
            finally:
                answers.put_nowait(None)

        # At once, before any message: the client waits for this to know the method exists
        # (see client._StreamedSubmits).
        await context.send_initial_metadata(())
        reader = asyncio.create_task(read(), name="submit stream reader")
        try:
            while (reply := await answers.get()) is not None:
                yield reply
                room.release()
            await reader  # raises what ended the reading, if anything did
        finally:
            reader.cancel()

    @handled
    async def SubmitBatch(self, request: jobs_pb2.SubmitBatchRequest, context: Context) -> Any:
        if len(request.jobs) > MAX_BATCH:
            raise InvalidInputError(f"jobs: at most {MAX_BATCH} per batch, got {len(request.jobs)}")
        new_jobs = []
        for index, spec in enumerate(request.jobs):
            try:
                new_jobs.append(convert.new_job(spec))
            except InvalidInputError as error:
                raise InvalidInputError(f"jobs[{index}]: {error}") from error
        # Shielded: once inserted, jobs assigned at submit must reach their workers even
        # if the caller goes away (they would wait for their leases otherwise).
        submitted = await asyncio.shield(self._submit_batch(new_jobs))
        response = jobs_pb2.SubmitBatchResponse()
        for item in submitted:
            result = response.results.add(created=item.created)
            convert.fill_job(result.job, item.job)
        return response

    async def _submit_batch(self, jobs: Sequence[NewJob]) -> list[Submitted]:
        """Insert jobs (assigning them at once where a worker is free) and hand them on."""
        with self.scheduler.reserving([job.queue for job in jobs]) as direct:
            submitted = await self.store.submit_batch(jobs, direct)
            created = Counter(item.job.queue for item in submitted if item.created)
            for queue, count in created.items():
                metrics.JOBS_SUBMITTED.labels(queue).inc(count)
            await self.scheduler.submitted(submitted)
        return submitted

    @handled
    async def Get(self, request: jobs_pb2.GetJobRequest, context: Context) -> Any:
        return convert.job_to_proto(await self.store.get(request.id))

    @handled
    async def List(self, request: jobs_pb2.ListJobsRequest, context: Context) -> Any:
        if not 0 <= request.page_size <= MAX_PAGE_SIZE:
            raise InvalidInputError(
                f"page_size: must be 0..{MAX_PAGE_SIZE}, got {request.page_size}"
            )
        jobs, next_token = await self.store.list_jobs(
            queue=request.queue or None,
            states=convert.states_from_proto(request.states),
            labels=dict(request.labels),
            limit=request.page_size or 100,
            page_token=request.page_token or None,
        )
        response = jobs_pb2.ListJobsResponse(next_page_token=next_token or "")
        for job in jobs:
            convert.fill_job(response.jobs.add(), job)
        return response

    @handled
    async def Cancel(self, request: jobs_pb2.CancelJobRequest, context: Context) -> Any:
        cancelled = await self.store.cancel(request.id, request.reason)
        job = cancelled.job
        if cancelled.worker_id:
            # The attempt that was running is the job's current one.
            stopped = [AttemptRef(job.id, job.attempt)]
            self.scheduler.tell_to_stop(cancelled.worker_id, stopped, request.reason or "cancelled")
        self.scheduler.notify_changed([job.id])
        return convert.job_to_proto(job)

    @handled
    async def Retry(self, request: jobs_pb2.RetryJobRequest, context: Context) -> Any:
        job = await self.store.retry(request.id)
        await self.scheduler.announce([job.queue])
        self.scheduler.notify_changed([job.id])
        return convert.job_to_proto(job)

    @handled
    async def Events(self, request: jobs_pb2.JobEventsRequest, context: Context) -> Any:
        events = await self.store.events(request.id)
        return jobs_pb2.JobEventsResponse(events=[convert.event_to_proto(e) for e in events])

    @handled_stream
    async def Watch(
        self, request: jobs_pb2.WatchJobRequest, context: Context
    ) -> AsyncIterator[jobs_pb2.Job]:
        with self.scheduler.watching(request.id) as changed:
            last_seen: tuple[object, ...] = ()
            while True:
                changed.clear()
                job = await self.store.get(request.id)
                seen = (job.state, job.attempt, job.updated_at)
                if seen != last_seen:
                    last_seen = seen
                    yield convert.job_to_proto(job)
                if job.state in TERMINAL_STATES:
                    return
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(WATCH_POLL_S):
                        await changed.wait()


class WorkerService(workers_pb2_grpc.WorkerServiceServicer):
    def __init__(self, scheduler: Scheduler, heartbeats: HeartbeatSink | None = None) -> None:
        self.scheduler = scheduler
        self.heartbeats = heartbeats

    @handled
    async def Register(self, request: workers_pb2.RegisterRequest, context: Context) -> Any:
        if not request.worker_id or not request.queue:
            raise InvalidInputError("worker_id and queue: both must be set")
        if request.concurrency < 1:
            raise InvalidInputError(f"concurrency: must be at least 1, got {request.concurrency}")
        info = WorkerInfo(
            id=request.worker_id,
            queue=request.queue,
            pool=request.pool,
            hostname=request.hostname,
            concurrency=request.concurrency,
            handlers=tuple(request.handlers),
            operator_id=self.scheduler.operator_id,
        )
        await self.scheduler.store.get_queue(request.queue)  # NOT_FOUND for an unknown queue
        await self.scheduler.register(info, convert.attempt_refs(request.running))
        settings = self.scheduler.settings
        return workers_pb2.RegisterResponse(
            heartbeat_interval=convert.duration(settings.heartbeat_interval_s),
            lease=convert.duration(settings.lease_s),
            operator_id=self.scheduler.operator_id,
        )

    @handled_stream
    async def Stream(
        self, request: workers_pb2.StreamRequest, context: Context
    ) -> AsyncIterator[workers_pb2.WorkerCommand]:
        async for command in self.scheduler.stream(request.worker_id):
            yield command

    @handled
    async def Started(self, request: workers_pb2.StartedRequest, context: Context) -> Any:
        outcomes = await self._started(request.worker_id, request.jobs)
        return workers_pb2.StartedResponse(outcomes=[_outcome(outcome) for outcome in outcomes])

    @handled
    async def Result(self, request: workers_pb2.ResultRequest, context: Context) -> Any:
        outcomes = await self._results(request.worker_id, request.results)
        return workers_pb2.ResultResponse(outcomes=[_outcome(outcome) for outcome in outcomes])

    @handled_stream
    async def Report(
        self, batches: AsyncIterator[workers_pb2.ReportBatch], context: Context
    ) -> AsyncIterator[workers_pb2.ReportAnswer]:
        """Started and Result on one stream (workers.proto).

        Each batch is handled as its own unary call would be, concurrently with the
        others, and answered when done: a slow batch of results holds up no Started. A
        batch sent with ``answer_on_commands`` is answered on the worker's command stream
        while that is open (``Scheduler.answer_later``), and here otherwise; the stream
        ends only once every answer has left, one way or the other.
        """
        answers: asyncio.Queue[workers_pb2.ReportAnswer | None] = asyncio.Queue()
        handling: set[asyncio.Task[None]] = set()
        leaving: set[asyncio.Future[None]] = set()  # answers not sent yet on the command stream

        async def answer(batch: workers_pb2.ReportBatch) -> None:
            reply = await self._answer(batch)
            if not batch.answer_on_commands:
                answers.put_nowait(reply)
                return
            sent = self.scheduler.answer_later(batch.worker_id, reply, answers.put_nowait)
            if sent is not None:
                leaving.add(sent)
                sent.add_done_callback(leaving.discard)

        async def read() -> None:
            try:
                async for batch in batches:
                    task = asyncio.create_task(answer(batch), name=f"report batch {batch.id}")
                    handling.add(task)
                    task.add_done_callback(handling.discard)
                await asyncio.gather(*handling)
                if leaving:
                    await asyncio.wait(leaving)
            finally:
                answers.put_nowait(None)

        reader = asyncio.create_task(read(), name="report stream reader")
        try:
            while (reply := await answers.get()) is not None:
                yield reply
            await reader  # raises what ended the reading, if anything did
        finally:
            for task in (reader, *handling):
                task.cancel()

    async def _answer(self, batch: workers_pb2.ReportBatch) -> workers_pb2.ReportAnswer:
        """The batch's outcomes, or the status its unary call would have ended with.

        A worker that reads ``all_accepted`` is told just that when every item was
        accepted, as almost every batch is: an outcome per item costs both sides about
        3 us of Python per job.
        """
        try:
            outcomes: list[ReportOutcome] = []
            if batch.started:
                outcomes += await self._started(batch.worker_id, batch.started)
            # An empty batch still goes through Result's checks (an unknown worker is
            # NOT_FOUND), as an empty unary call would.
            if batch.results or not batch.started:
                outcomes += await self._results(batch.worker_id, batch.results)
            if batch.reads_all_accepted and all(outcome.accepted for outcome in outcomes):
                return workers_pb2.ReportAnswer(id=batch.id, all_accepted=True)
            return workers_pb2.ReportAnswer(
                id=batch.id, outcomes=[_outcome(outcome) for outcome in outcomes]
            )
        except JobQueueError as error:
            return _refused(batch.id, status_code(error), str(error))
        except Exception:
            # Answered INTERNAL, as a unary call would be; the stream goes on.
            logger.exception("Unexpected error while handling a report batch.")
            return _refused(
                batch.id, grpc.StatusCode.INTERNAL, "internal error; the operator log has details"
            )

    async def _started(
        self, worker_id: str, jobs: Sequence[workers_pb2.JobAttempt]
    ) -> list[ReportOutcome]:
        return await self.scheduler.started(worker_id, convert.attempt_refs(jobs))

    async def _results(
        self, worker_id: str, results: Sequence[workers_pb2.JobResult]
    ) -> list[ReportOutcome]:
        attempts = [convert.attempt_result(result) for result in results]
        return await self.scheduler.results(worker_id, attempts)

    @handled
    async def Heartbeat(self, request: workers_pb2.HeartbeatRequest, context: Context) -> Any:
        running = convert.attempt_refs(request.running)
        stop = await self.scheduler.heartbeat(request.worker_id, running)
        if self.heartbeats is not None:
            await self.heartbeats.record(request.worker_id, len(running), request.free_slots)
        jobs = [workers_pb2.JobAttempt(job_id=a.job_id, attempt=a.attempt) for a in stop]
        return workers_pb2.HeartbeatResponse(stop=jobs)

    @handled
    async def Deregister(self, request: workers_pb2.DeregisterRequest, context: Context) -> Any:
        await self.scheduler.deregister(request.worker_id, request.reason)
        return workers_pb2.DeregisterResponse()


class HeartbeatSink:
    """Records worker heartbeats in Redis for other replicas; an outage only loses detail."""

    def __init__(self, state: Any, ttl_s: float) -> None:
        self.state = state
        self.ttl_s = ttl_s

    async def record(self, worker_id: str, busy: int, free_slots: int) -> None:
        try:
            await self.state.heartbeat(worker_id, self.ttl_s, {"busy": busy, "free": free_slots})
        except UnavailableError:
            logger.debug("Heartbeat of %s not recorded in Redis.", worker_id)


# The histogram label of one message of a SubmitStream (the stream itself is timed as
# "SubmitStream", from its opening to its end).
SUBMIT_STREAM_MESSAGE = "SubmitStream.message"


def _stream_answer(
    message_id: int, future: asyncio.Future[Submitted]
) -> jobs_pb2.SubmitStreamResponse:
    """The answer to a stream's submit, from its insert's future (done)."""
    if future.cancelled():
        return _stream_refusal(
            message_id, UnavailableError("the operator stopped before the job was submitted")
        )
    error = future.exception()
    if error is None:
        submitted = future.result()
        reply = jobs_pb2.SubmitStreamResponse(id=message_id)
        reply.submit.created = submitted.created
        convert.fill_job(reply.submit.job, submitted.job)
        return reply
    if isinstance(error, JobQueueError):
        return _stream_refusal(message_id, error)
    # Answered INTERNAL, as a Submit call would be; the stream goes on.
    logger.error("Unexpected error while submitting a job from a stream.", exc_info=error)
    return _stream_error(
        message_id, grpc.StatusCode.INTERNAL, "internal error; the operator log has details"
    )


def _stream_refusal(message_id: int, error: JobQueueError) -> jobs_pb2.SubmitStreamResponse:
    return _stream_error(message_id, status_code(error), str(error))


def _stream_error(
    message_id: int, code: grpc.StatusCode, message: str
) -> jobs_pb2.SubmitStreamResponse:
    code_number: int = code.value[0]
    return jobs_pb2.SubmitStreamResponse(
        id=message_id, error_code=code_number, error_message=message
    )


def _refused(batch_id: int, code: grpc.StatusCode, message: str) -> workers_pb2.ReportAnswer:
    code_number: int = code.value[0]
    return workers_pb2.ReportAnswer(id=batch_id, error_code=code_number, error_message=message)


def _outcome(outcome: ReportOutcome) -> workers_pb2.ReportOutcome:
    return workers_pb2.ReportOutcome(
        job=workers_pb2.JobAttempt(job_id=outcome.job_id, attempt=outcome.attempt),
        accepted=outcome.accepted,
        reason=outcome.reason,
    )


StatusProbe = Callable[[], Awaitable[Report]]

_HEALTH = {
    Health.OK: admin_pb2.HEALTH_OK,
    Health.DEGRADED: admin_pb2.HEALTH_DEGRADED,
    Health.DOWN: admin_pb2.HEALTH_DOWN,
}


class AdminService(admin_pb2_grpc.AdminServiceServicer):
    def __init__(
        self, store: JobStore, scheduler: Scheduler, probe: StatusProbe, drain_grace_s: float
    ) -> None:
        self.store = store
        self.scheduler = scheduler
        self.probe = probe
        self.drain_grace_s = drain_grace_s

    async def _stats(self, names: list[str] | None) -> dict[str, admin_pb2.QueueStats]:
        stats = await self.store.queue_stats(names)
        return {
            name: convert.queue_stats_to_proto(item, self.scheduler.connected_workers(name))
            for name, item in stats.items()
        }

    @handled
    async def ListQueues(self, request: admin_pb2.ListQueuesRequest, context: Context) -> Any:
        policies = await self.store.list_queues()
        stats = await self._stats([policy.name for policy in policies])
        queues = [convert.queue_to_proto(p, stats.get(p.name)) for p in policies]
        return admin_pb2.ListQueuesResponse(queues=queues)

    @handled
    async def GetQueueStats(self, request: admin_pb2.GetQueueStatsRequest, context: Context) -> Any:
        await self.store.get_queue(request.queue)  # NOT_FOUND for an unknown queue
        return (await self._stats([request.queue]))[request.queue]

    @handled
    async def PauseQueue(self, request: admin_pb2.PauseQueueRequest, context: Context) -> Any:
        policy = await self.store.set_paused(request.queue, True)
        self.scheduler.forget_policies()
        return convert.queue_to_proto(policy, None)

    @handled
    async def ResumeQueue(self, request: admin_pb2.ResumeQueueRequest, context: Context) -> Any:
        policy = await self.store.set_paused(request.queue, False)
        self.scheduler.forget_policies()
        await self.scheduler.announce([request.queue])
        return convert.queue_to_proto(policy, None)

    @handled
    async def ListWorkers(self, request: admin_pb2.ListWorkersRequest, context: Context) -> Any:
        records = await self.store.list_workers(request.queue or None)
        workers = [
            convert.worker_to_proto(record, self.scheduler.busy_slots(record.info.id))
            for record in records
        ]
        return admin_pb2.ListWorkersResponse(workers=workers)

    @handled
    async def DrainWorker(self, request: admin_pb2.DrainWorkerRequest, context: Context) -> Any:
        return await self._stop_worker(request.worker_id, shutdown=False, reason="drain requested")

    @handled
    async def ShutdownWorker(
        self, request: admin_pb2.ShutdownWorkerRequest, context: Context
    ) -> Any:
        reason = request.reason or "shutdown requested"
        return await self._stop_worker(request.worker_id, shutdown=True, reason=reason)

    async def _stop_worker(self, worker_id: str, *, shutdown: bool, reason: str) -> Any:
        # The workers table carries the request to whichever replica holds the worker's
        # stream; the replica that holds it acts at once.
        await self.store.set_worker_state(worker_id, "draining")
        if worker_id in self.scheduler.sessions:
            if shutdown:
                self.scheduler.shutdown(worker_id, reason)
            else:
                self.scheduler.drain(worker_id, self.drain_grace_s)
        records = await self.store.list_workers()
        record = next((r for r in records if r.info.id == worker_id), None)
        if record is None:  # deleted between the two statements
            raise NotFoundError(f"unknown worker {worker_id}")
        return convert.worker_to_proto(record, self.scheduler.busy_slots(worker_id))

    @handled
    async def SystemStatus(self, request: admin_pb2.SystemStatusRequest, context: Context) -> Any:
        report = await self.probe()
        dependencies = [
            admin_pb2.DependencyStatus(
                name=result.name,
                health=_HEALTH[result.health],
                message=result.message,
                latency=convert.duration(result.latency_s),
            )
            for result in report.results
        ]
        return admin_pb2.SystemStatusResponse(
            health=_HEALTH[report.health],
            dependencies=dependencies,
            operator_id=self.scheduler.operator_id,
            version=__version__,
        )
