"""Python job handlers that the workers of the operator tests register."""

from __future__ import annotations

import asyncio
from typing import Any


def add(a: int, b: int) -> int:
    return a + b


async def fail(message: str = "this handler always fails") -> Any:
    raise RuntimeError(message)


async def wait_forever() -> None:
    await asyncio.Event().wait()
