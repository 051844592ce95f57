"""An in-memory JobService and AdminService for testing ``jqctl`` over real gRPC.

This is a test of the command line, not of the operator: the server keeps jobs in a dict,
records every request and its metadata, and answers from scripts the test sets (pages of
a listing, the updates a watch streams, the system's health). Errors are real gRPC
statuses, so the client's translation and the CLI's exit codes are exercised end to end.
"""

from __future__ import annotations

import datetime
import itertools
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
from google.protobuf.message import Message

from jobqueue.api.v1 import admin_pb2, admin_pb2_grpc, jobs_pb2, jobs_pb2_grpc

SLOW_JOB_ID = "slow"  # Get of this id blocks until the test ends, to provoke a deadline


def sample_job(job_id: str, queue: str = "emails", **fields: Any) -> jobs_pb2.Job:
    defaults: dict[str, Any] = {"state": jobs_pb2.JOB_STATE_PENDING, "max_attempts": 3}
    job = jobs_pb2.Job(
        id=job_id,
        spec=jobs_pb2.JobSpec(queue=queue, command=jobs_pb2.CommandJob(argv=["echo", job_id])),
        **(defaults | fields),
    )
    job.created_at.FromDatetime(datetime.datetime.now(datetime.UTC))
    return job


class ScriptedServer(jobs_pb2_grpc.JobServiceServicer, admin_pb2_grpc.AdminServiceServicer):
    def __init__(self) -> None:
        self.address = ""
        self.requests: list[Message] = []
        self.metadata: list[dict[str, str]] = []
        self.required_token: str | None = None
        self.jobs: dict[str, jobs_pb2.Job] = {}
        self.pages: dict[str, jobs_pb2.ListJobsResponse] = {}
        self.watch_updates: dict[str, list[jobs_pb2.Job]] = {}
        self.events: dict[str, list[jobs_pb2.JobEvent]] = {}
        self.queues: dict[str, admin_pb2.Queue] = {}
        self.workers: dict[str, admin_pb2.Worker] = {}
        self.status = admin_pb2.SystemStatusResponse(health=admin_pb2.HEALTH_OK)
        self.released = threading.Event()
        self._ids = itertools.count(1)

    def requests_of(self, kind: type[Message]) -> list[Any]:
        return [request for request in self.requests if isinstance(request, kind)]

    def _receive(self, request: Message, context: grpc.ServicerContext) -> None:
        metadata = {key: str(value) for key, value in context.invocation_metadata()}
        self.requests.append(request)
        self.metadata.append(metadata)
        if self.required_token and metadata.get("authorization") != f"Bearer {self.required_token}":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "a valid bearer token is required")

    def _job(self, job_id: str, context: grpc.ServicerContext) -> jobs_pb2.Job:
        if job_id not in self.jobs:
            context.abort(grpc.StatusCode.NOT_FOUND, f"job {job_id} does not exist")
        return self.jobs[job_id]

    # JobService ---------------------------------------------------------------------

    def _create(self, spec: jobs_pb2.JobSpec) -> jobs_pb2.Job:
        job = sample_job(f"job-{next(self._ids)}", spec.queue)
        job.spec.CopyFrom(spec)
        job.max_attempts = spec.max_attempts or 3
        self.jobs[job.id] = job
        return job

    def Submit(self, request: Any, context: Any) -> jobs_pb2.SubmitResponse:
        self._receive(request, context)
        return jobs_pb2.SubmitResponse(job=self._create(request.job), created=True)

    def SubmitBatch(self, request: Any, context: Any) -> jobs_pb2.SubmitBatchResponse:
        self._receive(request, context)
        results = [jobs_pb2.SubmitResponse(job=self._create(spec)) for spec in request.jobs]
        return jobs_pb2.SubmitBatchResponse(results=results)

    def Get(self, request: Any, context: Any) -> jobs_pb2.Job:
        self._receive(request, context)
        if request.id == SLOW_JOB_ID:
            self.released.wait(timeout=30)  # seconds; the test's deadline is far shorter
        return self._job(request.id, context)

    def List(self, request: Any, context: Any) -> jobs_pb2.ListJobsResponse:
        self._receive(request, context)
        if self.pages:
            return self.pages[request.page_token]
        return jobs_pb2.ListJobsResponse(jobs=list(self.jobs.values()))

    def Cancel(self, request: Any, context: Any) -> jobs_pb2.Job:
        self._receive(request, context)
        job = self._job(request.id, context)
        job.state = jobs_pb2.JOB_STATE_CANCELLED
        return job

    def Retry(self, request: Any, context: Any) -> jobs_pb2.Job:
        self._receive(request, context)
        job = self._job(request.id, context)
        if job.state == jobs_pb2.JOB_STATE_SUCCEEDED:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"job {job.id} already succeeded")
        job.state, job.attempt = jobs_pb2.JOB_STATE_PENDING, 0
        return job

    def Events(self, request: Any, context: Any) -> jobs_pb2.JobEventsResponse:
        self._receive(request, context)
        self._job(request.id, context)
        return jobs_pb2.JobEventsResponse(events=self.events.get(request.id, []))

    def Watch(self, request: Any, context: Any) -> Iterator[jobs_pb2.Job]:
        self._receive(request, context)
        yield from self.watch_updates.get(request.id) or [self._job(request.id, context)]

    # AdminService -------------------------------------------------------------------

    def _queue(self, name: str, context: grpc.ServicerContext) -> admin_pb2.Queue:
        if name not in self.queues:
            context.abort(grpc.StatusCode.NOT_FOUND, f"queue {name} does not exist")
        return self.queues[name]

    def _worker(self, worker_id: str, context: grpc.ServicerContext) -> admin_pb2.Worker:
        if worker_id not in self.workers:
            context.abort(grpc.StatusCode.NOT_FOUND, f"worker {worker_id} is not connected")
        return self.workers[worker_id]

    def ListQueues(self, request: Any, context: Any) -> admin_pb2.ListQueuesResponse:
        self._receive(request, context)
        return admin_pb2.ListQueuesResponse(queues=list(self.queues.values()))

    def GetQueueStats(self, request: Any, context: Any) -> admin_pb2.QueueStats:
        self._receive(request, context)
        return self._queue(request.queue, context).stats

    def PauseQueue(self, request: Any, context: Any) -> admin_pb2.Queue:
        self._receive(request, context)
        queue = self._queue(request.queue, context)
        queue.paused = True
        return queue

    def ResumeQueue(self, request: Any, context: Any) -> admin_pb2.Queue:
        self._receive(request, context)
        queue = self._queue(request.queue, context)
        queue.paused = False
        return queue

    def ListWorkers(self, request: Any, context: Any) -> admin_pb2.ListWorkersResponse:
        self._receive(request, context)
        workers = [w for w in self.workers.values() if request.queue in ("", w.queue)]
        return admin_pb2.ListWorkersResponse(workers=workers)

    def DrainWorker(self, request: Any, context: Any) -> admin_pb2.Worker:
        self._receive(request, context)
        worker = self._worker(request.worker_id, context)
        worker.state = admin_pb2.WORKER_STATE_DRAINING
        return worker

    def ShutdownWorker(self, request: Any, context: Any) -> admin_pb2.Worker:
        self._receive(request, context)
        worker = self._worker(request.worker_id, context)
        worker.state = admin_pb2.WORKER_STATE_GONE
        return worker

    def SystemStatus(self, request: Any, context: Any) -> admin_pb2.SystemStatusResponse:
        self._receive(request, context)
        return self.status


