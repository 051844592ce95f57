"""A scripted WorkerService for testing the worker's side of the protocol.

It records every call, answers reports as the real operator would (accepted, or refused
for attempts listed in ``refuse_started``) on the Report stream as on the unary calls,
and lets a test push commands down the open stream. Hooks let a test hold a call
(``result_hook``) or drive assignments from the results (slot refills). It is
deliberately not the operator: it checks what the worker sends, it does not schedule
anything.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Generic, TypeVar

import grpc
import grpc.aio
from google.protobuf import duration_pb2

from jobqueue.api.v1 import jobs_pb2, workers_pb2, workers_pb2_grpc

T = TypeVar("T")
Key = tuple[str, int]
WAIT_S = 30.0  # a generous bound on any single wait in these tests


def key_of(job: workers_pb2.JobAttempt) -> Key:
    return (job.job_id, job.attempt)


def duration(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromTimedelta(datetime.timedelta(seconds=seconds))
    return value


class Recorded(Generic[T]):
    """A list that a test can wait on."""

    def __init__(self) -> None:
        self.items: list[T] = []
        self._changed = asyncio.Event()

    def add(self, item: T) -> None:
        self.items.append(item)
        self._changed.set()

    async def wait_for(
        self, predicate: Callable[[list[T]], bool] | None = None, timeout_s: float = WAIT_S
    ) -> list[T]:
        check = predicate or bool
        async with asyncio.timeout(timeout_s):
            while not check(self.items):
                self._changed.clear()
                await self._changed.wait()
        return self.items

    async def wait_count(self, count: int, timeout_s: float = WAIT_S) -> list[T]:
        return await self.wait_for(lambda items: len(items) >= count, timeout_s)


class ScriptedOperator(workers_pb2_grpc.WorkerServiceServicer):
    def __init__(
        self,
        *,
        heartbeat_interval_s: float = 5.0,
        lease_s: float = 30.0,
        operator_id: str = "scripted",
    ) -> None:
        self.heartbeat_interval_s = heartbeat_interval_s
        self.lease_s = lease_s
        self.operator_id = operator_id
        self.registrations: Recorded[workers_pb2.RegisterRequest] = Recorded()
        self.streams_opened: Recorded[str] = Recorded()
        self.streams_closed: Recorded[str] = Recorded()
        self.started: Recorded[Key] = Recorded()
        self.started_calls: Recorded[int] = Recorded()  # batch sizes
        self.results: Recorded[workers_pb2.JobResult] = Recorded()
        self.result_calls: Recorded[int] = Recorded()  # batch sizes
        self.heartbeats: Recorded[workers_pb2.HeartbeatRequest] = Recorded()
        self.report_streams: Recorded[int] = Recorded()  # Report streams opened, numbered
        # The authorization metadata each Report stream was opened with.
        self.report_authorizations: list[str | bytes | None] = []
        # The next report batch is refused as a whole with this code, then it is cleared.
        self.refuse_next_report: grpc.StatusCode | None = None
        # Batches sent with answer_on_commands are answered on the command stream, alone,
        # as the real operator does when no assignment follows; their ids are recorded.
        self.answer_on_commands = False
        self.answered_on_commands: Recorded[int] = Recorded()
        # What each report batch asked for: (id, answer_on_commands).
        self.batches: list[tuple[int, bool]] = []
        self.deregistrations: Recorded[workers_pb2.DeregisterRequest] = Recorded()
        self.refuse_started: set[Key] = set()
        # Attempts a heartbeat answers with "stop" once the worker lists them as running.
        self.stop_on_heartbeat: set[Key] = set()
        # Awaited before a Started call is answered (and recorded); may hold it.
        self.started_hook: Callable[[workers_pb2.StartedRequest], Awaitable[None]] | None = None
        # Awaited before a Result call is answered (and recorded); may hold it.
        self.result_hook: Callable[[workers_pb2.ResultRequest], Awaitable[None]] | None = None
        self.results_in_flight = 0
        self.most_results_in_flight = 0
        # Every call in arrival order ("register", "stream", "result:<job>", ...).
        self.timeline: list[str] = []
        self._commands: asyncio.Queue[workers_pb2.WorkerCommand | None] = asyncio.Queue()

    # What a test does -------------------------------------------------------------------

    def send(self, command: workers_pb2.WorkerCommand) -> None:
        self._commands.put_nowait(command)

    def assign(self, *assignments: workers_pb2.Assignment) -> None:
        self.send(workers_pb2.WorkerCommand(assignments=workers_pb2.Assignments(jobs=assignments)))

    def close_stream(self) -> None:
        self._commands.put_nowait(None)

    def result_of(self, job_id: str) -> workers_pb2.JobResult:
        (found,) = [result for result in self.results.items if result.job.job_id == job_id]
        return found

    # The service ------------------------------------------------------------------------

    async def Register(
        self, request: workers_pb2.RegisterRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> workers_pb2.RegisterResponse:
        self.timeline.append("register")
        self.registrations.add(request)
        return workers_pb2.RegisterResponse(
            heartbeat_interval=duration(self.heartbeat_interval_s),
            lease=duration(self.lease_s),
            operator_id=self.operator_id,
        )

    async def Stream(
        self, request: workers_pb2.StreamRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[workers_pb2.WorkerCommand]:
        self.timeline.append("stream")
        self.streams_opened.add(request.worker_id)
        try:
            while (command := await self._commands.get()) is not None:
                yield command
        finally:
            self.streams_closed.add(request.worker_id)

    async def Started(
        self, request: workers_pb2.StartedRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> workers_pb2.StartedResponse:
        if self.started_hook is not None:
            await self.started_hook(request)
        self.started_calls.add(len(request.jobs))
        outcomes = []
        for job in request.jobs:
            refused = key_of(job) in self.refuse_started
            if not refused:
                self.timeline.append(f"started:{job.job_id}")
                self.started.add(key_of(job))
            outcomes.append(
                workers_pb2.ReportOutcome(
                    job=job, accepted=not refused, reason="stale attempt" if refused else ""
                )
            )
        return workers_pb2.StartedResponse(outcomes=outcomes)

    async def Result(
        self, request: workers_pb2.ResultRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> workers_pb2.ResultResponse:
        self.results_in_flight += 1
        self.most_results_in_flight = max(self.most_results_in_flight, self.results_in_flight)
        try:
            if self.result_hook is not None:
                await self.result_hook(request)
        finally:
            self.results_in_flight -= 1
        self.result_calls.add(len(request.results))

        # Like the real operator: a second report of the same attempt is stale.
        known = {key_of(result.job) for result in self.results.items}
        outcomes = []
        for result in request.results:
            duplicate = key_of(result.job) in known
            if not duplicate:
                self.timeline.append(f"result:{result.job.job_id}")
                self.results.add(result)
            outcomes.append(
                workers_pb2.ReportOutcome(
                    job=result.job, accepted=not duplicate, reason="duplicate" if duplicate else ""
                )
            )
        return workers_pb2.ResultResponse(outcomes=outcomes)

    async def Report(
        self,
        batches: AsyncIterator[workers_pb2.ReportBatch],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[workers_pb2.ReportAnswer]:
        """Like the real operator: each batch handled as its unary call would be, at once."""
        self.report_streams.add(len(self.report_streams.items) + 1)
        metadata = dict(context.invocation_metadata() or ())
        self.report_authorizations.append(metadata.get("authorization"))
        answers: asyncio.Queue[workers_pb2.ReportAnswer] = asyncio.Queue()

        async def answer(batch: workers_pb2.ReportBatch) -> None:
            if self.refuse_next_report is not None:
                code, self.refuse_next_report = self.refuse_next_report, None
                refusal = workers_pb2.ReportAnswer(
                    id=batch.id, error_code=code.value[0], error_message="refused by the script"
                )
                answers.put_nowait(refusal)
                return
            outcomes: list[workers_pb2.ReportOutcome] = []
            if batch.started:
                started = workers_pb2.StartedRequest(worker_id=batch.worker_id, jobs=batch.started)
                outcomes += (await self.Started(started, context)).outcomes
            if batch.results:
                results = workers_pb2.ResultRequest(
                    worker_id=batch.worker_id, results=batch.results
                )
                outcomes += (await self.Result(results, context)).outcomes
            if batch.reads_all_accepted and all(outcome.accepted for outcome in outcomes):
                reply = workers_pb2.ReportAnswer(id=batch.id, all_accepted=True)
            else:
                reply = workers_pb2.ReportAnswer(id=batch.id, outcomes=outcomes)
            if self.answer_on_commands and batch.answer_on_commands:
                self.send(workers_pb2.WorkerCommand(report_answers=[reply]))
                self.answered_on_commands.add(batch.id)
            else:
                answers.put_nowait(reply)

        async def read() -> None:
            async with asyncio.TaskGroup() as group:
                async for batch in batches:
                    self.batches.append((batch.id, batch.answer_on_commands))
                    group.create_task(answer(batch))

        reader = asyncio.create_task(read())
        try:
            while True:
                yield await answers.get()
        finally:
            reader.cancel()

    async def Heartbeat(
        self, request: workers_pb2.HeartbeatRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> workers_pb2.HeartbeatResponse:
        self.heartbeats.add(request)
        stop = [job for job in request.running if key_of(job) in self.stop_on_heartbeat]
        return workers_pb2.HeartbeatResponse(stop=stop)

    async def Deregister(
        self, request: workers_pb2.DeregisterRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> workers_pb2.DeregisterResponse:
        self.timeline.append("deregister")
        self.deregistrations.add(request)
        return workers_pb2.DeregisterResponse()


async def start_server(operator: ScriptedOperator, port: int = 0) -> tuple[grpc.aio.Server, int]:
    """Serve ``operator`` on 127.0.0.1 (``port`` 0 picks a free one)."""
    server = grpc.aio.server()
    workers_pb2_grpc.add_WorkerServiceServicer_to_server(operator, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, bound


def python_assignment(
    job_id: str,
    handler: str,
    arguments_json: str = "{}",
    *,
    attempt: int = 1,
    timeout_s: float = 60,
) -> workers_pb2.Assignment:
    return workers_pb2.Assignment(
        job_id=job_id,
        attempt=attempt,
        queue="test",
        python=jobs_pb2.PythonJob(handler=handler, arguments_json=arguments_json),
        timeout=duration(timeout_s),
    )


def command_assignment(
    job_id: str, argv: list[str], *, attempt: int = 1, timeout_s: float = 60
) -> workers_pb2.Assignment:
    return workers_pb2.Assignment(
        job_id=job_id,
        attempt=attempt,
        queue="test",
        command=jobs_pb2.CommandJob(argv=argv),
        timeout=duration(timeout_s),
    )
