"""The review cache: answers expire, the oldest go first, concurrent misses share a review."""

from __future__ import annotations

import asyncio

import pytest

from jobqueue.errors import UnavailableError
from jobqueue.operator.auth.cache import ExpiringCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Counting:
    """A review that answers its call number, optionally after a gate opens."""

    def __init__(self) -> None:
        self.calls = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self) -> int:
        self.calls += 1
        await self.gate.wait()
        return self.calls


async def test_an_answer_is_reused_until_its_ttl_passes() -> None:
    clock, review = Clock(), Counting()
    cache: ExpiringCache[str, int] = ExpiringCache(10.0, 100, clock)

    assert await cache.get("token", review) == 1
    clock.now += 9.9
    assert await cache.get("token", review) == 1
    clock.now += 0.2
    assert await cache.get("token", review) == 2


async def test_a_shorter_ttl_for_one_answer_wins_and_zero_keeps_nothing() -> None:
    clock, review = Clock(), Counting()
    cache: ExpiringCache[str, int] = ExpiringCache(10.0, 100, clock)

    await cache.get("expiring", review, lambda _: 2.0)
    clock.now += 2.5
    assert await cache.get("expiring", review) == 2

    uncached: ExpiringCache[str, int] = ExpiringCache(0.0, 100, clock)
    await uncached.get("key", review)
    assert len(uncached) == 0


async def test_the_least_recently_used_answer_is_dropped_when_full() -> None:
    cache: ExpiringCache[str, int] = ExpiringCache(60.0, 2, Clock())
    review = Counting()
    await cache.get("a", review)
    await cache.get("b", review)
    await cache.get("a", review)  # a is used again: b is now the oldest
    await cache.get("c", review)

    assert cache.peek("a") == 1
    assert cache.peek("b") is None
    assert len(cache) == 2


async def test_concurrent_misses_share_one_review_and_survive_a_caller_going_away() -> None:
    cache: ExpiringCache[str, int] = ExpiringCache(60.0, 100, Clock())
    review = Counting()
    review.gate.clear()

    impatient = asyncio.create_task(cache.get("token", review), name="impatient caller")
    patient = [asyncio.create_task(cache.get("token", review), name=f"c{n}") for n in range(5)]
    await asyncio.sleep(0)
    impatient.cancel()
    review.gate.set()

    assert await asyncio.gather(*patient) == [1] * 5
    assert review.calls == 1
    with pytest.raises(asyncio.CancelledError):
        await impatient


async def test_a_failed_review_is_not_kept() -> None:
    cache: ExpiringCache[str, int] = ExpiringCache(60.0, 100, Clock())
    attempts = 0

    async def flaky() -> int:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise UnavailableError("the API server is away")
        return attempts

    with pytest.raises(UnavailableError):
        await cache.get("token", flaky)
    assert await cache.get("token", flaky) == 2
