"""The store's SQL: named, parameterised queries, each with a line on what it does.

Batches travel as arrays (``unnest``), so a batch of a thousand is one statement, not a
thousand. Array parameters are sent in binary (``%(name)b``): the text format escapes
every element with a regular expression, which cost more than the query itself.

Every timestamp is a parameter (``%(now)s``) from the store's clock. Statements that lock
several job rows to change them lock in id order, so two of them can never wait on each
other in a cycle; claims, promotion, recovery and purging skip locked rows instead of
waiting.
"""

from __future__ import annotations

from typing import LiteralString

# Queues -------------------------------------------------------------------------------

# Insert or update a queue's policy, unless another namespace owns the name.
UPSERT_QUEUE: LiteralString = """
INSERT INTO queues (
  name, namespace, max_attempts, backoff_initial_s, backoff_multiplier, backoff_max_s,
  backoff_jitter, timeout_s, paused, concurrency_limit, rate_limit_per_s, rate_limit_burst,
  retention_succeeded_s, retention_failed_s, allowed_kinds, payload_limit_bytes,
  created_at, updated_at
) VALUES (
  %(name)s, %(namespace)s, %(max_attempts)s, %(backoff_initial_s)s, %(backoff_multiplier)s,
  %(backoff_max_s)s, %(backoff_jitter)s, %(timeout_s)s, %(paused)s, %(concurrency_limit)s,
  %(rate_limit_per_s)s, %(rate_limit_burst)s, %(retention_succeeded_s)s,
  %(retention_failed_s)s, %(allowed_kinds)b::text[], %(payload_limit_bytes)s, %(now)s, %(now)s
)
ON CONFLICT (name) DO UPDATE SET
  max_attempts = EXCLUDED.max_attempts,
  backoff_initial_s = EXCLUDED.backoff_initial_s,
  backoff_multiplier = EXCLUDED.backoff_multiplier,
  backoff_max_s = EXCLUDED.backoff_max_s,
  backoff_jitter = EXCLUDED.backoff_jitter,
  timeout_s = EXCLUDED.timeout_s,
  paused = EXCLUDED.paused,
  concurrency_limit = EXCLUDED.concurrency_limit,
  rate_limit_per_s = EXCLUDED.rate_limit_per_s,
  rate_limit_burst = EXCLUDED.rate_limit_burst,
  retention_succeeded_s = EXCLUDED.retention_succeeded_s,
  retention_failed_s = EXCLUDED.retention_failed_s,
  allowed_kinds = EXCLUDED.allowed_kinds,
  payload_limit_bytes = EXCLUDED.payload_limit_bytes,
  updated_at = EXCLUDED.updated_at
WHERE queues.namespace = EXCLUDED.namespace
RETURNING name
"""

# The namespace that owns a queue name.
SELECT_QUEUE_NAMESPACE: LiteralString = "SELECT namespace FROM queues WHERE name = %(name)s"

# One queue's policy.
SELECT_QUEUE: LiteralString = "SELECT * FROM queues WHERE name = %(name)s"

# Every queue's policy, by name.
SELECT_QUEUES: LiteralString = "SELECT * FROM queues ORDER BY name"

# The names of every queue.
SELECT_QUEUE_NAMES: LiteralString = "SELECT name FROM queues ORDER BY name"

# Which of the given names are queues.
SELECT_QUEUE_NAMES_AMONG: LiteralString = """
SELECT name FROM queues WHERE name = ANY(%(names)b::text[]) ORDER BY name
"""

# The named queues' policies, held (FOR KEY SHARE) so they cannot be deleted under a submit,
# with the version of each row (its xmin: every update of the row writes a new one).
SELECT_QUEUES_FOR_SUBMIT: LiteralString = """
SELECT xmin::text AS row_version, * FROM queues WHERE name = ANY(%(names)b::text[])
FOR KEY SHARE
"""

# Pause or resume a queue.
SET_QUEUE_PAUSED: LiteralString = """
UPDATE queues SET paused = %(paused)s, updated_at = %(now)s WHERE name = %(name)s RETURNING *
"""

