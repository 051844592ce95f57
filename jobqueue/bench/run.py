"""One benchmark run from start to end: the stack up, the phases in order, the stack down.

Order, and why:

1. the database reference, with the operator and workers up but idle (the queue is
   paused), so it sees the same background load the queue will;
2. single submits on a queue no worker serves, as Submit calls and on a SubmitStream
   (the Python client's way), then the drain's backlog in SubmitBatch calls on the
   paused queue: submit rates without dispatch competing;
3. the relay publishes the backlog's ``submitted`` events, then the drain runs: resume
   the queue and time it until every job succeeded and every event is published;
4. dispatch latency at a steady rate, one single submit per job (on the client's
   SubmitStream, or as Submit calls with ``--latency-submits unary``), then again at
   the lower rate other queues' figures are quoted at;
5. a second, profiled drain (profiling slows the operator, so the headline drain runs
   without it);
6. the reference again: the two passes bracket the queue's phases, and their spread shows
   how much the machine moved during the run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import platform
import signal
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from jobqueue.bench import handlers, phases, profiling, reference, stack
from jobqueue.client import AsyncClient, Client
from jobqueue.devenv.processes import ManagedProcess
from jobqueue.store import JobStore, QueuePolicy

# The queue the workers serve, and one nobody serves (Submit calls only wait there).
QUEUE = "bench"
UNSERVED_QUEUE = "bench-unserved"

# How the latency phase may submit its jobs (BenchConfig.latency_submits).
LATENCY_SUBMITS = ("stream", "unary")

# Seconds the benchmark waits for the profile after asking the operator to write it.
_PROFILE_WRITE_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class BenchConfig:
    # Jobs submitted and drained before anything is measured; 0 skips it. A Kafka broker
    # just started spends most of its CPU compiling its own code: in a first drain of
    # 20,000 jobs it took 42-54 us a job, in a second 21-26.
    warm_up_jobs: int = 20_000
    # Jobs in the drained backlog; they are also what SubmitBatch submits.
    jobs: int = 20_000
    # Jobs per SubmitBatch call, and SubmitBatch calls in flight at once.
    batch_size: int = 500
    batch_callers: int = 2
    # Single submits (each way: Submit calls, and messages on a SubmitStream), and how
    # many are in flight at once.
    single_jobs: int = 2_000
    single_callers: int = 8
    # Worker processes, and the jobs each runs at once.
    workers: int = 2
    concurrency: int = 256
    # Partitions of each event topic (kafka.topic_partitions; the operator's default is
    # 3). One broker and no consumers here, so partitions buy nothing, and each costs the
    # broker work per request: at 500 jobs/s the p99 was 3.3-3.4 ms with 1 against
    # 3.5-4.0 with 3 (docs/performance.md, "The local broker").
    topic_partitions: int = 1
    # The steady submit rate of the latency phase (jobs per second) and its length.
    latency_rate_per_s: float = 500.0
    latency_seconds: float = 10.0
    # How the latency phase submits: "stream" (the Python client's default, one
    # SubmitStream call for all) or "unary" (a Submit call per job), to compare the two.
    latency_submits: str = "stream"
    # A second latency phase, as long, at the rate the figures of other queues that
    # issue 4 quotes were measured at (200 jobs/s: 1.5 ms p50, 4.1 ms p99 on PostgreSQL),
    # to compare like with like; 0 skips it.
    comparison_latency_rate_per_s: float = 200.0
    # Jobs in the profiled drain; 0 skips it.
    profile_jobs: int = 10_000
    # Rows per reference pass.
    reference_rows: int = 10_000
    # Seconds a drain may take before the run counts as failed.
    drain_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        """Refuse a setting no run could honour, naming it as its command-line flag."""
        may_be_zero = {"warm_up_jobs", "profile_jobs", "comparison_latency_rate_per_s"}
        if self.latency_submits not in LATENCY_SUBMITS:
            raise ValueError(
                f"--latency-submits: must be one of {', '.join(LATENCY_SUBMITS)},"
                f" got {self.latency_submits!r}"
            )
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if isinstance(value, str):
                continue
            least = "at least 0" if spec.name in may_be_zero else "over 0"
            if value < 0 or (value == 0 and spec.name not in may_be_zero):
                flag = "--" + spec.name.replace("_", "-")
                raise ValueError(f"{flag}: must be {least}, got {value:g}")

    @classmethod
    def tiny(cls) -> BenchConfig:
        """A run of a few hundred jobs: seconds long, for the test that keeps this working."""
        return cls(
            warm_up_jobs=100,
            jobs=300,
            batch_size=100,
            single_jobs=50,
            single_callers=4,
            workers=1,
            concurrency=32,
            latency_rate_per_s=100.0,
            latency_seconds=1.0,
            comparison_latency_rate_per_s=50.0,
            profile_jobs=200,
            reference_rows=500,
            drain_timeout_s=60.0,
        )


@dataclass(frozen=True)
class Machine:
    python: str
    cpus: int
    platform: str


@dataclass(frozen=True)
class Results:
    started_at: str
    seconds: float  # the whole run, start-up included
    machine: Machine
    config: BenchConfig
    reference_before: reference.Reference
    reference_after: reference.Reference
    submit: phases.SubmitRate
    submit_stream: phases.SubmitRate
    submit_batch: phases.SubmitRate
    drain: phases.Drain
    latency: phases.Latency
    profiled_drain: phases.Drain | None
    profile: profiling.ProfileSummary | None
    warm_up: phases.Drain | None = None
    comparison_latency: phases.Latency | None = None

    @property
    def reference_insert_rows_per_s(self) -> float:
        """The mean of the two passes: the database's pace over the run."""
        before, after = self.reference_before, self.reference_after
        return (before.insert_rows_per_s + after.insert_rows_per_s) / 2

    @property
    def reference_lifecycle_jobs_per_s(self) -> float:
        before, after = self.reference_before, self.reference_after
        return (before.lifecycle_jobs_per_s + after.lifecycle_jobs_per_s) / 2

    def as_document(self) -> dict[str, object]:
        document = dataclasses.asdict(self)
        document["ratios"] = {
            "submit_batch_to_reference_inserts": (
                self.submit_batch.jobs_per_s / self.reference_insert_rows_per_s
            ),
            "drain_to_reference_lifecycle": (
                self.drain.jobs_per_s / self.reference_lifecycle_jobs_per_s
            ),
            "steady_drain_to_reference_lifecycle": (
                self.drain.steady_jobs_per_s / self.reference_lifecycle_jobs_per_s
            ),
        }
        return document


