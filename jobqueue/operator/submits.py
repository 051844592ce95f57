"""Single Submit calls that arrive together go to the store together.

Each job costs the operator a statement of its own when callers submit one job per call:
the round trip to PostgreSQL and psycopg's work per statement are most of what the store
spends on a small job. ``SubmitCoalescer`` keeps at most one insert in flight. A job
submitted while none is under way goes at once, so an idle operator adds no delay; jobs
submitted while one is under way wait for it and then go together, in one statement, as
one batch. The traffic sets the batch size, as it does for the workers' reports.

A batch is all or none in the store, but the calls in it are not one request: when the
store refuses a batch (one job breaks its queue's policy, say), each of its jobs is
submitted again on its own, so every caller gets the answer its own job deserves.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from jobqueue.errors import JobQueueError
from jobqueue.store import NewJob, Submitted

logger = logging.getLogger(__name__)

# Most jobs one statement inserts; more waiting go in the next one.
MAX_BATCH = 500

SubmitBatch = Callable[[Sequence[NewJob]], Awaitable[list[Submitted]]]


@dataclass(frozen=True)
class _Waiting:
    job: NewJob
    answer: asyncio.Future[Submitted]


class SubmitCoalescer:
    """Submits jobs through ``submit_batch``, several at a time when they arrive together."""

    def __init__(self, submit_batch: SubmitBatch, *, max_batch: int = MAX_BATCH) -> None:
        self._submit_batch = submit_batch
        self._max_batch = max_batch
        self._waiting: list[_Waiting] = []
        self._sender: asyncio.Task[None] | None = None

    async def submit(self, job: NewJob) -> Submitted:
        # Shielded: a caller that gives up cancels neither the batch of the others nor the
        # push of jobs assigned at submit (see JobService._submit_batch).
        return await asyncio.shield(self.enqueue(job))

    def enqueue(self, job: NewJob) -> asyncio.Future[Submitted]:
        """Queue ``job`` for the next insert; the future holds its answer.

        The future is cancelled only when the operator stops before the insert is made.
        """
        answer: asyncio.Future[Submitted] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(job, answer))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send(), name="coalesced submits")
        return answer

    async def _send(self) -> None:
        while self._waiting:
            batch = self._waiting[: self._max_batch]
            del self._waiting[: self._max_batch]
            await self._send_batch(batch)

    async def _send_batch(self, batch: list[_Waiting]) -> None:
        try:
            submitted = await self._submit_batch([item.job for item in batch])
        except JobQueueError as error:
            if len(batch) == 1:
                _settle(batch[0].answer, error=error)
                return
            logger.debug(
                "A batch of %d submits was refused (%s); each goes alone", len(batch), error
            )
            for item in batch:
                await self._send_batch([item])
            return
        except asyncio.CancelledError:
            for item in batch:
                item.answer.cancel()
            raise
        except Exception as error:  # noqa: BLE001 - each caller's call answers INTERNAL
            for item in batch:
                _settle(item.answer, error=error)
            return
        for item, result in zip(batch, submitted, strict=True):
            _settle(item.answer, result=result)


def _settle(
    answer: asyncio.Future[Submitted],
    *,
    result: Submitted | None = None,
    error: BaseException | None = None,
) -> None:
    if answer.done():
        return
    if error is not None:
        answer.set_exception(error)
    elif result is not None:
        answer.set_result(result)
