-- V1: the initial schema of jobqueue's store.
--
-- PostgreSQL is the source of truth: queues (their policy, mirrored from JobQueue
-- resources), jobs (one row per job, updated in place through its lifecycle), job events
-- (the transactional outbox the Kafka relay publishes from), workers, and the record of
-- applied migrations.
--
-- Hot paths and the index each one uses:
--   claim             jobs_ready (partial: pending jobs only, in dispatch order)
--   lease recovery    jobs_leases (partial: assigned/running only)
--   retry promotion   jobs_retries (partial: failed only)
--   retention, stats  jobs_finished (partial: terminal states only)
--   concurrency cap   jobs_in_flight (partial: assigned/running only)
-- The partial indexes stay as small as the set of jobs in that state, not as large as the
-- table, which is what keeps a claim cheap when millions of finished jobs are retained.
--
-- Every timestamp is written from the application's clock (a parameter), never from
-- now() in SQL, so tests can drive time; schema_migrations.applied_at is the exception.

-- The runner creates this table itself before the first migration (it must record V1);
-- it is repeated here, identically, so this file shows the whole schema.
CREATE TABLE IF NOT EXISTS schema_migrations (
  version int PRIMARY KEY,
  name text NOT NULL,
  checksum text NOT NULL,  -- sha256 of the file, hex; an applied file must never change
  applied_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE schema_migrations IS
  'Migrations applied by jobqueue.store.migrations: version, name and checksum of each file.';

CREATE TABLE queues (
  name text PRIMARY KEY,
  namespace text NOT NULL DEFAULT '',
  max_attempts int NOT NULL DEFAULT 3 CHECK (max_attempts BETWEEN 1 AND 100),
  backoff_initial_s double precision NOT NULL DEFAULT 1,
  backoff_multiplier double precision NOT NULL DEFAULT 2,
  backoff_max_s double precision NOT NULL DEFAULT 300,
  backoff_jitter double precision NOT NULL DEFAULT 0.1,
  timeout_s double precision NOT NULL DEFAULT 600,
  paused boolean NOT NULL DEFAULT false,
  concurrency_limit int,              -- NULL: unlimited
  rate_limit_per_s double precision,  -- NULL: unlimited (enforced with Redis tokens)
  rate_limit_burst int,
  retention_succeeded_s bigint NOT NULL DEFAULT 86400,
  retention_failed_s bigint NOT NULL DEFAULT 604800,  -- dead-lettered and cancelled jobs
  allowed_kinds text[] NOT NULL DEFAULT '{command,python}',
  payload_limit_bytes int NOT NULL DEFAULT 262144,
  created_at timestamptz NOT NULL,
  updated_at timestamptz NOT NULL
);
COMMENT ON TABLE queues IS
  'One row per JobQueue resource (named by metadata.name): the policy the store enforces.';

CREATE TABLE jobs (
  id uuid PRIMARY KEY,
  queue text NOT NULL REFERENCES queues (name),
  kind text NOT NULL CHECK (kind IN ('command', 'python')),
  payload jsonb NOT NULL,
  priority int NOT NULL DEFAULT 0 CHECK (priority BETWEEN -1000 AND 1000),
  state text NOT NULL CHECK (
    state IN ('pending', 'assigned', 'running', 'succeeded', 'failed', 'dead_lettered',
              'cancelled')
  ),
  attempt int NOT NULL DEFAULT 0 CHECK (attempt >= 0),  -- 0 until the first claim
  max_attempts int NOT NULL CHECK (max_attempts >= 1),
  timeout_s double precision NOT NULL CHECK (timeout_s > 0),
  idempotency_key text,
  labels jsonb NOT NULL DEFAULT '{}',
  run_after timestamptz NOT NULL,  -- not claimable before; for failed jobs the retry time
  created_at timestamptz NOT NULL,
  updated_at timestamptz NOT NULL,
  assigned_at timestamptz,
  started_at timestamptz,
  finished_at timestamptz,
  worker_id text,
  lease_expires_at timestamptz,
  last_error text,
  output text,
  output_truncated boolean NOT NULL DEFAULT false,
  exit_code int
);
COMMENT ON TABLE jobs IS
  'One row per job, updated in place as it moves through its states; see jobqueue.store.lifecycle.';

-- A second submit with the same key on the same queue finds the first job.
CREATE UNIQUE INDEX jobs_idempotency ON jobs (queue, idempotency_key)
  WHERE idempotency_key IS NOT NULL;

-- Claims read this in order: highest priority, then oldest run_after, then id.
CREATE INDEX jobs_ready ON jobs (queue, priority DESC, run_after, id)
  WHERE state = 'pending';

-- Lease recovery: the attempts whose worker stopped answering, oldest lease first.
CREATE INDEX jobs_leases ON jobs (lease_expires_at)
  WHERE state IN ('assigned', 'running');

-- Retry promotion: failed jobs whose backoff is over. The queue is included so that
-- statistics can count failed jobs per queue from the index alone.
CREATE INDEX jobs_retries ON jobs (run_after) INCLUDE (queue)
  WHERE state = 'failed';

-- Retention and statistics over finished jobs; the state is included for per-state counts.
CREATE INDEX jobs_finished ON jobs (queue, finished_at) INCLUDE (state)
  WHERE state IN ('succeeded', 'dead_lettered', 'cancelled');

-- The concurrency cap counts a queue's attempts in flight; statistics split them by state.
CREATE INDEX jobs_in_flight ON jobs (queue, state)
  WHERE state IN ('assigned', 'running');

-- Listing a queue's jobs newest first, a page at a time (scanned backwards).
CREATE INDEX jobs_listing ON jobs (queue, created_at, id);

-- Label filters (labels @> '{"team": "x"}').
CREATE INDEX jobs_labels ON jobs USING gin (labels jsonb_path_ops);

-- Jobs churn: every one is inserted, updated several times and deleted. Vacuum earlier
-- than the default 20 % of dead rows, so dead index entries do not slow down claims.
ALTER TABLE jobs SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02);