async def run_benchmark(
    config: BenchConfig, servers: stack.Servers, run_dir: Path, profile_report: Path
) -> Results:
    """Run every phase against ``servers``; files of the run go to ``run_dir``."""
    began = time.monotonic()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    # Kafka topics and Redis keys of the run's own: it may share servers with tests.
    prefix = f"bench-{uuid.uuid4().hex[:8]}."
    with stack.fresh_database(servers.admin_dsn) as database_url:
        async with await JobStore.open(database_url, min_size=1, max_size=2) as store:
            await store.apply_queue(QueuePolicy(name=QUEUE, paused=True))
            await store.apply_queue(QueuePolicy(name=UNSERVED_QUEUE))

        async with (
            stack.operator_process(
                database_url, servers, prefix, run_dir, topic_partitions=config.topic_partitions
            ) as operator,
            stack.worker_processes(
                operator.address,
                QUEUE,
                count=config.workers,
                concurrency=config.concurrency,
                handler=handlers.NOOP,
                run_dir=run_dir,
            ) as workers,
            AsyncClient(operator.address, plaintext=True, timeout_s=30.0) as client,
            AsyncClient(
                operator.address, plaintext=True, timeout_s=30.0, stream_submits=False
            ) as unary_client,
        ):
            await stack.wait_for_workers(client, QUEUE, workers, operator)
            admin = Client(operator.address, plaintext=True, timeout_s=30.0)
            connection = await phases.open_connection(database_url)
            try:
                run = _Phases(config, client, unary_client, admin, connection, operator, workers)
                warm_up = await run.warm_up()
                reference_before = await run.reference(database_url)
                submit, submit_stream, submit_batch, since = await run.submits()
                drained = await run.drain(since)
                latency = await run.latency(config.latency_rate_per_s)
                comparison_latency = (
                    await run.latency(config.comparison_latency_rate_per_s)
                    if config.comparison_latency_rate_per_s
                    else None
                )
                profiled, profile = await run.profiled_drain(profile_report)
                reference_after = await run.reference(database_url)
            finally:
                await connection.close()
                admin.close()

    return Results(
        started_at=started_at,
        seconds=time.monotonic() - began,
        machine=Machine(platform.python_version(), os.cpu_count() or 0, platform.platform()),
        config=config,
        reference_before=reference_before,
        reference_after=reference_after,
        submit=submit,
        submit_stream=submit_stream,
        submit_batch=submit_batch,
        drain=drained,
        latency=latency,
        profiled_drain=profiled,
        profile=profile,
        warm_up=warm_up,
        comparison_latency=comparison_latency,
    )