# Close a queue to new jobs (it is being deleted) and resume it: a drain must run down
# what the queue holds, which a paused queue would never do.
CLOSE_QUEUE: LiteralString = """
UPDATE queues SET closed = true, paused = false, updated_at = %(now)s
WHERE name = %(name)s RETURNING *
"""

# Workers heard from since %(since)s, and how many of them run a job, per queue and pool.
COUNT_WORKERS: LiteralString = """
WITH busy AS (
  SELECT DISTINCT worker_id FROM jobs
  WHERE state IN ('assigned', 'running') AND worker_id IS NOT NULL
)
SELECT workers.queue, workers.pool, count(*) AS connected, count(busy.worker_id) AS busy
FROM workers LEFT JOIN busy ON busy.worker_id = workers.id
WHERE workers.state <> 'gone' AND workers.last_seen_at >= %(since)s
GROUP BY workers.queue, workers.pool
"""

# How many unfinished jobs a queue has; no row for an unknown queue.
COUNT_UNFINISHED: LiteralString = """
SELECT (
  SELECT count(*) FROM jobs
  WHERE jobs.queue = queues.name AND state IN ('pending', 'assigned', 'running', 'failed')
) AS unfinished
FROM queues WHERE name = %(name)s
"""

# Lock a queue row against submits (which hold FOR KEY SHARE) before deleting it.
LOCK_QUEUE_FOR_DELETE: LiteralString = """
SELECT name FROM queues WHERE name = %(name)s FOR UPDATE
"""

# Delete a queue's finished jobs' published events (those at or before the outbox
# relay's progress); unpublished ones wait for the relay.
DELETE_QUEUE_PUBLISHED_EVENTS: LiteralString = """
DELETE FROM job_events USING outbox_progress AS p
WHERE job_events.queue = %(name)s AND (job_events.xid, job_events.id) <= (p.xid, p.event_id)
"""

# Delete up to %(limit)s finished jobs of a queue that is being deleted, with their
# published events (unpublished ones wait for the relay, as in
# DELETE_QUEUE_PUBLISHED_EVENTS). Rows another transaction holds are left for later.
DELETE_QUEUE_FINISHED_CHUNK: LiteralString = """
WITH doomed AS (
  SELECT id FROM jobs
  WHERE queue = %(name)s AND state IN ('succeeded', 'dead_lettered', 'cancelled')
  LIMIT %(limit)s
  FOR UPDATE SKIP LOCKED
),
events_gone AS (
  DELETE FROM job_events USING outbox_progress AS p
  WHERE job_events.job_id IN (SELECT id FROM doomed)
    AND (job_events.xid, job_events.id) <= (p.xid, p.event_id)
)
DELETE FROM jobs WHERE id IN (SELECT id FROM doomed)
"""

# Delete every job of a queue.
DELETE_QUEUE_JOBS: LiteralString = "DELETE FROM jobs WHERE queue = %(name)s"

# Delete a queue row.
DELETE_QUEUE: LiteralString = "DELETE FROM queues WHERE name = %(name)s"

# Jobs -----------------------------------------------------------------------------------

