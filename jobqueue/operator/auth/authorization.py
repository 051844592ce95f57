"""Step 2: may this caller do this. One verb on one queue, asked with a SubjectAccessReview.

Every call maps to ``Access`` (a verb, a queue, the queue's namespace; see ``rules``),
and the API server's authorizers (RBAC, or whatever the cluster runs) decide whether the
caller's identity may perform that verb on the ``jobqueues/jobs`` subresource of that
JobQueue. Decisions are cached per identity and access for the cache TTL: revoking a
RoleBinding takes effect within that time.

A denial names the verb and the queue, so the person reading it knows what to ask their
platform team for. Each denial that comes fresh from the API server (not from the cache)
is logged at INFO: an audit trail whose rate the cache bounds.
"""

from __future__ import annotations

import logging

from jobqueue.errors import PermissionDeniedError
from jobqueue.operator.auth.cache import ExpiringCache
from jobqueue.operator.auth.model import Access, Decision, Identity
from jobqueue.operator.auth.reviews import Reviews
from jobqueue.resources import GROUP

logger = logging.getLogger(__name__)


class AccessReviewer:
    def __init__(
        self, reviews: Reviews, *, cache: ExpiringCache[tuple[Identity, Access], Decision]
    ) -> None:
        self._reviews = reviews
        self._cache = cache

    async def allowed(self, identity: Identity, access: Access) -> Decision:
        async def review() -> Decision:
            decision = await self._reviews.review_access(identity, access)
            if not decision.allowed:
                logger.info(
                    "Denied %s: %s.", identity.describe(), access.describe(),
                    extra={"user": identity.username, "verb": access.verb, "queue": access.queue},
                )  # fmt: skip
            return decision

        return await self._cache.get((identity, access), review)

    async def check(self, identity: Identity, access: Access) -> None:
        """Return if allowed; PermissionDeniedError naming the verb and the queue otherwise."""
        decision = await self.allowed(identity, access)
        if decision.allowed:
            return
        raise PermissionDeniedError(denial_message(identity, access, decision))


def denial_message(identity: Identity, access: Access, decision: Decision) -> str:
    if access.queue is None:
        needed = f"a ClusterRole with verb {access.verb!r} on jobqueues/jobs, bound cluster-wide"
    else:
        needed = (
            f"a Role with verb {access.verb!r} on jobqueues/jobs (resourceNames: {access.queue})"
            f" in namespace {access.namespace or '(cluster-wide)'}"
        )
    because = f"; the authorizer says: {decision.reason}" if decision.reason else ""
    return (
        f"{identity.username} may not {access.describe()}; this needs {needed} in API group "
        f"{GROUP}{because}"
    )
