"""The operator's loop quiets only the Kubernetes requests that fail because it stops."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from jobqueue.operator.main import quiet_abandoned_requests


class RecordingLoop(asyncio.SelectorEventLoop):
    """A loop whose default handler records what reaches it instead of logging."""

    def __init__(self) -> None:
        super().__init__()
        self.reported: list[dict[str, Any]] = []

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        self.reported.append(context)


@pytest.fixture
def loop() -> Iterator[RecordingLoop]:
    loop = RecordingLoop()
    yield loop
    loop.close()


def failed_task(loop: asyncio.AbstractEventLoop, error: BaseException) -> dict[str, Any]:
    """The context asyncio gives its handler for a task whose failure nobody awaited."""
    future: asyncio.Future[None] = loop.create_future()
    future.set_exception(error)
    future.exception()  # retrieved here, so its own collection logs nothing
    return {"message": "Task exception was never retrieved", "exception": error, "future": future}


@pytest.mark.parametrize(
    ("stopping", "error", "reported"),
    [
        (True, aiohttp.ClientConnectionError("Connection closed"), False),
        (False, aiohttp.ClientConnectionError("Connection closed"), True),
        (True, ValueError("a bug, stopping or not"), True),
    ],
)
def test_only_requests_failing_at_the_stop_are_kept_from_the_error_log(
    loop: RecordingLoop, stopping: bool, error: BaseException, reported: bool
) -> None:
    handle = quiet_abandoned_requests(lambda: stopping)
    context = failed_task(loop, error)

    handle(loop, context)

    assert loop.reported == ([context] if reported else [])
