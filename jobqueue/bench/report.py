"""The benchmark's results as a table for a person and as JSON for a machine.

The table puts each of the queue's rates next to its ratio to the reference measured in
the same run (see ``reference``): the ratio is the figure to compare between runs, the
raw rate the one to compare with other queues on this same machine. The JSON document
holds every number the table shows and the configuration that produced them.
"""

from __future__ import annotations

import json
from pathlib import Path

from jobqueue.bench.phases import Latency, Percentiles, SubmitRate
from jobqueue.bench.profiling import Cost
from jobqueue.bench.run import Results

# What the best Python queues reach on a two-core machine like this one.
TARGET_JOBS_PER_S = 10_000
TARGET_P50_MS = 1.5
TARGET_P99_MS = 4.0
# The latency of the fastest Python queue on PostgreSQL at 200 jobs/s, as issue 4 quotes it.
OTHERS_P50_MS = 1.5
OTHERS_P99_MS = 4.1


def _rate(value: float) -> str:
    return f"{value:,.0f}"


def _percentiles(values: Percentiles) -> str:
    return (
        f"p50 {values.p50_ms:.2f} ms  p95 {values.p95_ms:.2f} ms  p99 {values.p99_ms:.2f} ms"
        f"  max {values.max_ms:.1f} ms"
    )


def _cores(used: dict[str, float]) -> str:
    return ", ".join(f"{group} {value:.2f}" for group, value in used.items() if value >= 0.01)


def _per_job(used: dict[str, float]) -> str:
    shown = {group: value for group, value in used.items() if value >= 1}
    total = sum(used.values())
    return ", ".join(f"{group} {value:.0f}" for group, value in shown.items()) + (
        f" (all {total:.0f} microseconds)"
    )


def _submit_line(rate: SubmitRate) -> str:
    return (
        f"{_rate(rate.jobs_per_s)} jobs/s ({rate.jobs} jobs, {rate.callers} calls in flight;"
        f" a call: {_percentiles(rate.call)})"
    )


def _latency_rows(latency: Latency, submits: str, against: str) -> list[tuple[str, str]]:
    how = "SubmitStream" if submits == "stream" else "Submit calls"
    return [
        (
            f"latency at {latency.target_per_s:g} jobs/s ({how})",
            f"accepted to started: {_percentiles(latency.accepted_to_started)} ({against})",
        ),
        (
            "",
            f"sent to started:     {_percentiles(latency.sent_to_started)}"
            f" ({latency.jobs} jobs, offered {latency.achieved_per_s:.0f}/s,"
            f" {latency.failed_submits} submits failed)",
        ),
        ("  CPU cores busy", _cores(latency.cpu_cores)),
    ]


def table(results: Results) -> str:
    """The results as aligned lines of text."""
    config = results.config
    drain = results.drain
    latency = results.latency
    reference_lifecycle = results.reference_lifecycle_jobs_per_s
    reference_insert = results.reference_insert_rows_per_s
    before, after = results.reference_before, results.reference_after
    rows = [
        (
            "reference: batched inserts",
            f"{_rate(reference_insert)} rows/s (passes: {_rate(before.insert_rows_per_s)},"
            f" {_rate(after.insert_rows_per_s)})",
        ),
        (
            "reference: batched lifecycle",
            f"{_rate(reference_lifecycle)} jobs/s (passes: {_rate(before.lifecycle_jobs_per_s)},"
            f" {_rate(after.lifecycle_jobs_per_s)})",
        ),
        ("Submit, one job per call", _submit_line(results.submit)),
        ("SubmitStream, one job per message", _submit_line(results.submit_stream)),
        (
            f"SubmitBatch, {results.submit_batch.batch_size} per call",
            _submit_line(results.submit_batch)
            + f" = {results.submit_batch.jobs_per_s / reference_insert:.2f} x reference",
        ),
        (
            f"drain {drain.jobs} no-op jobs",
            f"{_rate(drain.jobs_per_s)} jobs/s in {drain.seconds:.2f} s"
            f" = {drain.jobs_per_s / reference_lifecycle:.2f} x reference"
            f" (target {_rate(TARGET_JOBS_PER_S)})",
        ),
        (
            "  steady part (10-90 %)",
            f"{_rate(drain.steady_jobs_per_s)} jobs/s"
            f" = {drain.steady_jobs_per_s / reference_lifecycle:.2f} x reference",
        ),
        ("  outbox", f"last event published {drain.outbox_lag_s:.2f} s after the last job"),
        ("  CPU cores busy", _cores(drain.cpu_cores)),
        ("  CPU per job", _per_job(drain.cpu_us_per_job)),
        *_latency_rows(
            latency,
            config.latency_submits,
            f"target p50 {TARGET_P50_MS:g}, p99 {TARGET_P99_MS:g}",
        ),
    ]
    if results.comparison_latency is not None:
        rows += _latency_rows(
            results.comparison_latency,
            config.latency_submits,
            f"others: p50 {OTHERS_P50_MS:g}, p99 {OTHERS_P99_MS:g}",
        )
    if results.warm_up is not None:
        warm_up = results.warm_up
        rows[:0] = [
            (
                f"warm-up drain {warm_up.jobs} jobs",
                f"{_rate(warm_up.jobs_per_s)} jobs/s (not counted; it warms the servers up)",
            ),
            ("  CPU per job", _per_job(warm_up.cpu_us_per_job)),
        ]
    if results.profiled_drain is not None:
        profiled = results.profiled_drain
        rows.append(
            (
                f"profiled drain {profiled.jobs} jobs",
                f"{_rate(profiled.jobs_per_s)} jobs/s (the profiler's cost included)",
            )
        )
    width = max(len(name) for name, _ in rows) + 2
    lines = [
        f"jobqueue benchmark: {config.workers} worker(s) x {config.concurrency} slots,"
        f" Python {results.machine.python}, {results.machine.cpus} CPUs, event topics of"
        f" {config.topic_partitions} partition(s), {results.seconds:.0f} s in all",
        "",
        *(f"{name:<{width}}{value}" for name, value in rows),
    ]
    if results.profile is not None:
        lines += ["", *profile_lines(results)]
    return "\n".join(lines)


def profile_lines(results: Results) -> list[str]:
    profile = results.profile
    assert profile is not None

    def shares(costs: tuple[Cost, ...], limit: int) -> list[str]:
        return [f"  {cost.share * 100:5.1f} %  {cost.name}" for cost in costs[:limit]]

    libraries = ", ".join(f"{cost.name} {cost.share * 100:.0f} %" for cost in profile.libraries)
    return [
        f"operator profile over {profile.seconds:.1f} s of the profiled drain:"
        f" its event loop was busy {profile.busy_share * 100:.0f} % of the time",
        f"busy time by library: {libraries}",
        "most self time:",
        *shares(profile.self_time, 10),
        "most time in jobqueue functions (including what they call):",
        *shares(profile.jobqueue_total_time, 10),
        f"call tree: {profile.report}",
    ]


def write_json(results: Results, path: Path) -> None:
    path.write_text(json.dumps(results.as_document(), indent=2, default=str) + "\n")