class StreamingScriptedServer(ScriptedServer):
    """The scripted server with ``SubmitStream``; the plain one lacks it, as an operator
    from before it did (its servicer answers UNIMPLEMENTED)."""

    # A job for this queue is never answered on the stream, to provoke a deadline.
    SILENT_QUEUE = "silent"

    def __init__(self) -> None:
        super().__init__()
        self.streams_opened = 0

    def SubmitStream(
        self, requests: Iterator[jobs_pb2.SubmitStreamRequest], context: Any
    ) -> Iterator[jobs_pb2.SubmitStreamResponse]:
        self.streams_opened += 1
        context.send_initial_metadata(())  # as the operator does: the client waits for it
        for message in requests:
            self._receive(message, context)
            if message.submit.job.queue == self.SILENT_QUEUE:
                continue
            reply = jobs_pb2.SubmitStreamResponse(id=message.id)
            reply.submit.job.CopyFrom(self._create(message.submit.job))
            reply.submit.created = True
            yield reply


def serve(*, streaming: bool = False) -> tuple[grpc.Server, ScriptedServer]:
    """A started server on a free loopback port; its address is on the ScriptedServer.

    ``streaming`` gives it ``SubmitStream`` (a ``StreamingScriptedServer``)."""
    scripted = StreamingScriptedServer() if streaming else ScriptedServer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    jobs_pb2_grpc.add_JobServiceServicer_to_server(scripted, server)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(scripted, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    scripted.address = f"127.0.0.1:{port}"
    return server, scripted
