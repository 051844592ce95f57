"""The values the auth steps pass around: the caller, the access asked, the answers.

``Identity`` is a caller as Kubernetes knows it: the user a TokenReview answered for a
token. Its fields are those of the review's ``status.user``, kept whole because a
SubjectAccessReview must be asked about the same user (groups and extras included: an
authorizer other than RBAC may decide on them). ServiceAccount users are named
``system:serviceaccount:<namespace>:<name>``; a token bound to a pod also carries the
pod's name and uid as extras, which is how the operator knows which pod a worker is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
POD_UID_EXTRA = "authentication.kubernetes.io/pod-uid"


@dataclass(frozen=True)
class PodRef:
    namespace: str
    name: str
    uid: str


@dataclass(frozen=True)
class Identity:
    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    # Sorted (key, values) pairs, so that an Identity is hashable and compares by value.
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @classmethod
    def of(
        cls,
        username: str,
        uid: str = "",
        groups: Sequence[str] = (),
        extra: Mapping[str, Sequence[str]] | None = None,
    ) -> Identity:
        pairs = tuple(sorted((key, tuple(values)) for key, values in (extra or {}).items()))
        return cls(username, uid, tuple(groups), pairs)

    def extra_value(self, key: str) -> str | None:
        """The single value of an extra, or None if it is absent or ambiguous."""
        for name, values in self.extra:
            if name == key:
                return values[0] if len(values) == 1 else None
        return None

    @property
    def service_account(self) -> tuple[str, str] | None:
        """(namespace, name) of a ServiceAccount user; None for any other user."""
        if not self.username.startswith(SERVICE_ACCOUNT_PREFIX):
            return None
        namespace, _, name = self.username.removeprefix(SERVICE_ACCOUNT_PREFIX).partition(":")
        return (namespace, name) if namespace and name else None

    @property
    def pod(self) -> PodRef | None:
        """The pod a ServiceAccount token is bound to; None for a token not bound to one."""
        account = self.service_account
        name, uid = self.extra_value(POD_NAME_EXTRA), self.extra_value(POD_UID_EXTRA)
        if account is None or not name or not uid:
            return None
        return PodRef(account[0], name, uid)

    def describe(self) -> str:
        """The user, and the pod when there is one: for messages and logs."""
        pod = self.pod
        return f"{self.username} (pod {pod.namespace}/{pod.name})" if pod else self.username


@dataclass(frozen=True)
class Access:
    """One verb on the jobs of one queue; ``queue`` None means every queue (cluster-wide)."""

    verb: str
    queue: str | None
    namespace: str = ""  # the queue's; "" for a cluster-wide check

    def describe(self) -> str:
        if self.queue is None:
            return f"{self.verb} on the jobs of every queue (cluster-wide)"
        where = f"namespace {self.namespace}" if self.namespace else "no namespace"
        return f"{self.verb} on the jobs of queue {self.queue} ({where})"


@dataclass(frozen=True)
class TokenVerdict:
    """A TokenReview's answer: the identity, or why the token was not accepted."""

    identity: Identity | None
    reason: str = ""


@dataclass(frozen=True)
class Decision:
    """A SubjectAccessReview's answer, with the authorizer's reason when it gave one."""

    allowed: bool
    reason: str = ""


@dataclass(frozen=True)
class PodFacts:
    """What the operator reads of a worker's pod."""

    uid: str
    service_account: str
    labels: Mapping[str, str] = field(default_factory=dict)
