"""Step 4: the grpc.aio server interceptor that admits each call before its method runs.

For every call the interceptor looks up the method's rule (``rules``), and wraps the
method's handler so that, with the request in hand, it

1. authenticates the bearer token (UNAUTHENTICATED when missing or not accepted),
2. finds the queues the request touches and their namespaces (NOT_FOUND for an unknown
   job or queue, INVALID_ARGUMENT for a request that names none),
3. for worker calls, proves the pool on Register, or that the caller is who registered
   the worker id it names (``workers``),
4. checks the verb on each queue (PERMISSION_DENIED naming the verb and the queue),

and only then runs the method. A refused call therefore changes nothing. A method with
no rule is refused: a new method must be given one before anyone can call it.

The work of a step is skipped when its answer is cached (see ``cache``), so an admitted
call usually costs two dictionary look-ups.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from typing import Any, TypeVar, cast

import grpc
import grpc.aio

from jobqueue import metrics
from jobqueue.config import AuthSettings, split_list
from jobqueue.errors import JobQueueError, PermissionDeniedError
from jobqueue.operator.auth.authentication import TokenAuthenticator
from jobqueue.operator.auth.authorization import AccessReviewer
from jobqueue.operator.auth.cache import ExpiringCache
from jobqueue.operator.auth.directory import QueueDirectory
from jobqueue.operator.auth.model import Access, Identity
from jobqueue.operator.auth.reviews import Reviews
from jobqueue.operator.auth.rules import DEREGISTER, RULES, Rule, WorkerStep
from jobqueue.operator.auth.workers import Admission, WorkerRegistrations
from jobqueue.operator.rpc import RefusedMessage, abort, status_code

logger = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]
T = TypeVar("T")
# Quoted: RpcMethodHandler is generic only to type checkers, not at run time.
Continuation = Callable[
    [grpc.HandlerCallDetails], Awaitable["grpc.RpcMethodHandler[Any, Any] | None"]
]


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self,
        authenticator: TokenAuthenticator,
        access: AccessReviewer,
        directory: QueueDirectory,
        registrations: WorkerRegistrations,
    ) -> None:
        self.authenticator = authenticator
        self.access = access
        self.directory = directory
        self.registrations = registrations

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # an unknown method: gRPC answers UNIMPLEMENTED
        method: str = handler_call_details.method
        rule = RULES.get(method)
        # The stubs type handlers as synchronous; a grpc.aio server's are coroutines.
        if handler.unary_unary is not None:
            unary = cast(Callable[[Any, Context], Awaitable[Any]], handler.unary_unary)
            return grpc.unary_unary_rpc_method_handler(
                self._guard_unary(method, rule, unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            stream = cast(Callable[[Any, Context], AsyncIterator[Any]], handler.unary_stream)
            return grpc.unary_stream_rpc_method_handler(
                self._guard_stream(method, rule, stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            bidi = cast(
                Callable[[AsyncIterator[Any], Context], AsyncIterator[Any]], handler.stream_stream
            )
            return grpc.stream_stream_rpc_method_handler(
                self._guard_bidi(method, rule, bidi),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        # The contract has no client-streaming methods; one that appears is refused.
        return grpc.unary_unary_rpc_method_handler(self._refuse_unknown(method))

    def _guard_unary(
        self, method: str, rule: Rule | None, behaviour: Callable[[Any, Context], Awaitable[Any]]
    ) -> Callable[[Any, Context], Awaitable[Any]]:
        async def guarded(request: Any, context: Context) -> Any:
            admission = await self._admit(method, rule, request, context)
            try:
                response = await behaviour(request, context)
            except BaseException:
                if admission is not None:
                    self.registrations.undo(admission)
                raise
            self._after(method, admission, request)
            return response

        return guarded

    def _guard_stream(
        self,
        method: str,
        rule: Rule | None,
        behaviour: Callable[[Any, Context], AsyncIterator[Any]],
    ) -> Callable[[Any, Context], AsyncIterator[Any]]:
        async def guarded(request: Any, context: Context) -> AsyncIterator[Any]:
            await self._admit(method, rule, request, context)
            async for response in behaviour(request, context):
                yield response

        return guarded

    def _guard_bidi(
        self,
        method: str,
        rule: Rule | None,
        behaviour: Callable[[AsyncIterator[Any], Context], AsyncIterator[Any]],
    ) -> Callable[[AsyncIterator[Any], Context], AsyncIterator[Any]]:
        """Admit every message of a bidirectional stream, as if each were a unary call.

        What each message names (the worker, its queue) is checked on every message. A
        refused message ends the stream with the refusal's status before the method sees
        it, and the token is the stream's, checked once when the first message arrives
        (like a server stream's, it is not checked again when it expires later).

        A stream whose method answers each message itself (``Rule.answers_each``) is
        treated as the unary calls it stands for: the token is checked on every message
        too (from the cache, as a unary call's is), and a refused message reaches the
        method as ``RefusedMessage``, to be answered while the stream goes on.
        """
        if rule is not None and rule.answers_each:
            return self._guard_each(method, rule, behaviour)

        async def guarded(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
            async def admitted() -> AsyncIterator[Any]:
                identity: Identity | None = None
                async for request in requests:
                    if identity is None:
                        identity = await self._refusing(method, context, self._identify(context))
                    check = self._authorize(method, identity, rule, request)
                    await self._refusing(method, context, check)
                    yield request

            async for response in behaviour(admitted(), context):
                yield response

        return guarded

    def _guard_each(
        self,
        method: str,
        rule: Rule,
        behaviour: Callable[[AsyncIterator[Any], Context], AsyncIterator[Any]],
    ) -> Callable[[AsyncIterator[Any], Context], AsyncIterator[Any]]:
        name = method.rpartition("/")[2]

        async def guarded(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
            async def admitted() -> AsyncIterator[Any]:
                async for request in requests:
                    try:
                        identity = await self._identify(context)
                        await self._authorize(method, identity, rule, request)
                    except JobQueueError as error:
                        metrics.GRPC_CALLS_REFUSED.labels(name, status_code(error).name).inc()
                        yield RefusedMessage(request, error)
                    else:
                        yield request

            async for response in behaviour(admitted(), context):
                yield response

        return guarded

    def _refuse_unknown(self, method: str) -> Callable[[Any, Context], Awaitable[Any]]:
        async def refuse(request: Any, context: Context) -> Any:
            await self._admit(method, None, request, context)

        return refuse

    def _after(self, method: str, admission: Admission | None, request: Any) -> None:
        if admission is not None:
            self.registrations.confirm(admission)
        elif method == DEREGISTER:
            self.registrations.forget(request.worker_id)

    async def _admit(
        self, method: str, rule: Rule | None, request: Any, context: Context
    ) -> Admission | None:
        """Authenticate and authorize the call; abort it with the right status otherwise."""

        async def admit() -> Admission | None:
            identity = await self._identify(context)
            return await self._authorize(method, identity, rule, request)

        return await self._refusing(method, context, admit())

    async def _identify(self, context: Context) -> Identity:
        return await self.authenticator.authenticate(context.invocation_metadata() or ())

    async def _refusing(self, method: str, context: Context, check: Awaitable[T]) -> T:
        """``check``'s answer; a refusal aborts the call with its status (and is counted)."""
        try:
            return await check
        except JobQueueError as error:
            name = method.rpartition("/")[2]
            metrics.GRPC_CALLS_REFUSED.labels(name, status_code(error).name).inc()
            await abort(context, error)
        except Exception as error:  # noqa: BLE001 - abort() logs it and answers INTERNAL
            # A fault of the operator's own: INTERNAL, with the traceback in its log.
            metrics.GRPC_CALLS_REFUSED.labels(method.rpartition("/")[2], "INTERNAL").inc()
            await abort(context, error)

    async def _authorize(
        self, method: str, identity: Identity, rule: Rule | None, request: Any
    ) -> Admission | None:
        if rule is None:
            raise PermissionDeniedError(f"{method} has no access rule; nobody may call it")
        if rule.worker is WorkerStep.REGISTERED:
            registration = self.registrations.of(identity, request.worker_id)
            queues: Sequence[str] | None = [registration.queue]
        else:
            assert rule.queues is not None, "a rule without a worker step names its queues"
            queues = await rule.queues(request, self.directory)

        for access in await self._accesses(rule.verb, queues):
            await self.access.check(identity, access)
        if rule.worker is WorkerStep.REGISTER:
            return await self.registrations.admit(identity, request)
        return None

    async def _accesses(self, verb: str, queues: Sequence[str] | None) -> list[Access]:
        if queues is None:
            return [Access(verb, None)]
        return [Access(verb, queue, await self.directory.namespace_of(queue)) for queue in queues]


def build_interceptor(
    settings: AuthSettings,
    reviews: Reviews,
    directory: QueueDirectory,
    known_workers: Callable[[], Collection[str]],
) -> AuthInterceptor:
    """The interceptor for ``operator.auth.mode: kubernetes``, with its caches."""
    authenticator = TokenAuthenticator(
        reviews,
        audiences=split_list(settings.audiences),
        cache=ExpiringCache(settings.cache_ttl_s, settings.cache_size),
    )
    access = AccessReviewer(reviews, cache=ExpiringCache(settings.cache_ttl_s, settings.cache_size))
    registrations = WorkerRegistrations(
        reviews,
        directory,
        unbound_workers=split_list(settings.unbound_workers),
        known_workers=known_workers,
    )
    return AuthInterceptor(authenticator, access, directory, registrations)
