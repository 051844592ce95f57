"""The event loop the operator and the benchmark run on: uvloop, unless
``operator.event_loop`` says ``asyncio``.

uvloop's loop costs less per callback and per socket event than asyncio's own, and
grpc.aio and psycopg drive most of their work through the loop. Measured on the 2-core
machine of docs/performance.md: a bare grpc.aio server spent about 365 us of CPU per
unary call on uvloop against 430-440 on asyncio's loop, and 145 against 160-210 per
message on a bidirectional stream; the operator at 500 single Submits a second used
0.68-0.72 of a core against 0.70-0.74 (four alternating pairs of runs of the latency
phase, whose latencies the machine's swings hid).

Workers stay on asyncio's loop: they start commands, and on uvloop (which spawns through
libuv's ``fork()``, with gRPC's threads running) two command jobs of one test run died of
SIGABRT before their program started; asyncio's subprocesses go through CPython's own
spawning code, which has not shown it. kopf's
thread keeps asyncio's loop too (see ``jobqueue.operator.reconcile``): it is not on the
hot path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

import uvloop

T = TypeVar("T")

EventLoop = Literal["uvloop", "asyncio"]


def run(main: Coroutine[Any, Any, T], event_loop: EventLoop = "uvloop") -> T:
    """Run ``main`` to its end on a new loop of the given kind, as ``asyncio.run`` does."""
    with asyncio.Runner(loop_factory=loop_factory(event_loop)) as runner:
        return runner.run(main)


def loop_factory(event_loop: EventLoop) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """What makes a loop of the given kind; None is asyncio's default."""
    return uvloop.new_event_loop if event_loop == "uvloop" else None
