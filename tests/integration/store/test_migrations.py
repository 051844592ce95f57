"""The migration runner against a real, empty PostgreSQL database."""

from __future__ import annotations

import re
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from jobqueue.devenv import Environment
from jobqueue.store.migrations import (
    DEFAULT_DIRECTORY,
    MigrationError,
    apply_migrations,
    read_migrations,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def empty_database(devenv: Environment) -> Iterator[str]:
    """A database with nothing in it (not cloned from the migrated template)."""
    assert devenv.postgres is not None
    name = f"empty_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(devenv.postgres.dsn, autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield devenv.postgres.dsn_for(name)
    with psycopg.connect(devenv.postgres.dsn, autocommit=True) as connection:
        connection.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture
def migrations_copy(tmp_path: Path) -> Path:
    """The project's migrations in a directory a test may change."""
    directory = tmp_path / "migrations"
    shutil.copytree(DEFAULT_DIRECTORY, directory)
    return directory


def _columns(dsn: str, table: str) -> set[str]:
    with psycopg.connect(dsn) as connection:
        rows = connection.execute(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = 'public' AND table_name = %s",
            (table,),
        ).fetchall()
    return {name for (name,) in rows}


def _partial_index_predicates(dsn: str) -> dict[str, str]:
    with psycopg.connect(dsn) as connection:
        rows = connection.execute(
            "SELECT c.relname, pg_get_expr(i.indpred, i.indrelid)"
            " FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " JOIN pg_class t ON t.oid = i.indrelid"
            " WHERE t.relname IN ('jobs', 'job_events') AND i.indpred IS NOT NULL"
        ).fetchall()
    return {name: predicate for name, predicate in rows}


def _primary_key(dsn: str, table: str) -> list[str]:
    with psycopg.connect(dsn) as connection:
        rows = connection.execute(
            "SELECT a.attname FROM pg_index i"
            " JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, position) ON true"
            " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
            " WHERE i.indrelid = %s::regclass AND i.indisprimary ORDER BY k.position",
            (table,),
        ).fetchall()
    return [name for (name,) in rows]


def _indexes(dsn: str, table: str) -> set[str]:
    with psycopg.connect(dsn) as connection:
        rows = connection.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = %s", (table,)
        ).fetchall()
    return {name for (name,) in rows}


def test_migrations_create_the_schema_on_an_empty_database(empty_database: str) -> None:
    versions = [migration.version for migration in read_migrations()]

    applied = apply_migrations(empty_database)

    assert applied == versions
    assert {"queues", "jobs", "job_events", "workers", "outbox_progress", "schema_migrations"} <= (
        set(_tables(empty_database))
    )
    assert {
        "id", "queue", "kind", "payload", "priority", "state", "attempt", "max_attempts",
        "timeout_s", "idempotency_key", "labels", "run_after", "created_at", "updated_at",
        "assigned_at", "started_at", "finished_at", "worker_id", "lease_expires_at",
        "last_error", "output", "output_truncated", "exit_code",
    } <= _columns(empty_database, "jobs")  # fmt: skip
    assert {
        "id", "job_id", "queue", "kind", "attempt", "occurred_at", "data", "xid",
    } <= _columns(empty_database, "job_events")  # fmt: skip
    assert {"payload_limit_bytes", "allowed_kinds", "concurrency_limit", "paused"} <= _columns(
        empty_database, "queues"
    )
    predicates = _partial_index_predicates(empty_database)
    assert "'pending'" in predicates["jobs_ready"]
    assert "'failed'" in predicates["jobs_retries"]
    assert "'succeeded'" in predicates["jobs_finished"]
    assert "'dead_lettered'" in predicates["jobs_finished"]
    assert "'assigned'" in predicates["jobs_in_flight"]
    assert "'running'" in predicates["jobs_in_flight"]
    assert "jobs_leases" not in predicates  # V5: jobs_in_flight serves lease recovery
    assert "IS NOT NULL" in predicates["jobs_idempotency"]
    assert "labels <> " in predicates["jobs_labels"]
    # V6: the events are keyed by job, and no other index holds (job_id, id).
    assert _primary_key(empty_database, "job_events") == ["job_id", "id"]
    assert "job_events_by_job" not in _indexes(empty_database, "job_events")


