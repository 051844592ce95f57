"""Who may call the operator's gRPC API, and what each caller may do there.

Callers are Kubernetes identities, so the cluster's own machinery decides and the
platform team grants access with the Roles and RoleBindings it already manages:

1. ``authentication``: the bearer token of each call (a ServiceAccount token, a
   kubeconfig user's token) is verified with a TokenReview; the answer is the caller's
   ``Identity``.
2. ``authorization``: each call is one verb on the JobQueue it touches, checked with a
   SubjectAccessReview on the ``jobqueues/jobs`` subresource in the queue's namespace.
   ``rules`` holds the table of methods, verbs and how to find the queue of a request
   (from its fields, or from the job or worker it names; ``directory`` looks those up).
3. ``workers``: a worker must also be one of the pool it claims to serve: its token is
   bound to a pod, and that pod carries the pool's labels. Later calls on a registered
   worker must come from the identity that registered it.
4. ``interceptor``: the grpc.aio server interceptor that runs the three steps before a
   method runs, so a refused call changes nothing.

Both reviews are cached briefly (``operator.auth.cache_ttl_s``): a revoked token or
RoleBinding stops working within that time. The exact table of verbs and the example
Roles live in docs/security.md and manifests/examples/rbac/.
"""

from __future__ import annotations

from jobqueue.operator.auth.authentication import TokenAuthenticator
from jobqueue.operator.auth.authorization import AccessReviewer
from jobqueue.operator.auth.directory import QueueDirectory, StoreDirectory
from jobqueue.operator.auth.interceptor import AuthInterceptor, build_interceptor
from jobqueue.operator.auth.model import Access, Identity
from jobqueue.operator.auth.reviews import KubernetesReviews, Reviews

__all__ = [
    "Access",
    "AccessReviewer",
    "AuthInterceptor",
    "Identity",
    "KubernetesReviews",
    "QueueDirectory",
    "Reviews",
    "StoreDirectory",
    "TokenAuthenticator",
    "build_interceptor",
]
