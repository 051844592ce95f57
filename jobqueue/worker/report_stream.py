"""The worker's ``Report`` stream: Started and Result batches out, their answers back.

One stream per session carries both reporters' batches (see ``reporting``). A batch gets
an id, and the reader task hands each answer to the batch that waits for it (the
operator answers each batch when it is done, in any order). A batch costs
both sides about half of what a unary call does, which is most of what a worker that
reports job by job spends on the operator.

What a unary call would have raised, a send raises too, so the reporters treat both
alike: an answer that refuses the whole batch becomes an ``AioRpcError`` with the
operator's code and message; a stream that breaks or ends fails every batch waiting on
it with the error that ended it (temporary: the session is then lost, and the worker
registers again and opens a new stream); no answer within the timeout is
DEADLINE_EXCEEDED. A batch is never sent twice on one stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import grpc
import grpc.aio

from jobqueue.api.v1 import workers_pb2
from jobqueue.worker.connection import Session

if TYPE_CHECKING:
    from jobqueue.api.v1.workers_pb2_grpc import WorkerServiceAsyncStub


_Call = grpc.aio.StreamStreamCall[workers_pb2.ReportBatch, workers_pb2.ReportAnswer]


def call_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    """An error shaped like the one a failed unary call raises."""
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


_STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}


class _Stream:
    """One open ``Report`` call and the batches waiting for its answers."""

    def __init__(self, call: _Call, session: Session) -> None:
        self.call = call
        self.session = session
        self.waiting: dict[int, asyncio.Future[workers_pb2.ReportAnswer]] = {}
        self.write_lock = asyncio.Lock()
        self.reader = asyncio.create_task(self._read(), name="report stream reader")

    @property
    def open(self) -> bool:
        return not self.reader.done()

    async def _read(self) -> None:
        failure: grpc.aio.AioRpcError
        try:
            while True:
                answer = await self.call.read()
                if not isinstance(answer, workers_pb2.ReportAnswer):  # grpc.aio.EOF
                    failure = call_error(
                        grpc.StatusCode.UNAVAILABLE, "the operator ended the Report stream"
                    )
                    break
                waiter = self.waiting.pop(answer.id, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(answer)
        except grpc.aio.AioRpcError as error:
            failure = error
        except asyncio.CancelledError:
            failure = call_error(grpc.StatusCode.CANCELLED, "the Report stream was closed")
            raise
        finally:
            for waiter in self.waiting.values():
                if not waiter.done():
                    waiter.set_exception(failure)
            self.waiting.clear()

    def abandon(self) -> None:
        """End the call; batches still waiting fail (the reader's ``finally``)."""
        self.call.cancel()
        self.reader.cancel()

    async def close(self) -> None:
        self.abandon()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader


class ReportStream:
    """Sends report batches on the current session's stream; see the module docstring."""

    def __init__(self, worker_id: str, timeout_s: float) -> None:
        self.worker_id = worker_id
        self.timeout_s = timeout_s
        self._ids = itertools.count(1)
        self._stream: _Stream | None = None
        self.streams_opened = 0  # for tests and debugging

    async def send(
        self,
        stub: WorkerServiceAsyncStub,
        session: Session | None,
        metadata: Sequence[tuple[str, str]] = (),
        *,
        started: Sequence[workers_pb2.JobAttempt] = (),
        results: Sequence[workers_pb2.JobResult] = (),
    ) -> workers_pb2.ReportAnswer:
        """Send one batch and wait for its answer; raises as a unary call would."""
        if session is None:
            raise call_error(grpc.StatusCode.UNAVAILABLE, "the worker is not registered")
        stream = self._stream_for(stub, session, metadata)
        batch_id = next(self._ids)
        answer: asyncio.Future[workers_pb2.ReportAnswer]
        answer = asyncio.get_running_loop().create_future()
        stream.waiting[batch_id] = answer
        batch = workers_pb2.ReportBatch(
            id=batch_id,
            worker_id=self.worker_id,
            started=started,
            results=results,
            reads_all_accepted=True,
        )
        try:
            async with asyncio.timeout(self.timeout_s):
                async with stream.write_lock:
                    await stream.call.write(batch)
                reply = await answer
        except TimeoutError:
            raise call_error(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"no answer to a report batch within {self.timeout_s:g} s",
            ) from None
        except asyncio.InvalidStateError as error:
            # The call ended between the check and the write.
            raise call_error(grpc.StatusCode.UNAVAILABLE, str(error)) from error
        finally:
            stream.waiting.pop(batch_id, None)
        if reply.error_code:
            raise call_error(
                _STATUS_CODES.get(reply.error_code, grpc.StatusCode.UNKNOWN), reply.error_message
            )
        return reply

    async def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            await stream.close()

    def _stream_for(
        self, stub: WorkerServiceAsyncStub, session: Session, metadata: Sequence[tuple[str, str]]
    ) -> _Stream:
        """The session's open stream; a new one, opened with ``metadata``, if it has none
        (without awaiting, so two reporters sending at once share one)."""
        stream = self._stream
        if stream is not None and stream.session is session and stream.open:
            return stream
        if stream is not None:
            stream.abandon()
        self._stream = _Stream(stub.Report(metadata=metadata), session)
        self.streams_opened += 1
        return self._stream