def test_the_outbox_progress_starts_before_the_oldest_event_left_unpublished(
    empty_database: str, migrations_copy: Path
) -> None:
    later = sorted(migrations_copy.glob("V*.sql"), key=lambda path: path.name)
    v3 = migrations_copy / "V3__outbox_progress.sql"
    held_back = {path: path.read_text() for path in later if path.name >= v3.name}
    for path in held_back:
        path.unlink()
    apply_migrations(empty_database, migrations_copy)
    with psycopg.connect(empty_database, autocommit=True) as connection:
        for published in (True, True, False, True, False):
            connection.execute(
                "INSERT INTO job_events (job_id, queue, kind, attempt, occurred_at, published_at)"
                " VALUES (gen_random_uuid(), 'q', 'submitted', 0, now(),"
                " CASE WHEN %s THEN now() END)",
                (published,),
            )
    for path, text in held_back.items():
        path.write_text(text)

    apply_migrations(empty_database, migrations_copy)

    with psycopg.connect(empty_database) as connection:
        progress = connection.execute("SELECT xid::text, event_id FROM outbox_progress").fetchall()
        # Events 3 and 5 were unpublished: the relay goes on after event 2.
        assert progress == [("1", 2)]
        connection.execute(
            "INSERT INTO job_events (job_id, queue, kind, attempt, occurred_at)"
            " VALUES (gen_random_uuid(), 'q', 'submitted', 0, now())"
        )
        (newer,) = connection.execute(
            "SELECT xid > '1'::xid8 FROM job_events WHERE id = 6"
        ).fetchone() or (None,)
        assert newer is True


def _tables(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as connection:
        rows = connection.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
    return [name for (name,) in rows]


def test_a_second_run_applies_nothing(empty_database: str) -> None:
    apply_migrations(empty_database)

    assert apply_migrations(empty_database) == []

    with psycopg.connect(empty_database) as connection:
        recorded = connection.execute("SELECT version, name FROM schema_migrations").fetchall()
    assert recorded == [(m.version, m.name) for m in read_migrations()]


def test_a_given_connection_is_used_and_left_as_it_was(empty_database: str) -> None:
    with psycopg.connect(empty_database) as connection:
        applied = apply_migrations(connection)

        assert applied
        assert connection.autocommit is False
        assert connection.execute("SELECT count(*) FROM jobs").fetchone() == (0,)


def test_a_changed_migration_is_refused_naming_the_file(
    empty_database: str, migrations_copy: Path
) -> None:
    apply_migrations(empty_database, migrations_copy)
    first = sorted(migrations_copy.glob("V*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited after it was applied\n")

    with pytest.raises(MigrationError, match=re.escape(first.name)):
        apply_migrations(empty_database, migrations_copy)


def test_a_missing_migration_file_is_refused_naming_the_file(
    empty_database: str, migrations_copy: Path
) -> None:
    extra = migrations_copy / "V999__extra_table.sql"
    extra.write_text("CREATE TABLE extra (id int);\n")
    apply_migrations(empty_database, migrations_copy)
    extra.unlink()

    with pytest.raises(MigrationError, match=r"V999__extra_table\.sql"):
        apply_migrations(empty_database, migrations_copy)


def test_a_failing_migration_is_not_recorded(empty_database: str, migrations_copy: Path) -> None:
    (migrations_copy / "V999__broken.sql").write_text("CREATE TABLE broken (;\n")

    with pytest.raises(MigrationError, match=r"V999__broken\.sql"):
        apply_migrations(empty_database, migrations_copy)

    with psycopg.connect(empty_database) as connection:
        versions = connection.execute("SELECT version FROM schema_migrations").fetchall()
    assert (999,) not in versions
    assert versions  # the good migrations before it stay applied


def test_concurrent_runners_apply_each_migration_once(empty_database: str) -> None:
    runners = 4
    barrier = threading.Barrier(runners)
    results: list[list[int]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with psycopg.connect(empty_database, autocommit=True) as connection:
                barrier.wait(timeout=30)
                results.append(apply_migrations(connection))
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=run, name=f"runner-{n}") for n in range(runners)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    applied = sorted(version for result in results for version in result)
    assert applied == [m.version for m in read_migrations()]
    with psycopg.connect(empty_database) as connection:
        count = connection.execute("SELECT count(*) FROM schema_migrations").fetchone()
    assert count == (len(applied),)
