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

While the worker's command stream is open it asks for its answers there
(``answer_on_commands``): they then ride on the assignments the operator pushes anyway,
and the worker hands them over with ``deliver``. The operator answers on this stream
whenever the command stream is not open, so an answer is taken from either. Batch ids
are unique across the worker's Report streams, so an answer to a batch of an abandoned
stream never settles one of the next. A draining worker stops asking for answers there
and waits for those it asked for (``answers_on_commands_settled``) before it closes its
command stream: an answer under way on a stream the worker closes would be lost, and the
batch sent again after a timeout.
"""

from __future__ import annotations

import asyncio
import itertools
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
        self._ids = itertools.count(1)  # batch ids, across streams
        # Batches waiting for an answer on the command stream, and whether there are none.
        self._on_commands = 0
        self._none_on_commands = asyncio.Event()
        self._none_on_commands.set()
        self.streams_opened = 0  # for tests and debugging

    async def send(
        self,
        stub: WorkerServiceAsyncStub,
        session: Session | None,
        metadata: Sequence[tuple[str, str]] = (),
        *,
        started: Sequence[workers_pb2.JobAttempt] = (),
        results: Sequence[workers_pb2.JobResult] = (),
        answer_on_commands: bool = False,
    ) -> workers_pb2.ReportAnswer:
        """Send one batch and wait for its answer; raises as a unary call would."""
        if session is None:
            raise call_error(grpc.StatusCode.UNAVAILABLE, "the worker is not registered")
        batch = workers_pb2.ReportBatch(
            worker_id=self.worker_id,
            started=started,
            results=results,
            reads_all_accepted=True,
            answer_on_commands=answer_on_commands,
        )
        stream = self._stream_for(stub, session, metadata)
        if not answer_on_commands:
            return await stream.ask(batch, self.timeout_s)
        self._on_commands += 1
        self._none_on_commands.clear()
        try:
            return await stream.ask(batch, self.timeout_s)
        finally:
            self._on_commands -= 1
            if not self._on_commands:
                self._none_on_commands.set()

    async def answers_on_commands_settled(self) -> None:
        """Return once no batch waits for an answer on the command stream."""
        await self._none_on_commands.wait()

    def deliver(self, answers: Sequence[workers_pb2.ReportAnswer]) -> None:
        """Hand over answers that came on the command stream."""
        if self._stream is not None:
            for answer in answers:
                self._stream.deliver(answer)

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
            stub.Report(metadata=metadata),
            workers_pb2.ReportAnswer,
            name="Report stream",
            ids=self._ids,
        )
        self._session = session
        self.streams_opened += 1
        return self._stream