# Insert validated jobs (skipping any whose idempotency key is taken) and their
# submitted events, if every queue's row is still the version the jobs were validated
# against; returns whether it was (``current``) and the jobs inserted. When none was
# inserted, the one row has a NULL id. A job given a worker id is inserted as that
# worker's first attempt, already assigned (see ``JobStore.submit_batch``). The jobs come
# as one JSON array, which costs the client far less to send than an array per column.
INSERT_JOBS: LiteralString = """
WITH versions AS (
  SELECT count(*) = (SELECT count(*) FROM jsonb_object_keys(%(queue_versions)s::jsonb)) AS current
  FROM queues
  JOIN jsonb_each_text(%(queue_versions)s::jsonb) AS v(name, row_version)
    ON queues.name = v.name AND queues.xmin::text = v.row_version
),
input AS (
  SELECT * FROM jsonb_to_recordset(%(jobs)s::jsonb) AS i(
    id uuid, queue text, kind text, payload jsonb, priority int, max_attempts int,
    timeout_s float8, idempotency_key text, labels jsonb, run_after timestamptz,
    worker_id text
  )
),
inserted AS (
  INSERT INTO jobs (
    id, queue, kind, payload, priority, state, attempt, max_attempts, timeout_s,
    idempotency_key, labels, run_after, created_at, updated_at, worker_id, assigned_at,
    lease_expires_at
  )
  SELECT id, queue, kind, payload, priority,
         CASE WHEN worker_id IS NULL THEN 'pending' ELSE 'assigned' END,
         CASE WHEN worker_id IS NULL THEN 0 ELSE 1 END,
         max_attempts, timeout_s, idempotency_key, labels, run_after, %(now)s, %(now)s,
         worker_id,
         CASE WHEN worker_id IS NOT NULL THEN %(now)s END,
         CASE WHEN worker_id IS NOT NULL THEN %(lease_expires_at)s::timestamptz END
  FROM input
  WHERE (SELECT current FROM versions)
  ON CONFLICT (queue, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
  RETURNING id, queue
),
submitted AS (
  INSERT INTO job_events (job_id, queue, kind, attempt, occurred_at)
  SELECT id, queue, 'submitted', 0, %(now)s FROM inserted
)
SELECT versions.current, inserted.id::text AS id FROM versions LEFT JOIN inserted ON true
"""

# The jobs holding the given (queue, idempotency key) pairs.
SELECT_JOBS_BY_IDEMPOTENCY_KEY: LiteralString = """
SELECT jobs.* FROM jobs
JOIN unnest(%(queues)b::text[], %(keys)b::text[]) AS k(queue, idempotency_key)
  ON jobs.queue = k.queue AND jobs.idempotency_key = k.idempotency_key
"""

# One job.
SELECT_JOB: LiteralString = "SELECT * FROM jobs WHERE id = %(id)s"

# Whether a job exists.
JOB_EXISTS: LiteralString = "SELECT EXISTS (SELECT 1 FROM jobs WHERE id = %(id)s) AS found"

# A page of jobs, newest first; the WHERE clause is assembled from the filters below.
LIST_JOBS_HEAD: LiteralString = "SELECT * FROM jobs"
LIST_JOBS_BY_QUEUE: LiteralString = "queue = %(queue)s"
LIST_JOBS_BY_STATES: LiteralString = "state = ANY(%(states)b::text[])"
# A filter always names a label; saying so lets the planner use jobs_labels, which
# holds only labelled jobs.
LIST_JOBS_BY_LABELS: LiteralString = "labels <> '{}' AND labels @> %(labels)s::jsonb"
LIST_JOBS_AFTER: LiteralString = "(created_at, id) < (%(after_created_at)s, %(after_id)s::uuid)"
LIST_JOBS_TAIL: LiteralString = " ORDER BY created_at DESC, id DESC LIMIT %(limit)s"

# A job's events, oldest first.
SELECT_EVENTS: LiteralString = "SELECT * FROM job_events WHERE job_id = %(id)s ORDER BY id"

# State changes ----------------------------------------------------------------------------

# The columns that lock queries return besides the job's own: its queue's backoff.
_WITH_BACKOFF: LiteralString = """
SELECT jobs.*, queues.backoff_initial_s, queues.backoff_multiplier, queues.backoff_max_s,
       queues.backoff_jitter
FROM jobs JOIN queues ON queues.name = jobs.queue
"""

# Lock the given jobs (in id order) for a report, cancel or retry.
LOCK_JOBS: LiteralString = (
    _WITH_BACKOFF
    + """
WHERE jobs.id = ANY(%(ids)b::uuid[]) ORDER BY jobs.id FOR UPDATE OF jobs
"""
)

# Lock up to %(limit)s unfinished jobs of a queue (in id order) to cancel them.
LOCK_UNFINISHED_OF_QUEUE: LiteralString = (
    _WITH_BACKOFF
    + """
WHERE jobs.queue = %(queue)s AND jobs.state IN ('pending', 'assigned', 'running', 'failed')
ORDER BY jobs.id LIMIT %(limit)s FOR UPDATE OF jobs
"""
)

