"""Reports and claims find their jobs by primary key, however many attempts are in flight
and however old the planner's statistics are (``queries._REPORTED_JOBS``,
``queries._CLAIM_UPDATE``).

Joined plainly, the report statements read every attempt in flight from jobs_in_flight,
once per batch or, with statistics from before a burst of claims, once per reported job:
thousands of times slower with thousands of attempts in flight; and a claim hashed a scan
of the whole table. Only the plan shows it.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, LiteralString

import psycopg
import pytest

from jobqueue.store import JobStore, ManualClock, queries
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
        "started_ats": [datetime.now(UTC)] * count,
        "worker_id": "w0",
        "now": datetime.now(UTC),
        "lease_expires_at": datetime.now(UTC),
    }

    row = database.execute("EXPLAIN (FORMAT JSON) " + _STATEMENTS[statement], params).fetchone()

    assert row is not None
    scans = list(_scans(row[0][0]["Plan"]))
    assert scans, "the plan reads no jobs at all"
    assert set(scans) == {("Index Scan", "jobs_pkey")}, scans


def _update_scans(plan: dict[str, Any]) -> Iterator[tuple[str, str | None]]:
    """Like ``_scans``, leaving out the CTEs' plans: the scans that find the rows to update."""
    for child in plan.get("Plans", ()):
        if child.get("Parent Relationship") != "InitPlan":
            if child.get("Relation Name") == "jobs":
                yield child["Node Type"], child.get("Index Name")
            yield from _update_scans(child)


async def test_a_claim_updates_its_jobs_through_the_primary_key_not_a_table_scan(
    store: JobStore, database: psycopg.Connection[Any], clock: ManualClock
) -> None:
    # 10,000 finished jobs and a backlog of 10,000. The planner expects a claim to take a
    # tenth of the backlog (it cannot see the LIMIT's value) and, joined plainly, hashed a
    # scan of the whole table at each claim.
    await store.apply_queue(policy())
    for _ in range(40):
        await store.submit_batch([command() for _ in range(500)])
    database.execute(
        "UPDATE jobs SET state = 'succeeded', finished_at = now()"
        " WHERE id IN (SELECT id FROM jobs ORDER BY id LIMIT 10000)"
    )
    database.execute("ANALYZE jobs")
    now = clock.now()
    params = {"queue": "default", "worker_slots": ["w0"] * 256, "now": now, "lease_expires_at": now}

    row = database.execute("EXPLAIN (FORMAT JSON) " + queries.CLAIM_FOR_DISPATCH, params).fetchone()

    assert row is not None
    scans = set(_update_scans(row[0][0]["Plan"]))
    assert scans == {("Index Scan", "jobs_pkey")}, scans
