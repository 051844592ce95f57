from __future__ import annotations

import asyncio

import pytest
import uvloop

from jobqueue import loops


async def _loop_type() -> type[asyncio.AbstractEventLoop]:
    return type(asyncio.get_running_loop())


def test_the_default_loop_is_uvloop() -> None:
    assert loops.run(_loop_type()) is uvloop.Loop


def test_the_standard_loop_can_be_chosen() -> None:
    kind = loops.run(_loop_type(), "asyncio")

    assert not issubclass(kind, uvloop.Loop)
    assert issubclass(kind, asyncio.BaseEventLoop)


def test_an_error_in_the_coroutine_reaches_the_caller() -> None:
    async def fails() -> None:
        raise LookupError("from inside the loop")

    with pytest.raises(LookupError, match="from inside the loop"):
        loops.run(fails())