# Lock up to %(limit)s attempts whose lease has expired, oldest lease first.
LOCK_EXPIRED_LEASES: LiteralString = (
    _WITH_BACKOFF
    + """
WHERE jobs.state IN ('assigned', 'running') AND jobs.lease_expires_at < %(now)s
ORDER BY jobs.lease_expires_at LIMIT %(limit)s FOR UPDATE OF jobs SKIP LOCKED
"""
)

# Lock up to %(limit)s running attempts past their timeout plus a grace period.
LOCK_TIMED_OUT: LiteralString = (
    _WITH_BACKOFF
    + """
WHERE jobs.state = 'running'
  AND jobs.started_at + make_interval(secs => jobs.timeout_s + %(grace_s)s) < %(now)s
ORDER BY jobs.started_at LIMIT %(limit)s FOR UPDATE OF jobs SKIP LOCKED
"""
)

# Lock every attempt a worker holds (in id order).
LOCK_WORKER_ATTEMPTS: LiteralString = (
    _WITH_BACKOFF
    + """
WHERE jobs.worker_id = %(worker_id)s AND jobs.state IN ('assigned', 'running')
ORDER BY jobs.id FOR UPDATE OF jobs
"""
)

# Lock the started attempts a worker no longer runs: it registered again without naming
# them (its process restarted, say). Assigned attempts are left out: one may be on its way
# to the worker down a stream this statement cannot see.
LOCK_UNHELD_RUNNING: LiteralString = (
    _WITH_BACKOFF
    + """
WHERE jobs.worker_id = %(worker_id)s AND jobs.state = 'running'
  AND NOT EXISTS (
    SELECT 1 FROM unnest(%(ids)b::uuid[], %(attempts)b::int[]) AS held(id, attempt)
    WHERE held.id = jobs.id AND held.attempt = jobs.attempt
  )
ORDER BY jobs.id FOR UPDATE OF jobs
"""
)

# The attempts assigned to a worker that it did not name when it registered: sent to it
# down a stream that died before they arrived (see Scheduler.register).
SELECT_UNHELD_ASSIGNED: LiteralString = """
SELECT * FROM jobs
WHERE worker_id = %(worker_id)s AND state = 'assigned'
  AND NOT EXISTS (
    SELECT 1 FROM unnest(%(ids)b::uuid[], %(attempts)b::int[]) AS held(id, attempt)
    WHERE held.id = jobs.id AND held.attempt = jobs.attempt
  )
"""

# Write the new state of locked jobs and record their events, in order, in one statement.
APPLY_CHANGES: LiteralString = """
WITH changed AS (
  UPDATE jobs SET
    state = c.state, attempt = c.attempt, max_attempts = c.max_attempts,
    run_after = c.run_after, updated_at = c.updated_at, assigned_at = c.assigned_at,
    started_at = c.started_at, finished_at = c.finished_at, worker_id = c.worker_id,
    lease_expires_at = c.lease_expires_at, last_error = c.last_error, output = c.output,
    output_truncated = c.output_truncated, exit_code = c.exit_code
  FROM unnest(
    %(ids)b::uuid[], %(states)b::text[], %(attempts)b::int[], %(max_attempts)b::int[],
    %(run_afters)b::timestamptz[], %(updated_ats)b::timestamptz[],
    %(assigned_ats)b::timestamptz[], %(started_ats)b::timestamptz[],
    %(finished_ats)b::timestamptz[], %(worker_ids)b::text[],
    %(lease_expires_ats)b::timestamptz[], %(last_errors)b::text[], %(outputs)b::text[],
    %(output_truncateds)b::bool[], %(exit_codes)b::int[]
  ) AS c(id, state, attempt, max_attempts, run_after, updated_at, assigned_at, started_at,
         finished_at, worker_id, lease_expires_at, last_error, output, output_truncated,
         exit_code)
  WHERE jobs.id = c.id
  RETURNING jobs.id
),
recorded AS (
  INSERT INTO job_events (job_id, queue, kind, attempt, occurred_at, data)
  SELECT job_id, queue, kind, attempt, occurred_at, data::jsonb
  FROM unnest(
    %(event_job_ids)b::uuid[], %(event_queues)b::text[], %(event_kinds)b::text[],
    %(event_attempts)b::int[], %(event_occurred_ats)b::timestamptz[], %(event_data)b::text[]
  ) WITH ORDINALITY AS e(job_id, queue, kind, attempt, occurred_at, data, position)
  ORDER BY position
  RETURNING id
)
SELECT (SELECT count(*) FROM changed) AS jobs_changed,
       (SELECT count(*) FROM recorded) AS events_recorded
"""

