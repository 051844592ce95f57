"""Token buckets for queue rate limits: the shared contract and the in-process fallback.

A queue's rate limit is a token bucket: it holds up to ``burst`` tokens, refills at
``rate_per_s``, and each dispatched job takes one. ``take_tokens`` grants between 0 and
``wanted`` tokens at once, so the scheduler claims only as many jobs as it was granted.
Tokens are whole; the fraction that has refilled so far stays in the bucket.

``RedisState`` keeps the buckets in Redis so every operator replica draws from the same
one. ``LocalTokenBucket`` keeps them in this process, for while Redis is down. The risk of
the fallback: each replica then has a bucket of its own, so with N replicas a queue may
dispatch up to N times its limit (N bursts, then N times the rate) until Redis is back;
and when it is back, its bucket may be full again, so one more burst can follow.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from jobqueue.errors import InvalidInputError


class TokenBucket(Protocol):
    async def take_tokens(self, queue: str, wanted: int, rate_per_s: float, burst: int) -> int:
        """Grant up to ``wanted`` tokens of ``queue``'s bucket now; return how many."""
        ...


def check_bucket_arguments(wanted: int, rate_per_s: float, burst: int) -> None:
    if wanted < 0:
        raise InvalidInputError(f"rate limit: cannot take {wanted} tokens")
    if not rate_per_s > 0 or math.isinf(rate_per_s):
        raise InvalidInputError(f"rate limit: the rate must be a positive number, not {rate_per_s}")
    if burst < 1:
        raise InvalidInputError(f"rate limit: the burst must be at least 1, not {burst}")


@dataclass(frozen=True)
class BucketLevel:
    tokens: float
    at_s: float  # clock reading of this level, seconds


def refill(level: BucketLevel, now_s: float, rate_per_s: float, burst: int) -> BucketLevel:
    """The bucket at ``now_s``. A clock that went back adds nothing rather than taking away."""
    if now_s <= level.at_s:
        return BucketLevel(min(level.tokens, burst), level.at_s)
    tokens = min(float(burst), level.tokens + (now_s - level.at_s) * rate_per_s)
    return BucketLevel(tokens, now_s)


class LocalTokenBucket:
    """Token buckets of this process only: the fallback while Redis is unavailable.

    Same ``take_tokens`` as ``RedisState``; ``clock`` returns seconds (injectable for
    tests). Not shared between replicas: see the module docstring for what that risks.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._levels: dict[str, BucketLevel] = {}

    async def take_tokens(self, queue: str, wanted: int, rate_per_s: float, burst: int) -> int:
        return self.take_tokens_now(queue, wanted, rate_per_s, burst)

    def take_tokens_now(self, queue: str, wanted: int, rate_per_s: float, burst: int) -> int:
        """``take_tokens`` without the coroutine, for callers outside the event loop."""
        check_bucket_arguments(wanted, rate_per_s, burst)
        now_s = self._clock()
        level = self._levels.get(queue) or BucketLevel(float(burst), now_s)
        level = refill(level, now_s, rate_per_s, burst)

        granted = min(wanted, math.floor(level.tokens))
        self._levels[queue] = BucketLevel(level.tokens - granted, level.at_s)
        return granted
