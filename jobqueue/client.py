"""The Python client: submit, follow and manage jobs from code, blocking or async.

``Client`` and ``AsyncClient`` speak the public gRPC contract (``proto/``) and return its
messages (``Job``, ``QueueStats``, ...), so what a program sees is exactly what any other
gRPC client sees. Building requests and translating errors is shared; the two classes
differ in how they wait, and in one more way: ``AsyncClient`` sends single submits as
messages on one long-lived ``SubmitStream`` call (about half the CPU of a ``Submit`` call
on each side), while ``Client`` makes a ``Submit`` call per job, since a blocking program
submits one job at a time and would gain nothing from keeping a stream open.

Errors arrive as the project's own: a gRPC status becomes ``NotFoundError``,
``InvalidInputError``, ``UnavailableError`` and so on (see ``_ERRORS_BY_CODE``), with the
server's message, chained to the ``grpc.RpcError``.

Channels are TLS by default and verify the operator (``ca_file``, else the system's
roots; ``server_name`` when the certificate names another host than the one dialled);
``plaintext=True`` is for an operator that serves plaintext in development. A ``token``
(a string, or a ``TokenSource`` such as a rotating file) is sent as ``authorization:
Bearer <token>`` metadata on every call; the operator verifies it with Kubernetes.

    with Client("jobqueue.example:7070", ca_file=Path("ca.crt"), token=token) as client:
        job = client.submit(job_spec("emails", command=["echo", "hi"]))
        final = client.wait(job.id, timeout_s=60)
"""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import grpc
import grpc.aio
from google.protobuf import duration_pb2, timestamp_pb2

from jobqueue import errors
from jobqueue.api.v1 import admin_pb2, admin_pb2_grpc, jobs_pb2, jobs_pb2_grpc
from jobqueue.channels import (
    ChannelSecurity,
    bearer_metadata,
    keepalive_options,
    open_aio_channel,
    open_channel,
)
from jobqueue.credentials import StaticToken, TokenSource
from jobqueue.exchange import Exchange, call_error

if TYPE_CHECKING:
    from jobqueue.api.v1.jobs_pb2_grpc import JobServiceAsyncStub

FINISHED_STATES = frozenset(
    {
        jobs_pb2.JOB_STATE_SUCCEEDED,
        jobs_pb2.JOB_STATE_DEAD_LETTERED,
        jobs_pb2.JOB_STATE_CANCELLED,
    }
)