# Reports, the common case in one statement each -------------------------------------
#
# A worker's Started report, and a result that says the attempt succeeded, are most of
# the traffic. When every report of a batch is such a one, the store records them with one
# of the two statements below instead of locking the rows, judging them in Python and
# writing them back (four round trips). Each statement locks the reported jobs in id
# order, changes those the report is still valid for (the attempt is the job's current
# one, the job is assigned to this worker and in the expected state:
# lifecycle.stale_reason's conditions) as lifecycle.start and lifecycle.finish would, and
# records their events in order. Rows it does not return were refused and left untouched.
#
# The reported jobs are looked up one by one by primary key (``_REPORTED_JOBS``), whatever
# the statistics say. Joined plainly, the planner answers "assigned or running" from
# jobs_in_flight instead and reads every attempt in flight, of every worker, for each
# batch; with statistics from before a burst it even did so for each reported job (20,000
# attempts in flight: 4.5 ms a result, against 57 us once the table was analysed again).
# OFFSET 0 keeps it from moving the conditions into the lookup, where it would do the same.

# Each reported job's current row, locked, beside its report: in id order, by primary key.
_REPORTED_JOBS: LiteralString = """
  FROM (SELECT * FROM reported ORDER BY id) AS reported
  CROSS JOIN LATERAL (
    SELECT jobs.id, jobs.state, jobs.attempt, jobs.worker_id FROM jobs
    WHERE jobs.id = reported.id OFFSET 0 FOR UPDATE
  ) AS job
"""

# The start recorded for a reported attempt, as lifecycle.recorded_start says: the
# worker's stamp (``reported.started_at``), kept between the assignment and now.
_RECORDED_START: LiteralString = """
    LEAST(%(now)s, GREATEST(jobs.assigned_at, COALESCE(locked.started_at, %(now)s)))"""

# Mark assigned attempts running, with a fresh lease, and record their started events.
START_ATTEMPTS: LiteralString = (
    """
WITH reported AS (
  SELECT * FROM unnest(%(ids)b::uuid[], %(attempts)b::int[], %(started_ats)b::timestamptz[])
    WITH ORDINALITY AS r(id, attempt, started_at, position)
),
locked AS (
  SELECT job.id, reported.started_at, reported.position"""
    + _REPORTED_JOBS
    + """  WHERE job.attempt = reported.attempt AND job.worker_id = %(worker_id)s
    AND job.state = 'assigned'
),
changed AS (
  UPDATE jobs SET
    state = 'running', started_at ="""
    + _RECORDED_START
    + """,
    lease_expires_at = %(lease_expires_at)s, updated_at = %(now)s
  FROM locked
  WHERE jobs.id = locked.id
  RETURNING jobs.id, jobs.queue, jobs.attempt, jobs.started_at, locked.position
),
recorded AS (
  INSERT INTO job_events (job_id, queue, kind, attempt, occurred_at, data)
  SELECT id, queue, 'started', attempt, started_at,
         jsonb_build_object('worker_id', %(worker_id)s)
  FROM changed ORDER BY position
)
SELECT position FROM changed
"""
)

