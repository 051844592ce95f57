from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from jobqueue import metrics
from jobqueue.devenv.processes import free_port
from jobqueue.health import Check, Health, run_checks, serve


async def answers() -> None:
    return None


async def refuses() -> None:
    raise ConnectionRefusedError("connection refused")


async def hangs() -> None:
    await asyncio.Event().wait()


async def test_failing_degrading_check_leaves_the_process_ready_but_degraded() -> None:
    report = await run_checks(
        [Check("postgres", answers, critical=True), Check("redis", refuses, critical=False)]
    )

    assert report.health is Health.DEGRADED
    assert [(r.name, r.health) for r in report.results] == [
        ("postgres", Health.OK),
        ("redis", Health.DEGRADED),
    ]
    assert report.results[1].message == "connection refused"


async def test_failing_critical_check_is_down_and_a_hang_is_bounded() -> None:
    report = await run_checks([Check("postgres", hangs, critical=True, timeout_s=0.1)])

    assert report.health is Health.DOWN
    assert report.results[0].message == "no answer within 0.1 s"


@pytest.fixture
async def http_base(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    port = free_port()
    runner = await serve(request.param, "127.0.0.1", port)
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.mark.parametrize(
    ("http_base", "status", "health"),
    [
        ([Check("postgres", answers, critical=True)], 200, "ok"),
        (
            [Check("postgres", answers, critical=True), Check("kafka", refuses, False)],
            200,
            "degraded",
        ),
        ([Check("postgres", refuses, critical=True)], 503, "down"),
    ],
    indirect=["http_base"],
)
async def test_readyz_follows_the_critical_checks(http_base: str, status: int, health: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{http_base}/readyz") as response:
            body = json.loads(await response.text())
            ready_status = response.status
        async with session.get(f"{http_base}/healthz") as response:
            live_status = response.status

    assert (ready_status, body["health"]) == (status, health)
    assert live_status == 200  # liveness never follows a dependency


@pytest.mark.parametrize("http_base", [[]], indirect=True)
async def test_metrics_are_exposed_in_prometheus_format(http_base: str) -> None:
    metrics.JOBS_SUBMITTED.labels(queue="health-test").inc()

    async with aiohttp.ClientSession() as session, session.get(f"{http_base}/metrics") as response:
        text = await response.text()

    assert response.status == 200
    assert 'jobqueue_jobs_submitted_total{queue="health-test"} 1.0' in text
