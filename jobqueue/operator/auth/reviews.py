"""The questions the operator asks the Kubernetes API server, behind one Protocol.

``Reviews`` is the seam: ``KubernetesReviews`` asks a real API server (TokenReview,
SubjectAccessReview, reading a pod and a QueueWorkerPool); unit tests of the auth logic
answer from a table. The Kubernetes client blocks, so its calls run on a small thread
pool of their own, where a slow API server cannot starve the event loop's default
executor that other parts of the operator use.

Failures of these calls are the operator's problem, not the caller's: the API server
unreachable, or the operator lacking the RBAC to ask (``create`` on tokenreviews and
subjectaccessreviews, ``get`` on pods and queueworkerpools). They become
``UnavailableError`` (the caller may retry) and are logged, never mistaken for the
caller's token being bad or its access denied.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import urllib3
from kubernetes import client as kube_client

from jobqueue import metrics
from jobqueue.errors import UnavailableError
from jobqueue.operator.auth.model import Access, Decision, Identity, PodFacts, TokenVerdict
from jobqueue.resources import GROUP, JOB_QUEUE_PLURAL, VERSION, WORKER_POOL_PLURAL

logger = logging.getLogger(__name__)

T = TypeVar("T")

# The subresource every jobqueue verb is checked on: the jobs of a JobQueue.
JOBS_SUBRESOURCE = "jobs"
# Seconds one call to the API server may take before the caller is told to retry.
REQUEST_TIMEOUT_S = 5.0
# Threads that run the blocking Kubernetes client; reviews are short, and cached.
REVIEW_THREADS = 4


class Reviews(Protocol):
    async def review_token(self, token: str, audiences: Sequence[str]) -> TokenVerdict: ...

    async def review_access(self, identity: Identity, access: Access) -> Decision: ...

    async def read_pod(self, namespace: str, name: str) -> PodFacts | None: ...

    async def pool_queue(self, namespace: str, pool: str) -> str | None:
        """The queue a QueueWorkerPool serves; None if there is no such pool."""
        ...


class KubernetesReviews:
    def __init__(self, api_client: kube_client.ApiClient) -> None:
        self._authentication = kube_client.AuthenticationV1Api(api_client)
        self._authorization = kube_client.AuthorizationV1Api(api_client)
        self._core = kube_client.CoreV1Api(api_client)
        self._custom = kube_client.CustomObjectsApi(api_client)
        self._threads = concurrent.futures.ThreadPoolExecutor(
            REVIEW_THREADS, thread_name_prefix="kubernetes-review"
        )
        self._failing = False  # the last call failed: an outage is under way

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)

    async def _call(self, review: str, function: Callable[[], T]) -> T:
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            answer = await loop.run_in_executor(self._threads, function)
        except kube_client.ApiException as error:
            self._failed(
                f"the API server refused its {review} (HTTP {error.status} {error.reason})"
            )
            raise UnavailableError(
                f"the operator cannot check credentials now: the API server refused its "
                f"{review} (HTTP {error.status})"
            ) from error
        except urllib3.exceptions.HTTPError as error:
            self._failed(f"the API server is unreachable ({error})")
            raise UnavailableError(
                f"the operator cannot check credentials now: the API server is unreachable "
                f"({review})"
            ) from error
        finally:
            metrics.AUTH_REVIEW_DURATION.labels(review).observe(time.perf_counter() - started)
        if self._failing:
            self._failing = False
            logger.info("The API server answers the operator's reviews again.")
        return answer

    def _failed(self, problem: str) -> None:
        # Once per outage: while it lasts, every call would say the same.
        if not self._failing:
            self._failing = True
            logger.warning(
                "Callers cannot be checked: %s. Calls get UNAVAILABLE until it answers; if it "
                "refuses, check the operator's RBAC (tokenreviews, subjectaccessreviews, pods, "
                "queueworkerpools).",
                problem,
            )

    async def review_token(self, token: str, audiences: Sequence[str]) -> TokenVerdict:
        body = kube_client.V1TokenReview(
            spec=kube_client.V1TokenReviewSpec(token=token, audiences=list(audiences) or None)
        )
        create = functools.partial(
            self._authentication.create_token_review, body, _request_timeout=REQUEST_TIMEOUT_S
        )
        status = (await self._call("TokenReview", create)).status
        if status is None or not status.authenticated or status.user is None:
            reason = (status.error if status is not None else None) or "the token was not accepted"
            return TokenVerdict(None, reason)
        user = status.user
        identity = Identity.of(
            user.username or "", user.uid or "", user.groups or (), user.extra or {}
        )
        return TokenVerdict(identity)

    async def review_access(self, identity: Identity, access: Access) -> Decision:
        attributes = kube_client.V1ResourceAttributes(
            group=GROUP,
            version=VERSION,
            resource=JOB_QUEUE_PLURAL,
            subresource=JOBS_SUBRESOURCE,
            verb=access.verb,
            namespace=access.namespace or None,
            name=access.queue or None,
        )
        body = kube_client.V1SubjectAccessReview(
            spec=kube_client.V1SubjectAccessReviewSpec(
                user=identity.username,
                uid=identity.uid or None,
                groups=list(identity.groups) or None,
                extra={key: list(values) for key, values in identity.extra} or None,
                resource_attributes=attributes,
            )
        )
        create = functools.partial(
            self._authorization.create_subject_access_review,
            body,
            _request_timeout=REQUEST_TIMEOUT_S,
        )
        status = (await self._call("SubjectAccessReview", create)).status
        if status is None:
            return Decision(False, "the authorizer gave no answer")
        reason = status.reason or status.evaluation_error or ""
        return Decision(bool(status.allowed) and not status.denied, reason)

    async def read_pod(self, namespace: str, name: str) -> PodFacts | None:
        read = functools.partial(
            self._core.read_namespaced_pod, name, namespace, _request_timeout=REQUEST_TIMEOUT_S
        )
        pod: Any = await self._call("pod read", _none_if_missing(read))
        if pod is None:
            return None
        return PodFacts(
            uid=pod.metadata.uid or "",
            service_account=pod.spec.service_account_name or "",
            labels=dict(pod.metadata.labels or {}),
        )

    async def pool_queue(self, namespace: str, pool: str) -> str | None:
        read = functools.partial(
            self._custom.get_namespaced_custom_object,
            GROUP, VERSION, namespace, WORKER_POOL_PLURAL, pool,
            _request_timeout=REQUEST_TIMEOUT_S,
        )  # fmt: skip
        body: Any = await self._call("QueueWorkerPool read", _none_if_missing(read))
        if not isinstance(body, dict):
            return None
        queue = (body.get("spec") or {}).get("queue")
        return queue if isinstance(queue, str) else None


def _none_if_missing(function: Callable[[], T]) -> Callable[[], T | None]:
    """``function``, answering None where the API server answers 404 Not Found."""

    def call() -> T | None:
        try:
            return function()
        except kube_client.ApiException as error:
            if error.status == 404:
                return None
            raise

    return call
