"""The benchmark in a tiny configuration, so ``make bench`` cannot rot between runs.

It runs every phase against the session's servers (a few hundred jobs) and checks that
the report holds what ``make bench`` promises, not how fast anything was: the numbers of
a run this small on a shared machine mean nothing.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from jobqueue.bench import report
from jobqueue.bench.run import BenchConfig, run_benchmark
from jobqueue.bench.stack import Servers
from jobqueue.devenv import Environment

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


async def test_tiny_benchmark_reports_every_phase(
    devenv: Environment, redis_url: str, tmp_path: Path
) -> None:
    assert devenv.postgres
    assert devenv.kafka
    # The benchmark makes its own database and picks its own topic and key prefixes.
    servers = Servers(devenv.postgres.dsn, redis_url, devenv.kafka.bootstrap_servers)
    config = BenchConfig.tiny()

    results = await run_benchmark(config, servers, tmp_path, tmp_path / "profile.txt")

    assert results.warm_up is not None
    assert results.warm_up.jobs == config.warm_up_jobs
    assert results.drain.jobs == config.jobs
    assert (results.submit.method, results.submit_stream.method) == ("Submit", "SubmitStream")
    assert results.submit.jobs == results.submit_stream.jobs == config.single_jobs
    assert results.drain.jobs_per_s > 0
    assert results.latency.jobs == round(config.latency_rate_per_s * config.latency_seconds)
    assert results.latency.failed_submits == 0
    assert results.comparison_latency is not None
    assert results.comparison_latency.jobs == round(
        config.comparison_latency_rate_per_s * config.latency_seconds
    )
    assert results.reference_lifecycle_jobs_per_s > 0
    assert results.profile is not None
    assert results.profile.samples > 0
    assert await asyncio.to_thread(Path(results.profile.report).read_text)

    output = tmp_path / "results.json"
    report.write_json(results, output)
    document = json.loads(await asyncio.to_thread(output.read_text))
    assert document["drain"]["jobs"] == config.jobs
    assert document["ratios"]["drain_to_reference_lifecycle"] > 0
    table = report.table(results)
    assert "warm-up drain" in table
    assert "drain" in table
    assert f"latency at {config.latency_rate_per_s:g} jobs/s" in table
    assert f"latency at {config.comparison_latency_rate_per_s:g} jobs/s" in table
    assert "SubmitStream, one job per message" in table
