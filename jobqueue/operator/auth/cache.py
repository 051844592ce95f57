"""A small cache for review answers: entries expire, the least recently used go first.

Reviews are network calls to the API server, and a busy client makes many calls with one
token, so both answers are kept for a short time. Concurrent misses on one key share a
single review instead of sending one each: a hundred calls arriving together with a new
token cost one TokenReview. Failures (the API server unreachable) are not kept: the
next call asks again.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ExpiringCache(Generic[K, V]):
    """Values must not be None: None is what ``peek`` answers for a missing key."""

    def __init__(
        self,
        ttl_s: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s  # seconds; 0 keeps nothing
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()  # key -> (expiry, value)
        self._pending: dict[K, asyncio.Task[V]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def peek(self, key: K) -> V | None:
        """The live value for ``key``, without computing one."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires_at, value = entry
        if expires_at <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    async def get(
        self,
        key: K,
        compute: Callable[[], Awaitable[V]],
        ttl_s: Callable[[V], float] | None = None,
    ) -> V:
        """The cached value, or ``compute()``'s, kept for ``ttl_s(value)`` (at most the TTL).

        The review runs in a task of its own, so a caller that goes away (its client hung
        up) does not cancel it for the others waiting on the same key.
        """
        value = self.peek(key)
        if value is not None:
            return value
        task = self._pending.get(key)
        if task is None:
            task = asyncio.create_task(_awaited(compute), name="auth-review")
            self._pending[key] = task
            task.add_done_callback(lambda done: self._settle(key, done, ttl_s))
        return await asyncio.shield(task)

    def _settle(self, key: K, task: asyncio.Task[V], ttl_s: Callable[[V], float] | None) -> None:
        del self._pending[key]
        if task.cancelled() or task.exception() is not None:
            return
        value = task.result()
        self._put(key, value, min(self.ttl_s, ttl_s(value)) if ttl_s else self.ttl_s)

    def _put(self, key: K, value: V, keep_s: float) -> None:
        if keep_s <= 0:
            return
        self._entries[key] = (self._clock() + keep_s, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()


async def _awaited(compute: Callable[[], Awaitable[V]]) -> V:
    return await compute()
