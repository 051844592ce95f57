"""One bidirectional gRPC call that carries many requests, each answered by its id.

The worker's ``Report`` stream and the client's ``SubmitStream`` work alike: every
message carries an id chosen by the sender, the server answers each when it is done (in
any order), and one reader task hands each answer to whoever waits for its id. A message
on an open stream costs both sides about half of what a unary call does.

What a unary call would have raised, ``Exchange.ask`` raises too, so callers treat both
alike:

- an answer that carries an error code becomes an ``AioRpcError`` with that code and
  message;
- a stream that breaks or ends fails every request waiting on it with the error that
  ended it (UNAVAILABLE when the server simply ended it);
- no answer within the timeout is DEADLINE_EXCEEDED.

A request is never sent twice on one exchange. An answer may also come by another way
than the call itself (the worker's command stream carries answers to its reports):
``deliver`` hands it over, and exchanges that share an id counter (``ids``) never take an
answer meant for another.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar

import grpc
import grpc.aio


class _Request(Protocol):
    id: int


class _Answer(Protocol):
    @property
    def id(self) -> int: ...
    @property
    def error_code(self) -> int: ...
    @property
    def error_message(self) -> str: ...


RequestT = TypeVar("RequestT", bound=_Request)
AnswerT = TypeVar("AnswerT", bound=_Answer)

_STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}


def status_of(number: int) -> grpc.StatusCode:
    """The status code an answer's ``error_code`` carries by number (UNKNOWN if none is)."""
    return _STATUS_CODES.get(number, grpc.StatusCode.UNKNOWN)


def call_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    """An error shaped like the one a failed unary call raises."""
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


class Exchange(Generic[RequestT, AnswerT]):
    """One open call and the requests waiting for its answers; see the module docstring."""

    def __init__(
        self,
        call: grpc.aio.StreamStreamCall[RequestT, AnswerT],
        answer_type: type[AnswerT],
        *,
        name: str,
        ids: Iterator[int] | None = None,
    ) -> None:
        self.call = call
        self.name = name
        self._answer_type = answer_type
        self._ids = ids if ids is not None else itertools.count(1)
        self._waiting: dict[int, asyncio.Future[AnswerT]] = {}
        self._write_lock = asyncio.Lock()
        self._reader = asyncio.create_task(self._read(), name=f"{name} reader")
        self._finishing: asyncio.Task[None] | None = None

    @property
    def open(self) -> bool:
        """Whether new requests may go on this exchange."""
        return not self._reader.done() and self._finishing is None

    @property
    def waiting(self) -> int:
        """How many requests wait for their answer."""
        return len(self._waiting)

    async def ask(self, request: RequestT, timeout_s: float) -> AnswerT:
        """Send ``request`` (its id is set here) and wait for its answer."""
        request.id = message_id = next(self._ids)
        answer: asyncio.Future[AnswerT] = asyncio.get_running_loop().create_future()
        self._waiting[message_id] = answer
        try:
            async with asyncio.timeout(timeout_s):
                async with self._write_lock:
                    await self.call.write(request)
                reply = await answer
        except TimeoutError:
            raise call_error(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"no answer on the {self.name} within {timeout_s:g} s",
            ) from None
        except asyncio.InvalidStateError as error:
            # The call ended, or stopped taking requests, before the write: raise the
            # status it ended with. (A write that meets the end a moment later fails in
            # gRPC's core instead and comes out INTERNAL; see client._StreamedSubmits.)
            raise await self._ending_error(error) from error
        finally:
            self._waiting.pop(message_id, None)
        if reply.error_code:
            raise call_error(status_of(reply.error_code), reply.error_message)
        return reply

    def deliver(self, answer: AnswerT) -> None:
        """Hand over an answer that came by another way; one nobody waits for is dropped."""
        waiter = self._waiting.pop(answer.id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(answer)

    async def _ending_error(self, error: asyncio.InvalidStateError) -> grpc.aio.AioRpcError:
        """The error a request refused by a call that ended (or half-closed) stands for."""
        if self.call.done():
            code = await self.call.code()
            if code != grpc.StatusCode.OK:
                return call_error(code, await self.call.details())
        return call_error(grpc.StatusCode.UNAVAILABLE, str(error))

    def finish(self) -> None:
        """Take no new requests; those under way are still answered, then the call ends."""
        if self._finishing is None:
            self._finishing = asyncio.create_task(self._done_writing(), name=f"{self.name} end")

    def abandon(self) -> None:
        """End the call now; requests still waiting fail (the reader's ``finally``)."""
        self.call.cancel()
        self._reader.cancel()

    async def close(self) -> None:
        self.abandon()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader

    async def _done_writing(self) -> None:
        async with self._write_lock:
            with contextlib.suppress(asyncio.InvalidStateError, grpc.aio.AioRpcError):
                await self.call.done_writing()

    async def _read(self) -> None:
        failure: grpc.aio.AioRpcError
        try:
            while True:
                answer = await self.call.read()
                if not isinstance(answer, self._answer_type):  # grpc.aio.EOF
                    failure = call_error(
                        grpc.StatusCode.UNAVAILABLE, f"the server ended the {self.name}"
                    )
                    break
                self.deliver(answer)
        except grpc.aio.AioRpcError as error:
            failure = error
        except asyncio.CancelledError:
            failure = call_error(grpc.StatusCode.CANCELLED, f"the {self.name} was closed")
            raise
        finally:
            for waiter in self._waiting.values():
                if not waiter.done():
                    waiter.set_exception(failure)
            self._waiting.clear()
