"""Queue statistics, read from PostgreSQL once per interval for every queue at once.

Every operator replica runs a ``QueueMonitor``: it sets the queue-depth gauges on
``/metrics`` (what an HPA scales worker pools on, through a metrics adapter), and the
replica that reconciles folds the same snapshot into each JobQueue's and pool's status.
One snapshot is a few statements for all queues (``JobStore.queue_stats``, and
``JobStore.finished_counts`` when due) and one for all workers (``JobStore.worker_counts``),
whatever the number of queues, so hundreds of queues cost the database the same as one;
the status timers only read the snapshot.

The finished jobs are counted less often when counting them is slow. That count reads one
index entry per finished job the queues keep, millions with a long retention (about 150 ms
a million), where everything else a snapshot reads grows with the backlog only. So a
refresh counts them again (``JobStore.finished_counts``) only once the time since the
last count is a hundred times what that count took (``FINISHED_COUNT_SHARE``), or a
minute (``FINISHED_COUNT_MAX_AGE_S``), and carries the last counts over otherwise: the
counting costs the database about 1 % of a core's time up to some 4 million finished
jobs, and the counts are never more than a minute old. With small tables that is every
refresh; with a million finished jobs, about every 15 s, and the succeeded,
dead-lettered and cancelled counts in status and on /metrics are that much older than
the rest.

A failed refresh keeps the previous snapshot (and its age says how stale it is): a
database blip must not make every queue look empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass, field

from jobqueue import metrics
from jobqueue.errors import JobQueueError
from jobqueue.store import TERMINAL_STATES, JobState, JobStore, QueueStats, WorkerCounts

logger = logging.getLogger(__name__)

# The most of its time a monitor spends on counting finished jobs, and the oldest those
# counts get (see the docstring).
FINISHED_COUNT_SHARE = 0.01
FINISHED_COUNT_MAX_AGE_S = 60.0


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

    def __init__(
        self,
        store: JobStore,
        *,
        interval_s: float,
        worker_seen_within_s: float,
        finished_count_share: float = FINISHED_COUNT_SHARE,
    ) -> None:
        self.store = store
        self.finished_count_share = finished_count_share
        self.interval_s = interval_s
        self.worker_seen_within_s = worker_seen_within_s
        self.latest: Snapshot | None = None
        self._refreshed = asyncio.Event()
        self._finished: dict[str, dict[JobState, int]] | None = None  # by queue, last count
        self._count_finished_at = 0.0  # monotonic: when the next count is due

    async def refresh(self) -> Snapshot:
        stats = await self.store.queue_stats(count_finished=False)
        began = time.monotonic()
        if self._finished is None or began >= self._count_finished_at:
            self._finished = await self.store.finished_counts(list(stats))
            wait_s = (time.monotonic() - began) / self.finished_count_share
            self._count_finished_at = began + min(wait_s, FINISHED_COUNT_MAX_AGE_S)
        stats = _with_finished_counts(stats, self._finished)
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


def _with_finished_counts(
    stats: dict[str, QueueStats], finished: dict[str, dict[JobState, int]]
) -> dict[str, QueueStats]:
    """``stats`` read without the finished counts, with ``finished`` filled in (zeros for a
    queue that is new since they were counted)."""
    merged = {}
    for queue, current in stats.items():
        counted = finished.get(queue, {})
        counts = {
            state: counted.get(state, 0) if state in TERMINAL_STATES else current.counts[state]
            for state in JobState
        }
        merged[queue] = dataclasses.replace(current, counts=counts)
    return merged


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
