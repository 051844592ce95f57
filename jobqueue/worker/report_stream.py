"""The worker's ``Report`` stream: Started and Result batches out, their answers back.

One stream per session carries both reporters' batches (see ``reporting``), as an
``Exchange``: each batch gets an id and the operator answers each when it is done, in any
order. A batch costs both sides about half of what a unary call does, which is most of
what a worker that reports job by job spends on the operator.

What a unary call would have raised, a send raises too (see ``jobqueue.exchange``), so
the reporters treat both alike: an answer that refuses the whole batch is an
``AioRpcError`` with the operator's code and message; a stream that breaks or ends fails
every batch waiting on it (temporary: the session is then lost, and the worker registers
again and opens a new stream); no answer within the timeout is DEADLINE_EXCEEDED.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import grpc

from jobqueue.api.v1 import workers_pb2
from jobqueue.exchange import Exchange, call_error
from jobqueue.worker.connection import Session

if TYPE_CHECKING:
    from jobqueue.api.v1.workers_pb2_grpc import WorkerServiceAsyncStub


class ReportStream:
    """Sends report batches on the current session's stream; see the module docstring."""

    def __init__(self, worker_id: str, timeout_s: float) -> None:
        self.worker_id = worker_id
        self.timeout_s = timeout_s
        self._stream: Exchange[workers_pb2.ReportBatch, workers_pb2.ReportAnswer] | None = None
        self._session: Session | None = None
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
        batch = workers_pb2.ReportBatch(
            worker_id=self.worker_id, started=started, results=results, reads_all_accepted=True
        )
        return await self._stream_for(stub, session, metadata).ask(batch, self.timeout_s)

    async def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            await stream.close()

    def _stream_for(
        self, stub: WorkerServiceAsyncStub, session: Session, metadata: Sequence[tuple[str, str]]
    ) -> Exchange[workers_pb2.ReportBatch, workers_pb2.ReportAnswer]:
        """The session's open stream; a new one, opened with ``metadata``, if it has none
        (without awaiting, so two reporters sending at once share one)."""
        stream = self._stream
        if stream is not None and self._session is session and stream.open:
            return stream
        if stream is not None:
            stream.abandon()
        self._stream = Exchange(
            stub.Report(metadata=metadata), workers_pb2.ReportAnswer, name="Report stream"
        )
        self._session = session
        self.streams_opened += 1
        return self._stream
