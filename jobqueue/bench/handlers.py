"""The job handler the benchmark's workers run: it does nothing, so only the queue is timed.

It is a coroutine on purpose. The worker runs a plain function in a thread
(``asyncio.to_thread``), which would add a thread hand-off per job to what the benchmark
measures; an ``async def`` runs on the worker's event loop, like most real handlers that
wait on I/O.
"""

from __future__ import annotations

# The name workers register it under and jobs name it by.
NOOP = "jobqueue.bench.handlers:noop"


async def noop() -> None:
    """Return at once."""