# Mark in-flight attempts succeeded with their output, and record their events: a started
# event first for an attempt whose Started report never came (the job is still assigned),
# then the succeeded event. %(run_times_s)s are decimal texts so the events carry the
# number exactly as a JSON encoder would write it.
FINISH_SUCCEEDED: LiteralString = (
    """
WITH reported AS (
  SELECT * FROM unnest(
    %(ids)b::uuid[], %(attempts)b::int[], %(outputs)b::text[], %(output_truncateds)b::bool[],
    %(exit_codes)b::int[], %(run_times_s)b::text[], %(started_ats)b::timestamptz[]
  ) WITH ORDINALITY AS r(
    id, attempt, output, output_truncated, exit_code, run_time_s, started_at, position)
),
locked AS (
  SELECT job.id, job.state AS previous_state, reported.output, reported.output_truncated,
         reported.exit_code, reported.run_time_s, reported.started_at, reported.position"""
    + _REPORTED_JOBS
    + """  WHERE job.attempt = reported.attempt AND job.worker_id = %(worker_id)s
    AND job.state IN ('assigned', 'running')
),
changed AS (
  UPDATE jobs SET
    state = 'succeeded',
    started_at = CASE WHEN locked.previous_state = 'assigned' THEN"""
    + _RECORDED_START
    + """
      ELSE jobs.started_at END,
    finished_at = %(now)s, lease_expires_at = NULL, output = locked.output,
    output_truncated = locked.output_truncated, exit_code = locked.exit_code,
    updated_at = %(now)s
  FROM locked
  WHERE jobs.id = locked.id
  RETURNING jobs.id, jobs.queue, jobs.attempt, jobs.started_at, locked.previous_state,
            locked.exit_code, locked.run_time_s, locked.position
),
recorded AS (
  INSERT INTO job_events (job_id, queue, kind, attempt, occurred_at, data)
  SELECT id, queue, kind, attempt, occurred_at, data FROM (
    SELECT id, queue, 'started' AS kind, attempt, started_at AS occurred_at, position,
           1 AS step, jsonb_build_object('worker_id', %(worker_id)s) AS data
    FROM changed WHERE previous_state = 'assigned'
    UNION ALL
    SELECT id, queue, 'succeeded', attempt, %(now)s, position, 2,
           jsonb_build_object(
             'worker_id', %(worker_id)s, 'exit_code', exit_code,
             'run_time_s', run_time_s::numeric)
    FROM changed
  ) AS events
  ORDER BY position, step
)
SELECT position FROM changed
"""
)

# The current rows of the given jobs, to say why reports about them were refused.
SELECT_JOBS: LiteralString = "SELECT * FROM jobs WHERE id = ANY(%(ids)b::uuid[])"

# Dispatch -----------------------------------------------------------------------------

# Claim up to one ready job per worker slot of a queue, best first, and assign the i-th
# job to the i-th slot. jobqueue_claim_capacity (see V1) says how many slots may be
# filled: none when paused, fewer under a concurrency limit. Claims record no event.
#
# The update reaches its rows through the primary key: ``jobs.id = ANY(ARRAY(...))``
# repeats the join's condition in a form the planner estimates as a few rows. Without it
# the planner cannot see the LIMIT's value, expects a tenth of the pending jobs, and
# below some 100,000 rows hashes a sequential scan of the whole table at every claim:
# with 40,000 rows, 22-25 against 15-16 us per claimed job (claims of 256, timed alone).
# Each job's worker is read from the slots array by its number rather than by joining
# the unnested array, which the smaller estimate would turn into a nested loop.
_CLAIM_UPDATE: LiteralString = """
WITH capacity AS (
  SELECT jobqueue_claim_capacity(%(queue)s, cardinality(%(worker_slots)b::text[])) AS slots
),
ready AS (
  SELECT id, priority, run_after FROM jobs
  WHERE queue = %(queue)s AND state = 'pending' AND run_after <= %(now)s
  ORDER BY priority DESC, run_after, id
  LIMIT (SELECT slots FROM capacity)
  FOR UPDATE SKIP LOCKED
),
numbered AS (
  SELECT id, row_number() OVER (ORDER BY priority DESC, run_after, id) AS slot FROM ready
)
UPDATE jobs SET
  state = 'assigned', attempt = jobs.attempt + 1,
  worker_id = (%(worker_slots)b::text[])[numbered.slot],
  assigned_at = %(now)s, started_at = NULL, lease_expires_at = %(lease_expires_at)s,
  updated_at = %(now)s
FROM numbered
WHERE jobs.id = numbered.id AND jobs.id = ANY(ARRAY(SELECT id FROM ready))
"""
CLAIM: LiteralString = _CLAIM_UPDATE + "RETURNING jobs.*, numbered.slot"