@dataclass
class _Phases:
    """The phases, sharing the run's connections; each leaves the served queue empty."""

    config: BenchConfig
    client: AsyncClient  # single submits on a SubmitStream
    unary_client: AsyncClient  # single submits as Submit calls
    admin: Client
    connection: phases.Connection
    operator: stack.OperatorProcess
    workers: list[ManagedProcess]

    def alive(self) -> None:
        """Raise if a process of the stack has died: a phase would wait for it in vain."""
        self.operator.check_running()
        for worker in self.workers:
            if not worker.running():
                raise stack.StackFailedError(f"{worker.name} exited during the run")

    @property
    def processes(self) -> dict[int, str]:
        """The process trees whose CPU use a drain measures, and their group names."""
        named = {os.getpid(): "benchmark", self.operator.pid: "operator"}
        return named | {worker.pid: "workers" for worker in self.workers if worker.pid}

    async def reference(self, database_url: str) -> reference.Reference:
        return await reference.measure_reference(
            database_url, rows=self.config.reference_rows, batch_size=self.config.batch_size
        )

    async def warm_up(self) -> phases.Drain | None:
        """Submit and drain ``warm_up_jobs``, then pause the queue again for the submits."""
        jobs = self.config.warm_up_jobs
        if not jobs:
            return None
        drained = await self._drain(jobs, await self._submit_backlog(jobs))
        await phases.wait_until_published(self.connection, self.alive)
        await asyncio.to_thread(self.admin.pause, QUEUE)
        return drained

    async def submits(
        self,
    ) -> tuple[phases.SubmitRate, phases.SubmitRate, phases.SubmitRate, datetime]:
        config = self.config
        unserved = phases.noop_spec(UNSERVED_QUEUE, handlers.NOOP)
        single, streamed = [
            await phases.submit_singles(
                client,
                unserved,
                jobs=config.single_jobs,
                callers=config.single_callers,
                method=method,
            )
            for client, method in ((self.unary_client, "Submit"), (self.client, "SubmitStream"))
        ]
        since = datetime.now(UTC)
        batch = await phases.submit_batches(
            self.client,
            phases.noop_spec(QUEUE, handlers.NOOP),
            jobs=config.jobs,
            batch_size=config.batch_size,
            callers=config.batch_callers,
        )
        return single, streamed, batch, since

    async def drain(self, since: datetime) -> phases.Drain:
        # The backlog's submitted events go out first, so the drain is timed on its own.
        await phases.wait_until_published(self.connection, self.alive)
        return await self._drain(self.config.jobs, since)

    async def latency(self, rate_per_s: float) -> phases.Latency:
        streamed = self.config.latency_submits == "stream"
        return await phases.steady_latency(
            self.client if streamed else self.unary_client,
            self.connection,
            phases.noop_spec(QUEUE, handlers.NOOP),
            rate_per_s=rate_per_s,
            seconds=self.config.latency_seconds,
            alive=self.alive,
            processes=self.processes,
        )

    async def profiled_drain(
        self, report: Path
    ) -> tuple[phases.Drain | None, profiling.ProfileSummary | None]:
        jobs = self.config.profile_jobs
        if not jobs:
            return None, None
        await asyncio.to_thread(self.admin.pause, QUEUE)
        since = await self._submit_backlog(jobs)

        self.operator.profile_output.unlink(missing_ok=True)
        self.operator.signal(signal.SIGUSR1)
        try:
            drained = await self._drain(jobs, since)
        finally:
            self.operator.signal(signal.SIGUSR2)
        await self._profile_written()
        return drained, profiling.summarise(self.operator.profile_output, report)

    async def _submit_backlog(self, jobs: int) -> datetime:
        """Submit ``jobs`` to the paused queue and wait until their events are out; when
        the submitting began."""
        since = datetime.now(UTC)
        await phases.submit_batches(
            self.client,
            phases.noop_spec(QUEUE, handlers.NOOP),
            jobs=jobs,
            batch_size=self.config.batch_size,
            callers=self.config.batch_callers,
        )
        await phases.wait_until_published(self.connection, self.alive)
        return since

    async def _drain(self, jobs: int, since: datetime) -> phases.Drain:
        return await phases.drain(
            self.admin,
            self.connection,
            QUEUE,
            jobs=jobs,
            since=since,
            timeout_s=self.config.drain_timeout_s,
            alive=self.alive,
            processes=self.processes,
        )

    async def _profile_written(self) -> None:
        deadline = time.monotonic() + _PROFILE_WRITE_TIMEOUT_S
        while not self.operator.profile_output.exists():
            self.alive()
            if time.monotonic() > deadline:
                raise stack.StackFailedError("the operator did not write its profile")
            await asyncio.sleep(0.1)
