"""Waiting for state that has no event to await: a database row, a Kubernetes object.

Tests wait on events where there is one; where the only way to see a change is to read
it again (another process's write), these poll a predicate often, within a deadline, so a
test never sleeps for a fixed time and never hangs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

POLL_INTERVAL_S = 0.05  # seconds between two reads


async def eventually(
    predicate: Callable[[], Awaitable[bool]], timeout_s: float = 20.0, what: str = "condition"
) -> None:
    """Return once ``predicate()`` holds; TimeoutError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not hold within {timeout_s:g} s")
        await asyncio.sleep(POLL_INTERVAL_S)


def eventually_sync(
    read: Callable[[], T | None], timeout_s: float = 20.0, what: str = "condition"
) -> T:
    """Call ``read`` until it returns something other than None or False, and return that."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = read()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not hold within {timeout_s:g} s")
        time.sleep(POLL_INTERVAL_S)
