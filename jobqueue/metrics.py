"""Prometheus metrics of the operator and the worker, defined in one place.

Names follow Prometheus conventions: a ``jobqueue_`` prefix, base units in the name
(``_seconds``), ``_total`` on counters. Labels are bounded: queue names and outcomes, never
job ids. Keeping every definition here gives dashboards, alert rules and their tests one
list to check against. (The outbox relay keeps its two metrics beside its own code in
``jobqueue.events``.)
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Latencies of a job queue span sub-millisecond dispatch to hour-long runs.
_FAST_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.004,
    0.008,
    0.016,
    0.032,
    0.064,
    0.128,
    0.256,
    0.512,
    1,
    2,
    5,
)
_RUN_TIME_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 1800, 3600)

# Operator: jobs and queues ---------------------------------------------------------------

JOBS_SUBMITTED = Counter("jobqueue_jobs_submitted_total", "Jobs accepted by the API.", ["queue"])
JOBS_FINISHED = Counter(
    "jobqueue_jobs_finished_total",
    "Job attempts that ended, by outcome (succeeded, failed, timed_out, cancelled, "
    "dead_lettered, lease_expired, lost: its worker left or restarted without it).",
    ["queue", "outcome"],
)
QUEUE_JOBS = Gauge(
    "jobqueue_queue_jobs",
    "Jobs in a queue by state, as last folded from the database.",
    ["queue", "state"],
)
QUEUE_OLDEST_PENDING_AGE = Gauge(
    "jobqueue_queue_oldest_pending_age_seconds",
    "Age of the oldest job waiting to be dispatched.",
    ["queue"],
)
DISPATCH_LATENCY = Histogram(
    "jobqueue_dispatch_latency_seconds",
    "Time from a job being ready to its worker saying it started.",
    ["queue"],
    buckets=_FAST_BUCKETS,
)
JOB_RUN_TIME = Histogram(
    "jobqueue_job_run_time_seconds",
    "Time an attempt ran on its worker.",
    ["queue", "outcome"],
    buckets=_RUN_TIME_BUCKETS,
)

# Operator: workers and the scheduler -------------------------------------------------

WORKERS_CONNECTED = Gauge(
    "jobqueue_workers_connected", "Workers with an open stream to this replica.", ["queue"]
)
WORKER_SLOTS_BUSY = Gauge(
    "jobqueue_worker_slots_busy", "Job slots in use on workers of this replica.", ["queue"]
)
SCHEDULER_CYCLE = Histogram(
    "jobqueue_scheduler_cycle_seconds",
    "Time one dispatch cycle takes (claim and push).",
    buckets=_FAST_BUCKETS,
)

# Calls to dependencies -----------------------------------------------------------------

REDIS_CALL_DURATION = Histogram(
    "jobqueue_redis_call_duration_seconds",
    "Redis calls by operation.",
    ["operation"],
    buckets=_FAST_BUCKETS,
)
GRPC_CALL_DURATION = Histogram(
    "jobqueue_grpc_call_duration_seconds",
    "gRPC calls served, by method and status code.",
    ["method", "code"],
    buckets=_FAST_BUCKETS,
)
GRPC_CALLS_REFUSED = Counter(
    "jobqueue_grpc_calls_refused_total",
    "gRPC calls refused before their method ran (authentication, authorization), by method "
    "and status code.",
    ["method", "code"],
)
AUTH_REVIEW_DURATION = Histogram(
    "jobqueue_auth_review_duration_seconds",
    "Calls the operator made to the Kubernetes API server to check a caller (TokenReview, "
    "SubjectAccessReview, pod and pool reads), cache misses only.",
    ["review"],
    buckets=_FAST_BUCKETS,
)

# Worker ------------------------------------------------------------------------------

WORKER_JOBS = Counter(
    "jobqueue_worker_jobs_total",
    "Job attempts run by this worker, by outcome.",
    ["queue", "outcome"],
)
WORKER_RUNNING_JOBS = Gauge("jobqueue_worker_running_jobs", "Jobs this worker runs now.")