_ERRORS_BY_CODE: Mapping[grpc.StatusCode, type[errors.JobQueueError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidInputError,
    grpc.StatusCode.NOT_FOUND: errors.NotFoundError,
    grpc.StatusCode.FAILED_PRECONDITION: errors.ConflictError,
    grpc.StatusCode.ALREADY_EXISTS: errors.ConflictError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.LimitExceededError,
    grpc.StatusCode.UNAVAILABLE: errors.UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.UnavailableError,
    grpc.StatusCode.UNAUTHENTICATED: errors.UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDeniedError,
}


def translate_error(error: grpc.RpcError) -> errors.JobQueueError:
    """The project's error for a failed call, carrying the server's message."""
    code: grpc.StatusCode = error.code()
    details = error.details() or code.name.lower()
    error_type = _ERRORS_BY_CODE.get(code, errors.JobQueueError)
    translated = error_type(details)
    translated.__cause__ = error
    return translated


def job_spec(
    queue: str,
    *,
    command: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    working_directory: str = "",
    handler: str | None = None,
    arguments: Mapping[str, Any] | None = None,
    priority: int = 0,
    max_attempts: int = 0,
    timeout_s: float | None = None,
    idempotency_key: str = "",
    labels: Mapping[str, str] | None = None,
    run_after: datetime.datetime | None = None,
) -> jobs_pb2.JobSpec:
    """A job to submit: a ``command`` (argv, no shell) or a Python ``handler``, not both."""
    if (command is None) == (handler is None):
        raise errors.InvalidInputError("a job is either a command or a Python handler; give one")
    spec = jobs_pb2.JobSpec(
        queue=queue,
        priority=priority,
        max_attempts=max_attempts,
        idempotency_key=idempotency_key,
        labels=dict(labels or {}),
    )
    if command is not None:
        spec.command.CopyFrom(
            jobs_pb2.CommandJob(
                argv=list(command), env=dict(env or {}), working_directory=working_directory
            )
        )
    elif handler is not None:
        try:
            arguments_json = json.dumps(dict(arguments or {}))
        except (TypeError, ValueError) as error:
            raise errors.InvalidInputError(f"arguments are not JSON: {error}") from error
        spec.python.CopyFrom(jobs_pb2.PythonJob(handler=handler, arguments_json=arguments_json))
    if timeout_s is not None:
        spec.timeout.CopyFrom(duration_pb2.Duration(nanos=0, seconds=0))
        spec.timeout.FromTimedelta(datetime.timedelta(seconds=timeout_s))
    if run_after is not None:
        spec.run_after.CopyFrom(timestamp_pb2.Timestamp())
        spec.run_after.FromDatetime(run_after.astimezone(datetime.UTC))
    return spec


def channel_security(
    *,
    plaintext: bool = False,
    ca_file: Path | None = None,
    server_name: str | None = None,
    token: str | TokenSource | None = None,
) -> ChannelSecurity:
    """The client's constructor arguments as one ``ChannelSecurity``."""
    source = StaticToken(token) if isinstance(token, str) else token
    return ChannelSecurity(
        insecure_plaintext=plaintext, ca_file=ca_file, server_name=server_name, token=source
    )


def _list_request(
    queue: str,
    states: Sequence[jobs_pb2.JobState.ValueType],
    labels: Mapping[str, str] | None,
    page_size: int,
    page_token: str,
) -> jobs_pb2.ListJobsRequest:
    return jobs_pb2.ListJobsRequest(
        queue=queue,
        states=list(states),
        labels=dict(labels or {}),
        page_size=page_size,
        page_token=page_token,
    )


class Client:
    """A blocking client. ``timeout_s`` bounds every call but ``watch`` and ``wait``."""

    def __init__(
        self,
        target: str,
        *,
        plaintext: bool = False,
        ca_file: Path | None = None,
        server_name: str | None = None,
        timeout_s: float = 30.0,
        token: str | TokenSource | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self._security = channel_security(
            plaintext=plaintext, ca_file=ca_file, server_name=server_name, token=token
        )
        self._channel = open_channel(target, self._security, keepalive_options())
        self._jobs = jobs_pb2_grpc.JobServiceStub(self._channel)
        self._admin = admin_pb2_grpc.AdminServiceStub(self._channel)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=self.timeout_s, metadata=bearer_metadata(self._security))
        except grpc.RpcError as error:
            raise translate_error(error) from error

    def submit(self, spec: jobs_pb2.JobSpec) -> jobs_pb2.Job:
        response: jobs_pb2.SubmitResponse = self._call(
            self._jobs.Submit, jobs_pb2.SubmitRequest(job=spec)
        )
        return response.job

    def submit_batch(self, specs: Sequence[jobs_pb2.JobSpec]) -> list[jobs_pb2.Job]:
        response: jobs_pb2.SubmitBatchResponse = self._call(
            self._jobs.SubmitBatch, jobs_pb2.SubmitBatchRequest(jobs=list(specs))
        )
        return [result.job for result in response.results]

    def get(self, job_id: str) -> jobs_pb2.Job:
        job: jobs_pb2.Job = self._call(self._jobs.Get, jobs_pb2.GetJobRequest(id=job_id))
        return job

    def list_jobs(
        self,
        queue: str = "",
        states: Sequence[jobs_pb2.JobState.ValueType] = (),
        labels: Mapping[str, str] | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> jobs_pb2.ListJobsResponse:
        request = _list_request(queue, states, labels, page_size, page_token)
        response: jobs_pb2.ListJobsResponse = self._call(self._jobs.List, request)
        return response

    def cancel(self, job_id: str, reason: str = "") -> jobs_pb2.Job:
        job: jobs_pb2.Job = self._call(
            self._jobs.Cancel, jobs_pb2.CancelJobRequest(id=job_id, reason=reason)
        )
        return job

    def retry(self, job_id: str) -> jobs_pb2.Job:
        job: jobs_pb2.Job = self._call(self._jobs.Retry, jobs_pb2.RetryJobRequest(id=job_id))
        return job

    def events(self, job_id: str) -> list[jobs_pb2.JobEvent]:
        response: jobs_pb2.JobEventsResponse = self._call(
            self._jobs.Events, jobs_pb2.JobEventsRequest(id=job_id)
        )
        return list(response.events)

    def watch(self, job_id: str, timeout_s: float | None = None) -> Iterator[jobs_pb2.Job]:
        """The job now, then each change, until it finishes (or ``timeout_s`` passes)."""
        try:
            yield from self._jobs.Watch(
                jobs_pb2.WatchJobRequest(id=job_id),
                timeout=timeout_s,
                metadata=bearer_metadata(self._security),
            )
        except grpc.RpcError as error:
            raise translate_error(error) from error

    def wait(self, job_id: str, timeout_s: float | None = None) -> jobs_pb2.Job:
        """Block until the job finishes; its final state."""
        last = None
        for last in self.watch(job_id, timeout_s):
            if last.state in FINISHED_STATES:
                return last
        if last is None:
            raise errors.UnavailableError(f"the watch of job {job_id} ended without an update")
        return last

    def queues(self) -> list[admin_pb2.Queue]:
        response: admin_pb2.ListQueuesResponse = self._call(
            self._admin.ListQueues, admin_pb2.ListQueuesRequest()
        )
        return list(response.queues)

    def queue_stats(self, queue: str) -> admin_pb2.QueueStats:
        stats: admin_pb2.QueueStats = self._call(
            self._admin.GetQueueStats, admin_pb2.GetQueueStatsRequest(queue=queue)
        )
        return stats

    def pause(self, queue: str) -> admin_pb2.Queue:
        result: admin_pb2.Queue = self._call(
            self._admin.PauseQueue, admin_pb2.PauseQueueRequest(queue=queue)
        )
        return result

    def resume(self, queue: str) -> admin_pb2.Queue:
        result: admin_pb2.Queue = self._call(
            self._admin.ResumeQueue, admin_pb2.ResumeQueueRequest(queue=queue)
        )
        return result

    def workers(self, queue: str = "") -> list[admin_pb2.Worker]:
        response: admin_pb2.ListWorkersResponse = self._call(
            self._admin.ListWorkers, admin_pb2.ListWorkersRequest(queue=queue)
        )
        return list(response.workers)

    def drain(self, worker_id: str) -> admin_pb2.Worker:
        worker: admin_pb2.Worker = self._call(
            self._admin.DrainWorker, admin_pb2.DrainWorkerRequest(worker_id=worker_id)
        )
        return worker

    def shutdown(self, worker_id: str, reason: str = "") -> admin_pb2.Worker:
        worker: admin_pb2.Worker = self._call(
            self._admin.ShutdownWorker,
            admin_pb2.ShutdownWorkerRequest(worker_id=worker_id, reason=reason),
        )
        return worker

    def system_status(self) -> admin_pb2.SystemStatusResponse:
        status: admin_pb2.SystemStatusResponse = self._call(
            self._admin.SystemStatus, admin_pb2.SystemStatusRequest()
        )
        return status


_SubmitExchange = Exchange[jobs_pb2.SubmitStreamRequest, jobs_pb2.SubmitStreamResponse]


class _StreamedSubmits:
    """``AsyncClient.submit`` over one ``SubmitStream`` call, with ``Submit`` to fall back on.

    The stream opens with the first submit and stays open; one that breaks (an operator
    restarting) fails the submits waiting on it, as their unary calls would have failed,
    and the next submit opens another. When the token changes, the stream in use takes
    no more submits and ends once those under way are answered, and a new one opens with
    the new token.

    Opening waits for the operator's initial metadata, which it sends as soon as the
    stream starts, before anything is written: a server without ``SubmitStream`` ends the
    call instead, with UNIMPLEMENTED, and from then on every submit is a ``Submit`` call.
    Writing first would not do: grpc.aio reports a write that meets a call the server has
    just ended as INTERNAL, and makes that the call's status too, hiding UNIMPLEMENTED.
    """

    def __init__(self, stub: JobServiceAsyncStub, security: ChannelSecurity) -> None:
        self._stub = stub
        self._security = security
        self._exchange: _SubmitExchange | None = None
        self._metadata: tuple[tuple[str, str], ...] = ()
        self._opening: asyncio.Task[_SubmitExchange | None] | None = None
        self.unsupported = False  # the operator has no SubmitStream
        self.streams_opened = 0  # for tests and debugging

    async def submit(self, spec: jobs_pb2.JobSpec, timeout_s: float) -> jobs_pb2.SubmitResponse:
        """Submit's answer; raises ``grpc.RpcError`` as the unary call would."""
        metadata = bearer_metadata(self._security)
        exchange = None if self.unsupported else await self._exchange_for(metadata, timeout_s)
        if exchange is not None:
            message = jobs_pb2.SubmitStreamRequest()
            message.submit.job.CopyFrom(spec)  # the one copy of the job
            answer = await exchange.ask(message, timeout_s)
            return answer.submit
        response: jobs_pb2.SubmitResponse = await self._stub.Submit(
            jobs_pb2.SubmitRequest(job=spec), timeout=timeout_s, metadata=metadata
        )
        return response

    async def close(self) -> None:
        opening, self._opening = self._opening, None
        if opening is not None:
            opening.cancel()
        exchange, self._exchange = self._exchange, None
        if exchange is not None:
            await exchange.close()

    async def _exchange_for(
        self, metadata: tuple[tuple[str, str], ...], timeout_s: float
    ) -> _SubmitExchange | None:
        """The open stream for ``metadata``, opened if there is none; None when the operator
        has no ``SubmitStream``. Submits made while one opens wait for that one."""
        exchange = self._exchange
        if exchange is not None and exchange.open and metadata == self._metadata:
            return exchange
        if self._opening is None or metadata != self._metadata:
            if exchange is not None:
                exchange.finish()
            self._exchange = None
            self._metadata = metadata
            self._opening = asyncio.create_task(self._open(metadata), name="SubmitStream open")
        try:
            async with asyncio.timeout(timeout_s):
                # Shielded: the others waiting for this stream still want it.
                return await asyncio.shield(self._opening)
        except TimeoutError:
            raise call_error(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"the SubmitStream did not open within {timeout_s:g} s",
            ) from None

    async def _open(self, metadata: tuple[tuple[str, str], ...]) -> _SubmitExchange | None:
        call = self._stub.SubmitStream(metadata=metadata)
        self.streams_opened += 1
        try:
            await call.initial_metadata()
            if call.done():
                code = await call.code()
                if code == grpc.StatusCode.UNIMPLEMENTED:
                    self.unsupported = True
                    return None
                raise call_error(code, await call.details())
        except BaseException:
            call.cancel()
            raise
        finally:
            if metadata == self._metadata:
                self._opening = None
        exchange = Exchange(call, jobs_pb2.SubmitStreamResponse, name="SubmitStream")
        if metadata == self._metadata:
            self._exchange = exchange
        else:
            exchange.finish()  # the token changed meanwhile: serve only those who waited
        return exchange


class AsyncClient:
    """The same calls as ``Client``, awaited; for asyncio programs.

    Single submits share one long-lived ``SubmitStream`` call (``stream_submits``, on by
    default), which costs client and operator about half of what a ``Submit`` call per
    job does; an operator without it is sent ``Submit`` calls.
    """

    def __init__(
        self,
        target: str,
        *,
        plaintext: bool = False,
        ca_file: Path | None = None,
        server_name: str | None = None,
        timeout_s: float = 30.0,
        token: str | TokenSource | None = None,
        stream_submits: bool = True,
    ) -> None:
        self.timeout_s = timeout_s
        self._security = channel_security(
            plaintext=plaintext, ca_file=ca_file, server_name=server_name, token=token
        )
        self._channel = open_aio_channel(
            target, self._security, keepalive_options(), send_token=False
        )
        self._jobs = jobs_pb2_grpc.JobServiceStub(self._channel)
        self._admin = admin_pb2_grpc.AdminServiceStub(self._channel)
        self._submits = _StreamedSubmits(self._jobs, self._security) if stream_submits else None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._submits is not None:
            await self._submits.close()
        await self._channel.close()

    async def _call(self, method: Any, request: Any) -> Any:
        try:
            return await method(
                request, timeout=self.timeout_s, metadata=bearer_metadata(self._security)
            )
        except grpc.RpcError as error:
            raise translate_error(error) from error

    @property
    def submit_streams_opened(self) -> int:
        """How many ``SubmitStream`` calls this client has opened (for tests, debugging)."""
        return self._submits.streams_opened if self._submits is not None else 0

    async def submit(self, spec: jobs_pb2.JobSpec) -> jobs_pb2.Job:
        if self._submits is None:
            response: jobs_pb2.SubmitResponse = await self._call(
                self._jobs.Submit, jobs_pb2.SubmitRequest(job=spec)
            )
            return response.job
        try:
            response = await self._submits.submit(spec, self.timeout_s)
        except grpc.RpcError as error:
            raise translate_error(error) from error
        return response.job

    async def submit_batch(self, specs: Sequence[jobs_pb2.JobSpec]) -> list[jobs_pb2.Job]:
        response: jobs_pb2.SubmitBatchResponse = await self._call(
            self._jobs.SubmitBatch, jobs_pb2.SubmitBatchRequest(jobs=list(specs))
        )
        return [result.job for result in response.results]

    async def get(self, job_id: str) -> jobs_pb2.Job:
        job: jobs_pb2.Job = await self._call(self._jobs.Get, jobs_pb2.GetJobRequest(id=job_id))
        return job

    async def list_jobs(
        self,
        queue: str = "",
        states: Sequence[jobs_pb2.JobState.ValueType] = (),
        labels: Mapping[str, str] | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> jobs_pb2.ListJobsResponse:
        request = _list_request(queue, states, labels, page_size, page_token)
        response: jobs_pb2.ListJobsResponse = await self._call(self._jobs.List, request)
        return response

    async def cancel(self, job_id: str, reason: str = "") -> jobs_pb2.Job:
        job: jobs_pb2.Job = await self._call(
            self._jobs.Cancel, jobs_pb2.CancelJobRequest(id=job_id, reason=reason)
        )
        return job

    async def retry(self, job_id: str) -> jobs_pb2.Job:
        job: jobs_pb2.Job = await self._call(self._jobs.Retry, jobs_pb2.RetryJobRequest(id=job_id))
        return job

    async def events(self, job_id: str) -> list[jobs_pb2.JobEvent]:
        response: jobs_pb2.JobEventsResponse = await self._call(
            self._jobs.Events, jobs_pb2.JobEventsRequest(id=job_id)
        )
        return list(response.events)

    async def watch(
        self, job_id: str, timeout_s: float | None = None
    ) -> AsyncIterator[jobs_pb2.Job]:
        try:
            async for job in self._jobs.Watch(
                jobs_pb2.WatchJobRequest(id=job_id),
                timeout=timeout_s,
                metadata=bearer_metadata(self._security),
            ):
                yield job
        except grpc.RpcError as error:
            raise translate_error(error) from error

    async def wait(self, job_id: str, timeout_s: float | None = None) -> jobs_pb2.Job:
        last = None
        async for last in self.watch(job_id, timeout_s):
            if last.state in FINISHED_STATES:
                return last
        if last is None:
            raise errors.UnavailableError(f"the watch of job {job_id} ended without an update")
        return last

    async def queues(self) -> list[admin_pb2.Queue]:
        response: admin_pb2.ListQueuesResponse = await self._call(
            self._admin.ListQueues, admin_pb2.ListQueuesRequest()
        )
        return list(response.queues)

    async def queue_stats(self, queue: str) -> admin_pb2.QueueStats:
        stats: admin_pb2.QueueStats = await self._call(
            self._admin.GetQueueStats, admin_pb2.GetQueueStatsRequest(queue=queue)
        )
        return stats

    async def pause(self, queue: str) -> admin_pb2.Queue:
        result: admin_pb2.Queue = await self._call(
            self._admin.PauseQueue, admin_pb2.PauseQueueRequest(queue=queue)
        )
        return result

    async def resume(self, queue: str) -> admin_pb2.Queue:
        result: admin_pb2.Queue = await self._call(
            self._admin.ResumeQueue, admin_pb2.ResumeQueueRequest(queue=queue)
        )
        return result

    async def workers(self, queue: str = "") -> list[admin_pb2.Worker]:
        response: admin_pb2.ListWorkersResponse = await self._call(
            self._admin.ListWorkers, admin_pb2.ListWorkersRequest(queue=queue)
        )
        return list(response.workers)

    async def drain(self, worker_id: str) -> admin_pb2.Worker:
        worker: admin_pb2.Worker = await self._call(
            self._admin.DrainWorker, admin_pb2.DrainWorkerRequest(worker_id=worker_id)
        )
        return worker

    async def shutdown(self, worker_id: str, reason: str = "") -> admin_pb2.Worker:
        worker: admin_pb2.Worker = await self._call(
            self._admin.ShutdownWorker,
            admin_pb2.ShutdownWorkerRequest(worker_id=worker_id, reason=reason),
        )
        return worker

    async def system_status(self) -> admin_pb2.SystemStatusResponse:
        status: admin_pb2.SystemStatusResponse = await self._call(
            self._admin.SystemStatus, admin_pb2.SystemStatusRequest()
        )
        return status