# The same claim, returning only what an assignment needs, with the payload taken apart
# here: a Python job's arguments as JSON text, ready to send, a command's payload as it
# is; labels only when there are any. The scheduler builds no whole Job per row and
# decodes no JSON it would encode again.
CLAIM_FOR_DISPATCH: LiteralString = (
    _CLAIM_UPDATE
    + """RETURNING
  jobs.id::text AS id, jobs.queue, jobs.attempt, jobs.worker_id, jobs.kind, jobs.timeout_s,
  jobs.assigned_at, jobs.run_after,
  CASE WHEN jobs.labels <> '{}' THEN jobs.labels END AS labels,
  CASE WHEN jobs.kind = 'python' THEN jobs.payload->>'handler' END AS handler,
  CASE WHEN jobs.kind = 'python' THEN coalesce(jobs.payload->'arguments', '{}')::text END
    AS arguments_json,
  CASE WHEN jobs.kind = 'command' THEN jobs.payload END AS command,
  numbered.slot
"""
)

# Extend the leases of a worker's live attempts; returns the attempts it still holds. The
# attempts are looked up as reports are (_REPORTED_JOBS): a plain join read every attempt
# in flight, of every worker, at each heartbeat.
EXTEND_LEASES: LiteralString = (
    """
WITH reported AS (
  SELECT * FROM unnest(%(ids)b::uuid[], %(attempts)b::int[]) AS r(id, attempt)
),
held AS (
  SELECT job.id"""
    + _REPORTED_JOBS
    + """  WHERE job.attempt = reported.attempt AND job.worker_id = %(worker_id)s
    AND job.state IN ('assigned', 'running')
)
UPDATE jobs SET lease_expires_at = %(lease_expires_at)s
FROM held WHERE jobs.id = held.id
RETURNING jobs.id, jobs.attempt
"""
)

# Make up to %(limit)s failed jobs whose retry time has come pending again.
PROMOTE_DUE_RETRIES: LiteralString = """
UPDATE jobs SET state = 'pending', updated_at = %(now)s
FROM (
  SELECT id FROM jobs WHERE state = 'failed' AND run_after <= %(now)s
  ORDER BY run_after LIMIT %(limit)s FOR UPDATE SKIP LOCKED
) AS due
WHERE jobs.id = due.id
"""

# Workers --------------------------------------------------------------------------------

# Register a worker, or register it again (active, with its new details).
UPSERT_WORKER: LiteralString = """
INSERT INTO workers (
  id, queue, pool, hostname, concurrency, handlers, operator_id, state, registered_at,
  last_seen_at
) VALUES (
  %(id)s, %(queue)s, %(pool)s, %(hostname)s, %(concurrency)s, %(handlers)b::text[],
  %(operator_id)s, 'active', %(now)s, %(now)s
)
ON CONFLICT (id) DO UPDATE SET
  queue = EXCLUDED.queue, pool = EXCLUDED.pool, hostname = EXCLUDED.hostname,
  concurrency = EXCLUDED.concurrency, handlers = EXCLUDED.handlers,
  operator_id = EXCLUDED.operator_id, state = 'active',
  registered_at = EXCLUDED.registered_at, last_seen_at = EXCLUDED.last_seen_at
"""

# Set a worker's state (active, draining, gone); returns nothing for an unknown worker.
SET_WORKER_STATE: LiteralString = """
UPDATE workers SET state = %(state)s, last_seen_at = %(now)s WHERE id = %(id)s RETURNING id
"""

# Note that the given workers were heard from.
TOUCH_WORKERS: LiteralString = """
UPDATE workers SET last_seen_at = %(now)s WHERE id = ANY(%(ids)b::text[])
"""

# Every worker, or those of one queue, by id.
SELECT_WORKERS: LiteralString = """
SELECT * FROM workers WHERE %(queue)s::text IS NULL OR queue = %(queue)s ORDER BY id
"""

