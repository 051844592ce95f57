"""What every gRPC method of the operator shares: error codes and call metrics.

A servicer method raises the project's own errors; ``handled`` turns them into the gRPC
status a client can act on (``NotFoundError`` → NOT_FOUND, bad input → INVALID_ARGUMENT,
a wrong state → FAILED_PRECONDITION, a dependency down → UNAVAILABLE) with the error's
message, and times the call. An unexpected exception is logged with its traceback and
answered INTERNAL without leaking details.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import grpc
import grpc.aio

from jobqueue import errors, metrics

logger = logging.getLogger(__name__)

R = TypeVar("R")
S = TypeVar("S")

# The most specific class wins: the table is searched along the error's MRO.
CODES: Mapping[type[errors.JobQueueError], grpc.StatusCode] = {
    errors.NotFoundError: grpc.StatusCode.NOT_FOUND,
    errors.LimitExceededError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.InvalidInputError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.ConflictError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.UnauthenticatedError: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
    errors.PermanentError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.UnavailableError: grpc.StatusCode.UNAVAILABLE,
    errors.TemporaryError: grpc.StatusCode.UNAVAILABLE,
}


@dataclass(frozen=True)
class RefusedMessage:
    """A message of a stream that answers each message itself, refused before its method.

    The auth interceptor hands the method this in place of a message it did not admit
    (see ``Rule.answers_each``); the method answers it with ``error`` and goes on, where
    any other stream would end with the refusal.
    """

    request: Any
    error: errors.JobQueueError


def status_code(error: errors.JobQueueError) -> grpc.StatusCode:
    for klass in type(error).__mro__:
        code = CODES.get(klass)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


async def abort(context: grpc.aio.ServicerContext[Any, Any], error: Exception) -> NoReturn:
    if isinstance(error, errors.JobQueueError):
        await context.abort(status_code(error), str(error))
    logger.error("Unexpected error in a gRPC call.", exc_info=error)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error; the operator log has details")


def handled(
    method: Callable[[S, Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[R]],
) -> Callable[[S, Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[R]]:
    """Wrap a unary method: map errors to status codes, record its duration."""
    name = method.__name__

    @functools.wraps(method)
    async def wrapper(self: S, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> R:
        async with _answered(name, context):
            response = await method(self, request, context)
        return response

    return wrapper


def handled_stream(
    method: Callable[[S, Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[R]],
) -> Callable[[S, Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[R]]:
    """Wrap a streaming method the same way (its duration is the stream's life)."""
    name = method.__name__

    @functools.wraps(method)
    async def wrapper(
        self: S, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[R]:
        async with _answered(name, context):
            async for item in method(self, request, context):
                yield item

    return wrapper


@contextlib.asynccontextmanager
async def _answered(name: str, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[None]:
    """Turn what the block raises into the call's status; time the block."""
    started = time.perf_counter()
    code = "OK"
    try:
        yield
    except errors.JobQueueError as error:
        code = status_code(error).name
        await abort(context, error)
    except Exception as error:
        if _is_abort(error):
            raise
        code = "INTERNAL"
        await abort(context, error)
    finally:
        metrics.GRPC_CALL_DURATION.labels(name, code).observe(time.perf_counter() - started)


def _is_abort(error: Exception) -> bool:
    # context.abort() ends a call by raising AbortError; it must pass through untouched.
    return isinstance(error, grpc.aio.AbortError)