CREATE TABLE job_events (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  job_id uuid NOT NULL,  -- no foreign key: events outlive purged jobs until published
  queue text NOT NULL,
  kind text NOT NULL CHECK (
    kind IN ('submitted', 'started', 'succeeded', 'failed', 'dead_lettered', 'cancelled')
  ),
  attempt int NOT NULL,
  occurred_at timestamptz NOT NULL,
  data jsonb NOT NULL DEFAULT '{}',
  published_at timestamptz  -- NULL until the relay has published the event
);
COMMENT ON TABLE job_events IS
  'Every change of a job''s state, written in the same transaction (the outbox for Kafka).';

CREATE INDEX job_events_by_job ON job_events (job_id, id);
CREATE INDEX job_events_unpublished ON job_events (id) WHERE published_at IS NULL;

-- Statistics: run time and error rate over the last minutes, per queue.
CREATE INDEX job_events_outcomes ON job_events (queue, occurred_at)
  WHERE kind IN ('succeeded', 'failed');

CREATE TABLE workers (
  id text PRIMARY KEY,
  queue text NOT NULL,
  pool text NOT NULL DEFAULT '',
  hostname text NOT NULL DEFAULT '',
  concurrency int NOT NULL,
  handlers text[] NOT NULL DEFAULT '{}',
  operator_id text NOT NULL DEFAULT '',
  state text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'draining', 'gone')),
  registered_at timestamptz NOT NULL,
  last_seen_at timestamptz NOT NULL
);
COMMENT ON TABLE workers IS
  'Workers known to the operators: where they run, what they serve, when last heard from.';

-- How many more jobs a claim of `queue_name` may take, out of `wanted`.
--
-- Called once per claim statement. Unknown queue: raises no_data_found (SQLSTATE P0002).
-- Paused: 0. No concurrency limit: `wanted`, without taking any lock. With a limit, the
-- queue row is locked (FOR NO KEY UPDATE, which does not block inserting jobs that
-- reference it) until the claim commits, so claimers of that queue take turns; and the
-- in-flight count runs after the lock is held. Being VOLATILE, each query here takes a
-- fresh snapshot, so the count sees the jobs the previous holder of the lock claimed. A
-- count in the claim statement itself would use the statement's older snapshot and two
-- replicas could together overshoot the limit.
CREATE FUNCTION jobqueue_claim_capacity(queue_name text, wanted int) RETURNS int
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  queue_paused boolean;
  queue_limit int;
  in_flight int;
BEGIN
  SELECT paused, concurrency_limit INTO queue_paused, queue_limit
    FROM queues WHERE name = queue_name;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'unknown queue %', queue_name USING ERRCODE = 'no_data_found';
  END IF;
  IF queue_paused THEN
    RETURN 0;
  END IF;
  IF queue_limit IS NULL THEN
    RETURN wanted;
  END IF;

  -- Read the policy again under the lock: it may have changed while this waited.
  SELECT paused, concurrency_limit INTO queue_paused, queue_limit
    FROM queues WHERE name = queue_name FOR NO KEY UPDATE;
  IF queue_paused THEN
    RETURN 0;
  END IF;
  IF queue_limit IS NULL THEN
    RETURN wanted;
  END IF;
  SELECT count(*) INTO in_flight
    FROM jobs WHERE queue = queue_name AND state IN ('assigned', 'running');
  RETURN greatest(0, least(wanted, queue_limit - in_flight));
END
$$;
COMMENT ON FUNCTION jobqueue_claim_capacity(text, int) IS
  'Slots a claim may fill on a queue: 0 when paused; serialises claimers of a limited queue.';