# Statistics and upkeep ----------------------------------------------------------------------

# The unfinished jobs per queue and state. Each branch matches one partial index's
# predicate (ready, in flight, retries), so each is an index(-only) scan of those jobs.
COUNT_UNFINISHED_BY_STATE: LiteralString = """
SELECT queue, 'pending' AS state, count(*) AS jobs,
       min(run_after) FILTER (WHERE run_after <= %(now)s) AS oldest_due
FROM jobs WHERE state = 'pending' AND queue = ANY(%(queues)b::text[]) GROUP BY queue
UNION ALL
SELECT queue, state, count(*), NULL
FROM jobs WHERE state IN ('assigned', 'running') AND queue = ANY(%(queues)b::text[])
GROUP BY queue, state
UNION ALL
SELECT queue, 'failed', count(*), NULL
FROM jobs WHERE state = 'failed' AND queue = ANY(%(queues)b::text[]) GROUP BY queue
"""

# The finished jobs per queue and state: one entry of jobs_finished per job kept.
COUNT_FINISHED_BY_STATE: LiteralString = """
SELECT queue, state, count(*) AS jobs, NULL AS oldest_due
FROM jobs WHERE state IN ('succeeded', 'dead_lettered', 'cancelled')
  AND queue = ANY(%(queues)b::text[])
GROUP BY queue, state
"""

# Run time and error rate per queue over the attempts that ended since %(since)s.
OUTCOMES_SINCE: LiteralString = """
SELECT queue,
       count(*) AS finished_attempts,
       count(*) FILTER (WHERE kind = 'failed') AS failed_attempts,
       avg((data->>'run_time_s')::float8) FILTER (WHERE kind = 'succeeded') AS run_time_mean_s,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY (data->>'run_time_s')::float8)
         FILTER (WHERE kind = 'succeeded') AS run_time_p95_s
FROM job_events
WHERE kind IN ('succeeded', 'failed') AND queue = ANY(%(queues)b::text[])
  AND occurred_at > %(since)s
GROUP BY queue
"""

# Delete up to %(limit)s finished jobs past their queue's retention, with their events;
# a job with an event the relay has not published yet is kept. The lateral subquery runs
# per queue, as a range scan of jobs_finished (queue, finished_at); the rows are then
# locked, skipping locked ones, and rechecked (same finished_at) in case a job was retried
# and finished again meanwhile.
PURGE_FINISHED: LiteralString = """
WITH candidates AS (
  SELECT expired.id, expired.finished_at
  FROM queues CROSS JOIN LATERAL (
    SELECT jobs.id, jobs.finished_at FROM jobs
    WHERE jobs.queue = queues.name
      AND jobs.state IN ('succeeded', 'dead_lettered', 'cancelled')
      AND jobs.finished_at < %(now)s - make_interval(
            secs => least(queues.retention_succeeded_s, queues.retention_failed_s))
      AND jobs.finished_at < %(now)s - make_interval(secs => CASE jobs.state
            WHEN 'succeeded' THEN queues.retention_succeeded_s
            ELSE queues.retention_failed_s END)
      AND NOT EXISTS (
        SELECT 1 FROM job_events, outbox_progress AS p
        WHERE job_events.job_id = jobs.id
          AND (job_events.xid, job_events.id) > (p.xid, p.event_id)
      )
    LIMIT %(limit)s
  ) AS expired
  LIMIT %(limit)s
),
doomed AS (
  SELECT jobs.id FROM jobs JOIN candidates ON candidates.id = jobs.id
  WHERE jobs.finished_at = candidates.finished_at
    AND jobs.state IN ('succeeded', 'dead_lettered', 'cancelled')
  FOR UPDATE OF jobs SKIP LOCKED
),
events_gone AS (
  DELETE FROM job_events WHERE job_id IN (SELECT id FROM doomed)
)
DELETE FROM jobs WHERE id IN (SELECT id FROM doomed)
"""

# Whether the database answers.
PING: LiteralString = "SELECT 1"
