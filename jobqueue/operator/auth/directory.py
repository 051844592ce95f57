"""Where a request's queue is found when the request does not name it.

Authorization needs the queue (and its namespace) before the method runs, but several
methods name only a job (Get, Cancel, Watch, ...) or a worker (DrainWorker). The
``QueueDirectory`` answers those look-ups. ``StoreDirectory`` reads the store and keeps
what it learns: a job never moves to another queue, so job-to-queue answers are kept
until the cache is full; a queue's namespace can change only by deleting the queue and
creating it again elsewhere, so namespaces are kept for the auth cache's TTL.
"""

from __future__ import annotations

from typing import Protocol

from jobqueue.errors import NotFoundError
from jobqueue.operator.auth.cache import ExpiringCache
from jobqueue.store import JobStore

# Jobs whose queue is remembered; each entry is a job id and a queue name.
JOB_QUEUE_ENTRIES = 100_000
# Seconds a remembered job-to-queue answer lasts: a day; the entry limit bites first.
JOB_QUEUE_KEEP_S = 86400.0


class QueueDirectory(Protocol):
    async def namespace_of(self, queue: str) -> str:
        """The queue's namespace ("" for a queue made outside Kubernetes); NotFoundError."""
        ...

    async def queue_of_job(self, job_id: str) -> str: ...

    async def queue_of_worker(self, worker_id: str) -> str: ...


class StoreDirectory:
    def __init__(self, store: JobStore, *, namespace_ttl_s: float) -> None:
        self._store = store
        self._namespaces: ExpiringCache[str, str] = ExpiringCache(namespace_ttl_s, 10_000)
        self._job_queues: ExpiringCache[str, str] = ExpiringCache(
            JOB_QUEUE_KEEP_S, JOB_QUEUE_ENTRIES
        )

    async def namespace_of(self, queue: str) -> str:
        async def read() -> str:
            return (await self._store.get_queue(queue)).namespace

        return await self._namespaces.get(queue, read)

    async def queue_of_job(self, job_id: str) -> str:
        async def read() -> str:
            return (await self._store.get(job_id)).queue

        return await self._job_queues.get(job_id, read)

    async def queue_of_worker(self, worker_id: str) -> str:
        # Admin calls only (drain, shutdown): rare enough to read the workers table.
        for record in await self._store.list_workers():
            if record.info.id == worker_id:
                return record.info.queue
        raise NotFoundError(f"unknown worker {worker_id!r}")
