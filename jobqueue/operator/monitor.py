"""Queue statistics, read from PostgreSQL once per interval for every queue at once.

Every operator replica runs a ``QueueMonitor``: it sets the queue-depth gauges on
``/metrics`` (what an HPA scales worker pools on, through a metrics adapter), and the
replica that reconciles folds the same snapshot into each JobQueue's and pool's status.
One snapshot is two statements for all queues (``JobStore.queue_stats``) and one for all
workers (``JobStore.worker_counts``), whatever the number of queues, so hundreds of
queues cost the database the same as one; the status timers only read the snapshot.

A failed refresh keeps the previous snapshot (and its age says how stale it is): a
database blip must not make every queue look empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

from jobqueue import metrics
from jobqueue.errors import JobQueueError
from jobqueue.store import JobState, JobStore, QueueStats, WorkerCounts

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    stats: dict[str, QueueStats]
    workers: dict[tuple[str, str], WorkerCounts]  # by (queue, pool)
    taken_at: float = field(default_factory=time.monotonic)  # monotonic seconds

    def queue_workers(self, queue: str) -> WorkerCounts:
        """The workers of every pool serving ``queue``, added up."""
        connected = busy = 0
        for (worker_queue, _), counts in self.workers.items():
            if worker_queue == queue:
                connected += counts.connected
                busy += counts.busy
        return WorkerCounts(queue, "", connected, busy)

    def pool_workers(self, queue: str, pool: str) -> WorkerCounts:
        return self.workers.get((queue, pool)) or WorkerCounts(queue, pool, 0, 0)


class QueueMonitor:
    """Refreshes ``latest`` every ``interval_s`` until stopped."""

    def __init__(self, store: JobStore, *, interval_s: float, worker_seen_within_s: float) -> None:
        self.store = store
        self.interval_s = interval_s
        self.worker_seen_within_s = worker_seen_within_s
        self.latest: Snapshot | None = None
        self._refreshed = asyncio.Event()

    async def refresh(self) -> Snapshot:
        stats = await self.store.queue_stats()
        workers = await self.store.worker_counts(self.worker_seen_within_s)
        snapshot = Snapshot(stats, {(count.queue, count.pool): count for count in workers})
        _export(snapshot, self.latest)
        self.latest = snapshot
        self._refreshed.set()
        return snapshot

    async def wait_first(self) -> Snapshot | None:
        """The first snapshot, once there is one (or None when the wait is cut short)."""
        await self._refreshed.wait()
        return self.latest

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.refresh()
            except JobQueueError as error:
                logger.warning("Queue statistics not refreshed (%s); keeping the last ones.", error)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval_s):
                    await stop.wait()


def _export(snapshot: Snapshot, previous: Snapshot | None) -> None:
    """Set the queue gauges; drop the series of queues that no longer exist."""
    for queue, stats in snapshot.stats.items():
        for state in JobState:
            metrics.QUEUE_JOBS.labels(queue, state.value).set(stats.counts.get(state, 0))
        metrics.QUEUE_OLDEST_PENDING_AGE.labels(queue).set(stats.oldest_pending_age_s or 0)
    for queue in set(previous.stats if previous else ()) - set(snapshot.stats):
        for state in JobState:
            with contextlib.suppress(KeyError):
                metrics.QUEUE_JOBS.remove(queue, state.value)
        with contextlib.suppress(KeyError):
            metrics.QUEUE_OLDEST_PENDING_AGE.remove(queue)
