"""Reports find their jobs by primary key, however many attempts are in flight and however
old the planner's statistics are (``queries._REPORTED_JOBS``).

Joined plainly, the report statements read every attempt in flight from jobs_in_flight,
once per batch or, with statistics from before a burst of claims, once per reported job:
thousands of times slower with thousands of attempts in flight. Only the plan shows it.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, LiteralString

import psycopg
import pytest

from jobqueue.store import JobStore, queries
from tests.integration.store.helpers import command, policy

pytestmark = pytest.mark.integration

_STATEMENTS: dict[str, LiteralString] = {
    "START_ATTEMPTS": queries.START_ATTEMPTS,
    "FINISH_SUCCEEDED": queries.FINISH_SUCCEEDED,
    "EXTEND_LEASES": queries.EXTEND_LEASES,
}


def _scans(plan: dict[str, Any]) -> Iterator[tuple[str, str | None]]:
    """(node type, index) of every node of the plan that reads the jobs table."""
    if plan["Node Type"] != "ModifyTable" and plan.get("Relation Name") == "jobs":
        yield plan["Node Type"], plan.get("Index Name")
    for child in plan.get("Plans", ()):
        yield from _scans(child)


@pytest.mark.parametrize("statement", sorted(_STATEMENTS))
async def test_a_report_reads_only_its_own_jobs_whatever_the_statistics_say(
    statement: str, store: JobStore, database: psycopg.Connection[Any]
) -> None:
    await store.apply_queue(policy())
    for _ in range(4):
        await store.submit_batch([command() for _ in range(500)])
    # Statistics from before the burst: as far as the planner knows, nothing is in flight.
    database.execute("ALTER TABLE jobs SET (autovacuum_enabled = false)")
    database.execute("ANALYZE jobs")
    claimed = [await store.claim("default", [f"w{n}"] * 400, lease_s=30) for n in range(4)]
    reported = [job.id for job in claimed[0][:100]]
    count = len(reported)
    params = {
        "ids": reported,
        "attempts": [1] * count,
        "outputs": ["null"] * count,
        "output_truncateds": [False] * count,
        "exit_codes": [0] * count,
        "run_times_s": ["0.001"] * count,
        "worker_id": "w0",
        "now": datetime.now(UTC),
        "lease_expires_at": datetime.now(UTC),
    }

    row = database.execute("EXPLAIN (FORMAT JSON) " + _STATEMENTS[statement], params).fetchone()

    assert row is not None
    scans = list(_scans(row[0][0]["Plan"]))
    assert scans, "the plan reads no jobs at all"
    assert set(scans) == {("Index Scan", "jobs_pkey")}, scans
