"""Apply the SQL migrations in ``jobqueue/store/schema/`` to a database, once each, in order.

Files are named ``V<n>__<what>.sql`` and applied by ascending ``n``. Each one runs in a
transaction of its own and is recorded in ``schema_migrations`` (version, name, sha256 of
the file) in that same transaction, so a migration is either applied and recorded or
neither. An applied migration is never edited: if its file's checksum changed, or its
file is gone, the runner refuses to go on and names the file.

Several operator replicas may start at once. The whole run holds a session-level
advisory lock (``MIGRATION_LOCK_KEY``), so one replica applies while the others wait,
then find nothing left to do.

The runner is synchronous (psycopg's blocking API): it runs once at start-up and in test
set-up; an async caller can run it with ``asyncio.to_thread``.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from jobqueue.errors import PermanentError

logger = logging.getLogger(__name__)

# The migrations ship inside the package (package data, see pyproject.toml), so an
# installed wheel or a container image finds them where a checkout does.
DEFAULT_DIRECTORY = Path(__file__).resolve().parent / "schema"

# The advisory lock every runner takes: the bytes of "jobqmig" read as a big-endian
# integer. Advisory lock keys are global to the database cluster's database, so the
# value only has to differ from keys other software using this database might take.
MIGRATION_LOCK_KEY = int.from_bytes(b"jobqmig", "big")

_FILE_NAME = re.compile(r"V(?P<version>[0-9]+)__(?P<name>[A-Za-z0-9_]+)\.sql")

_CREATE_HISTORY = """
CREATE TABLE IF NOT EXISTS schema_migrations (
  version int PRIMARY KEY,
  name text NOT NULL,
  checksum text NOT NULL,
  applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(PermanentError):
    """A migration cannot be applied, or the applied history no longer matches the files."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path
    sql: str
    checksum: str  # sha256 of the file's bytes, hex

    @property
    def file_name(self) -> str:
        return self.path.name


def read_migrations(directory: Path = DEFAULT_DIRECTORY) -> list[Migration]:
    """The migration files of ``directory``, by version; other files (README) are ignored."""
    if not directory.is_dir():
        raise MigrationError(f"migrations directory {directory} does not exist")
    migrations: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.fullmatch(path.name)
        if match is None:
            raise MigrationError(
                f"{path.name}: not a migration file name (expected V<n>__<what>.sql)"
            )
        version = int(match["version"])
        if version in migrations:
            raise MigrationError(
                f"{path.name}: version {version} is also {migrations[version].file_name}"
            )
        content = path.read_bytes()
        migrations[version] = Migration(
            version=version,
            name=match["name"],
            path=path,
            sql=content.decode("utf-8"),
            checksum=hashlib.sha256(content).hexdigest(),
        )
    return [migrations[version] for version in sorted(migrations)]


def apply_migrations(
    dsn_or_connection: str | psycopg.Connection[Any],
    directory: Path | None = None,
) -> list[int]:
    """Apply every migration not yet applied; return the versions applied by this call.

    A connection that is given is used and left open, back in its own autocommit mode;
    it must not be inside a transaction.
    """
    migrations = read_migrations(directory or DEFAULT_DIRECTORY)
    if isinstance(dsn_or_connection, str):
        try:
            with psycopg.connect(dsn_or_connection, autocommit=True) as connection:
                return _apply_locked(connection, migrations)
        except psycopg.OperationalError as error:
            raise MigrationError(f"cannot migrate the database: {error}") from error

    connection = dsn_or_connection
    was_autocommit = connection.autocommit
    # Each migration commits on its own, which needs the connection in autocommit mode;
    # otherwise the lock and the first query would open one transaction around them all.
    connection.autocommit = True
    try:
        return _apply_locked(connection, migrations)
    finally:
        connection.autocommit = was_autocommit


def _apply_locked(connection: psycopg.Connection[Any], migrations: list[Migration]) -> list[int]:
    connection.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
    try:
        connection.execute(_CREATE_HISTORY)
        applied = _applied(connection)
        _check_history(applied, migrations)
        done = []
        for migration in migrations:
            if migration.version not in applied:
                _apply_one(connection, migration)
                done.append(migration.version)
        return done
    finally:
        connection.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))


def _applied(connection: psycopg.Connection[Any]) -> dict[int, tuple[str, str]]:
    cursor = connection.execute("SELECT version, name, checksum FROM schema_migrations")
    return {version: (name, checksum) for version, name, checksum in cursor.fetchall()}


def _check_history(applied: dict[int, tuple[str, str]], migrations: list[Migration]) -> None:
    """Refuse to go on when an applied migration's file changed or disappeared."""
    by_version = {migration.version: migration for migration in migrations}
    for version, (name, checksum) in sorted(applied.items()):
        migration = by_version.get(version)
        if migration is None:
            raise MigrationError(
                f"V{version}__{name}.sql was applied to this database but its file is missing"
            )
        if migration.checksum != checksum:
            raise MigrationError(
                f"{migration.file_name} changed after it was applied (checksum {checksum[:12]}"
                f" recorded, {migration.checksum[:12]} now); write a new migration instead"
            )


def _apply_one(connection: psycopg.Connection[Any], migration: Migration) -> None:
    logger.info("Applying migration %s.", migration.file_name)
    try:
        with connection.transaction():
            # Without parameters the file goes as one simple query, which may hold many
            # statements (and dollar-quoted function bodies).
            connection.execute(migration.sql.encode("utf-8"))
            connection.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                (migration.version, migration.name, migration.checksum),
            )
    except psycopg.Error as error:
        raise MigrationError(f"{migration.file_name} failed: {error}") from error
