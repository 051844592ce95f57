-- V2: closing a queue that is being deleted, and counting workers for status.
--
-- A JobQueue deleted with deletionPolicy Drain keeps dispatching its unfinished jobs
-- until none is left, but must stop taking new ones, or a busy producer would keep the
-- queue alive for ever. `closed` marks that: submits to a closed queue are refused, and
-- the operator's reconcile of the queue never reopens it (UPSERT_QUEUE leaves it alone).
ALTER TABLE queues ADD COLUMN closed boolean NOT NULL DEFAULT false;
COMMENT ON COLUMN queues.closed IS
  'True while the queue is being deleted and drains: submits are refused, dispatch goes on.';

-- Status mirroring counts, per queue, the workers that run a job; this finds the
-- in-flight attempts of each worker without scanning the jobs table.
CREATE INDEX jobs_in_flight_by_worker ON jobs (worker_id)
  WHERE state IN ('assigned', 'running');
