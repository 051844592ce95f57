"""The worker's link to its operator: the channel, the registered session, and backoff.

A worker talks to one operator address over one gRPC channel for its whole life; gRPC
re-establishes the TCP connection underneath. What the worker itself tracks is the
*session*: the answer to its latest ``Register``, which is valid until a call on it fails
(the operator restarted and forgot the worker, or cannot be reached). ``Link`` holds the
current session and is the one place where "the operator is gone" is decided, so the
stream, the reporters and the heartbeat all see one outage, not three: each of them
calls ``Link.lose`` with the session it used, and only the first loss of the current
session counts. The connection loop in ``runtime`` then registers again with backoff.

The channel's own reconnect backoff is tightened to the worker's policy (0.1 s to 5 s):
gRPC's default grows to 120 s, which would keep the worker away from a restarted
operator long after it came back.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

import grpc
import grpc.aio

# The codes after which the same call cannot succeed by trying again later: the worker
# is misconfigured (or the operator is too old), and only a person can fix that.
PERMANENT_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
    }
)


def is_temporary(error: grpc.aio.AioRpcError) -> bool:
    """Whether a failed call may succeed after a reconnect.

    Everything but ``PERMANENT_CODES`` counts: UNAVAILABLE and CANCELLED (the operator
    went away mid-call), DEADLINE_EXCEEDED, and NOT_FOUND or FAILED_PRECONDITION (a
    restarted operator does not know this worker until it registers again).
    """
    return error.code() not in PERMANENT_CODES


def describe(error: grpc.aio.AioRpcError) -> str:
    """``UNAVAILABLE: connection refused``, for logs and error messages."""
    return f"{error.code().name}: {error.details() or 'no details'}"


def channel_options(backoff: BackoffPolicy) -> list[tuple[str, int]]:
    """Channel arguments that keep gRPC's reconnects as eager as the worker's own."""
    initial_ms = max(1, int(backoff.initial_s * 1000))
    return [
        ("grpc.initial_reconnect_backoff_ms", initial_ms),
        ("grpc.min_reconnect_backoff_ms", initial_ms),
        ("grpc.max_reconnect_backoff_ms", max(initial_ms, int(backoff.cap_s * 1000))),
    ]


@dataclass(frozen=True)
class BackoffPolicy:
    """Exponential backoff with jitter: doubling from ``initial_s`` up to ``cap_s``."""

    initial_s: float = 0.1  # seconds
    cap_s: float = 5.0  # seconds

    def delay_s(self, failures: int) -> float:
        """The wait before the next try after ``failures`` consecutive failures (>= 1).

        Half the delay is fixed and half is random, so a fleet of workers that lost the
        same operator does not come back in one wave, yet none waits much less than the
        policy says.
        """
        ceiling = min(self.cap_s, self.initial_s * 2.0 ** max(0, failures - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)


@dataclass(frozen=True)
class Session:
    """One successful registration: what the operator told the worker, and when."""

    number: int  # counts registrations in this process, from 1
    operator_id: str
    heartbeat_interval_s: float
    lease_s: float


class Link:
    """The current session, if any, and the signal that it was lost."""

    def __init__(self) -> None:
        self._session: Session | None = None
        self._online = asyncio.Event()
        self._lost = asyncio.Event()
        self.lost_reason = ""

    @property
    def session(self) -> Session | None:
        """The session calls may use now; None while the worker is not registered."""
        return self._session if self._online.is_set() else None

    def establish(self, session: Session) -> None:
        self._session = session
        self.lost_reason = ""
        self._lost.clear()
        self._online.set()

    def lose(self, session: Session, reason: str) -> bool:
        """Mark ``session`` as lost; False if it already was (or was replaced)."""
        if self.session is not session:
            return False
        self._online.clear()
        self.lost_reason = reason
        self._lost.set()
        return True

    async def online(self) -> Session:
        """Wait for a registered session and return it."""
        while True:
            await self._online.wait()
            if self._session is not None and self._online.is_set():
                return self._session

    async def wait_lost(self) -> None:
        await self._lost.wait()
