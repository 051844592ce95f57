"""Health of a jobqueue process and its dependencies, and the HTTP endpoint that serves it.

Each dependency has a probe: an async function that returns when the dependency answers
and raises when it does not. A probe is *critical* when the process cannot do its work
without it (PostgreSQL for the operator) and *degrading* otherwise (Redis: dispatch falls
back to polling; Kafka: events wait in the outbox). So:

- ``/healthz`` says the process is alive (its event loop answers); nothing else. A
  liveness probe that followed a database outage would restart every replica at once.
- ``/readyz`` runs the probes: 200 when every critical one passes (the body says
  "degraded" and why when a degrading one fails), 503 when a critical one fails.
- ``/metrics`` is the Prometheus exposition of the default registry.

The same probes drive ``--dry-run`` and the admin API's system status.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import prometheus_client
from aiohttp import web

logger = logging.getLogger(__name__)

Probe = Callable[[], Awaitable[object]]


class Health(enum.Enum):
    OK = "ok"
    DEGRADED = "degraded"
    DOWN = "down"


@dataclass(frozen=True)
class Check:
    name: str
    probe: Probe
    critical: bool
    timeout_s: float = 2.0


@dataclass(frozen=True)
class CheckResult:
    name: str
    health: Health
    message: str
    latency_s: float
    critical: bool


@dataclass(frozen=True)
class Report:
    health: Health
    results: tuple[CheckResult, ...]

    def as_json(self) -> str:
        return json.dumps(
            {
                "health": self.health.value,
                "dependencies": [
                    {
                        "name": result.name,
                        "health": result.health.value,
                        "critical": result.critical,
                        "message": result.message,
                        "latency_ms": round(result.latency_s * 1000, 1),
                    }
                    for result in self.results
                ],
            }
        )


async def _run(check: Check) -> CheckResult:
    began = time.monotonic()
    try:
        await asyncio.wait_for(check.probe(), timeout=check.timeout_s)
    except TimeoutError:
        message = f"no answer within {check.timeout_s:g} s"
    except Exception as error:  # noqa: BLE001 - a probe's failure of any kind is the answer
        message = str(error) or type(error).__name__
    else:
        return CheckResult(check.name, Health.OK, "ok", time.monotonic() - began, check.critical)
    failed = Health.DOWN if check.critical else Health.DEGRADED
    return CheckResult(check.name, failed, message, time.monotonic() - began, check.critical)


async def run_checks(checks: Sequence[Check]) -> Report:
    """Run every probe at once; the overall health is the worst that follows from them."""
    results = tuple(await asyncio.gather(*(_run(check) for check in checks)))
    if any(result.health is Health.DOWN for result in results):
        overall = Health.DOWN
    elif any(result.health is Health.DEGRADED for result in results):
        overall = Health.DEGRADED
    else:
        overall = Health.OK
    return Report(overall, results)


def build_app(checks: Sequence[Check]) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        report = await run_checks(checks)
        status = 503 if report.health is Health.DOWN else 200
        return web.Response(text=report.as_json(), status=status, content_type="application/json")

    async def metrics(_: web.Request) -> web.Response:
        body = prometheus_client.generate_latest(prometheus_client.REGISTRY)
        return web.Response(
            body=body, headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


async def serve(checks: Sequence[Check], host: str, port: int) -> web.AppRunner:
    """Start serving; the caller ends it with ``await runner.cleanup()``."""
    runner = web.AppRunner(build_app(checks), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    logger.info("Serving /metrics, /healthz and /readyz on %s:%s", host, port)
    return runner
