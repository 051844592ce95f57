"""Bad input is refused with a clear error and writes nothing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import pytest

from jobqueue.errors import InvalidInputError, LimitExceededError, NotFoundError
from jobqueue.store import JobKind, JobStore, NewJob, parse_arguments_json
from tests.integration.store.helpers import command, policy, table_count

pytestmark = pytest.mark.integration


def python(handler: str, arguments: Any = None, queue: str = "default") -> NewJob:
    return NewJob(queue, JobKind.PYTHON, {"handler": handler, "arguments": arguments or {}})


async def _refused(
    database: psycopg.Connection[Any],
    error: type[Exception],
    match: str,
    call: Callable[[], Awaitable[object]],
) -> None:
    with pytest.raises(error, match=match):
        await call()
    assert table_count(database, "jobs") == 0
    assert table_count(database, "job_events") == 0


@pytest.fixture
async def queues(store: JobStore) -> None:
    await store.apply_queue(policy(payload_limit_bytes=1000))
    await store.apply_queue(policy("commands-only", allowed_kinds=frozenset({JobKind.COMMAND})))


@pytest.mark.usefixtures("queues")
async def test_unknown_queue(store: JobStore, database: psycopg.Connection[Any]) -> None:
    await _refused(database, NotFoundError, "unknown queue", lambda: store.submit(command("nope")))


@pytest.mark.usefixtures("queues")
async def test_payload_too_large_names_the_limit(
    store: JobStore, database: psycopg.Connection[Any]
) -> None:
    big = command("default", "echo", "x" * 2000)
    await _refused(database, LimitExceededError, "payload_limit_bytes", lambda: store.submit(big))


@pytest.mark.usefixtures("queues")
async def test_priority_out_of_range(store: JobStore, database: psycopg.Connection[Any]) -> None:
    await _refused(
        database, InvalidInputError, "priority", lambda: store.submit(command(priority=1001))
    )


@pytest.mark.usefixtures("queues")
async def test_empty_argv(store: JobStore, database: psycopg.Connection[Any]) -> None:
    job = NewJob("default", JobKind.COMMAND, {"argv": []})
    await _refused(database, InvalidInputError, "argv", lambda: store.submit(job))


@pytest.mark.usefixtures("queues")
async def test_bad_handler_string(store: JobStore, database: psycopg.Connection[Any]) -> None:
    await _refused(
        database, InvalidInputError, "handler", lambda: store.submit(python("no colon here"))
    )


def test_malformed_arguments_json_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="arguments: not valid JSON"):
        parse_arguments_json("{not json")
    assert parse_arguments_json('{"n": 1}') == {"n": 1}


@pytest.mark.usefixtures("queues")
async def test_kind_not_allowed_by_the_queue(
    store: JobStore, database: psycopg.Connection[Any]
) -> None:
    job = python("app.tasks:run", queue="commands-only")
    await _refused(database, InvalidInputError, "does not allow python", lambda: store.submit(job))


@pytest.mark.usefixtures("queues")
async def test_a_batch_with_one_bad_job_writes_none(
    store: JobStore, database: psycopg.Connection[Any]
) -> None:
    batch = [command(), command(), command(max_attempts=0), command()]
    await _refused(
        database, InvalidInputError, r"jobs\[2\]\.max_attempts", lambda: store.submit_batch(batch)
    )


@pytest.mark.usefixtures("queues")
async def test_a_batch_over_the_limit_writes_none(
    store: JobStore, database: psycopg.Connection[Any]
) -> None:
    batch = [command() for _ in range(1001)]
    await _refused(database, LimitExceededError, "at most 1000", lambda: store.submit_batch(batch))


@pytest.mark.usefixtures("queues")
async def test_bad_page_token(store: JobStore) -> None:
    with pytest.raises(InvalidInputError, match="page_token"):
        await store.list_jobs(page_token="garbage!")
