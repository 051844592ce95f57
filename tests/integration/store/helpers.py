"""Small builders shared by the store's integration tests."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from jobqueue.store import Backoff, JobKind, NewJob, QueuePolicy

# Retries wait 10 s, 20 s, 40 s ... with no jitter: easy to check and to skip with the clock.
BACKOFF = Backoff(initial_s=10, multiplier=2, max_s=300, jitter=0)


def policy(name: str = "default", **overrides: Any) -> QueuePolicy:
    return QueuePolicy(name, **({"backoff": BACKOFF} | overrides))


def command(queue: str = "default", *argv: str, **fields: Any) -> NewJob:
    return NewJob(queue, JobKind.COMMAND, {"argv": list(argv) or ["true"]}, **fields)


def table_count(database: psycopg.Connection[Any], table: str) -> int:
    query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
    row = database.execute(query).fetchone()
    assert row is not None
    return int(row[0])
