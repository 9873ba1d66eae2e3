"""Schema migrations: the SQL files in ``migrations/`` (``NNNN_name.sql``), applied in order,
each once, each in its own transaction, recorded in ``schema_migrations``.

Many processes may start at once (API pods, workers, ``moderation db upgrade``): every
migration's transaction first takes a transaction-level advisory lock, so one process applies
it while the others wait, then find it recorded and skip it. A migration that fails is rolled
back whole (PostgreSQL's DDL is transactional): the schema stays at the previous version and the
error names the file. A file changed after it was applied is reported (its checksum differs),
never re-run: schema changes go in a new file.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg_pool import ConnectionPool

from moderation.adapters.postgres.errors import TRANSIENT_ERRORS, database_errors
from moderation.exceptions import MigrationError

__all__ = [
    "LOCK_KEY",
    "MIGRATIONS_DIR",
    "Migration",
    "MigrationState",
    "current",
    "migrations",
    "pending",
    "require_current",
    "state",
    "state_of",
    "upgrade",
]

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
#: The advisory lock every migration transaction takes (a constant of this project:
#: ``hashtext('moderation.schema_migrations')`` would do as well, but a literal is greppable).
LOCK_KEY = 7_461_032_118_520_417
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True)
class Migration:
    """One SQL file: ``0001_jobs.sql`` is version 1, name ``0001_jobs``."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass(frozen=True)
class MigrationState:
    """What a database has applied, against what this code knows."""

    applied: list[str]
    pending: list[str]
    #: Applied files whose content changed since (never re-run; worth a look).
    changed: list[str]
    #: Versions in the database this code does not know (a newer release ran here).
    unknown: list[str]


def migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migrations in ``directory``, in version order.

    Raises:
        MigrationError: a ``.sql`` file's name is not ``NNNN_name.sql``, or two share a version.
    """
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE.match(path.name)
        if match is None:
            raise MigrationError(f"{path}: a migration's file name must be NNNN_lowercase_name.sql")
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"{path}: version {version} is also {found[version].name}.sql")
        found[version] = Migration(version, path.stem, path.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


def _applied(conn: psycopg.Connection[tuple[object, ...]]) -> dict[int, tuple[str, str]]:
    exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return {}
    rows = conn.execute("SELECT version, name, checksum FROM schema_migrations").fetchall()
    return {int(str(v)): (str(n), str(c)) for v, n, c in rows}


def upgrade(pool: ConnectionPool, *, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply the pending migrations, in order; returns the names this call applied (empty when
    the schema is current, or when other processes applied them meanwhile).

    Raises:
        MigrationError: a migration failed (rolled back; the names of those applied before it
            are logged) or the files cannot be read.
        DatabaseUnavailable: the database cannot be reached.
    """
    wanted = migrations(directory)
    done: list[str] = []
    with database_errors("database (migrations)"), pool.connection() as conn:
        conn.commit()  # nothing open: each transaction() below is a real BEGIN ... COMMIT
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
            conn.execute(_CREATE_TABLE)
        applied = _applied(conn)
        conn.commit()
        for migration in wanted:
            if migration.version in applied:
                continue
            try:
                with conn.transaction():
                    # Migrations may take longer than requests: no statement timeout here.
                    conn.execute("SET LOCAL statement_timeout = 0")
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
                    row = conn.execute(
                        "SELECT 1 FROM schema_migrations WHERE version = %s",
                        (migration.version,),
                    ).fetchone()
                    if row is not None:  # another process applied it while we waited
                        continue
                    # No parameters: psycopg sends the file as one simple query (several
                    # statements allowed), inside this transaction.
                    conn.execute(migration.sql.encode())
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) "
                        "VALUES (%s, %s, %s)",
                        (migration.version, migration.name, migration.checksum),
                    )
            except TRANSIENT_ERRORS:
                raise
            except psycopg.Error as exc:
                raise MigrationError(
                    f"migration {migration.name}.sql failed and was rolled back "
                    f"(applied before it in this run: {done or 'none'}): {exc}"
                ) from exc
            log.info("applied migration %s", migration.name)
            done.append(migration.name)
    for name in state_of(wanted, applied).changed:
        log.warning("migration %s.sql changed after it was applied (not re-run)", name)
    return done


def state_of(wanted: list[Migration], applied: dict[int, tuple[str, str]]) -> MigrationState:
    known = {m.version: m for m in wanted}
    return MigrationState(
        applied=[applied[v][0] for v in sorted(applied)],
        pending=[m.name for m in wanted if m.version not in applied],
        changed=[
            m.name for m in wanted if m.version in applied and applied[m.version][1] != m.checksum
        ],
        unknown=[applied[v][0] for v in sorted(applied) if v not in known],
    )


def state(pool: ConnectionPool, *, directory: Path = MIGRATIONS_DIR) -> MigrationState:
    """What the database has applied and what is pending (reads only).

    Raises:
        DatabaseUnavailable: the database cannot be reached.
    """
    wanted = migrations(directory)
    with database_errors("database"), pool.connection() as conn:
        applied = _applied(conn)
    return state_of(wanted, applied)


def current(pool: ConnectionPool) -> list[str]:
    """The names of the applied migrations, oldest first (empty: a new database)."""
    return state(pool).applied


def pending(pool: ConnectionPool, *, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """The names of the migrations this code knows and the database has not applied."""
    return state(pool, directory=directory).pending


def require_current(pool: ConnectionPool, *, directory: Path = MIGRATIONS_DIR) -> None:
    """Refuse to run against a schema older than this code (``migrate_at_start`` false).

    Raises:
        MigrationError: migrations are pending.
        DatabaseUnavailable: the database cannot be reached.
    """
    missing = pending(pool, directory=directory)
    if missing:
        raise MigrationError(
            f"the database schema is behind this release: pending {', '.join(missing)}; "
            "run `moderation db upgrade`"
        )
