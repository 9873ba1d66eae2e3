"""Schema migrations on a real PostgreSQL (pgserver): from an empty database, from every
previous version, idempotent, concurrent (two processes apply each migration once), a failing
migration rolled back whole, and the ``moderation db`` commands."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg_pool import ConnectionPool
from pydantic import SecretStr

from moderation.adapters.postgres.migrate import (
    MIGRATIONS_DIR,
    current,
    migrations,
    require_current,
    state,
    upgrade,
)
from moderation.adapters.postgres.pool import open_pool
from moderation.exceptions import DatabaseUnavailable, MigrationError
from moderation.settings import DatabaseSettings, Settings
from tests.servers import PostgresServer, database_name

pytestmark = pytest.mark.xdist_group("postgres")

SETTINGS = DatabaseSettings(pool_min_size=1, pool_max_size=2)


@pytest.fixture
def empty_url(pg_server: PostgresServer) -> Iterator[str]:
    """A new, empty database (no schema_migrations table)."""
    url = pg_server.create_database()
    try:
        yield url
    finally:
        pg_server.drop_database(database_name(url))


@pytest.fixture
def pool(empty_url: str) -> Iterator[ConnectionPool]:
    pool = open_pool(SETTINGS, url=empty_url)
    try:
        yield pool
    finally:
        pool.close()


def schema_of(url: str) -> list[tuple[str, ...]]:
    """Every table, column, index and function of the public schema (how to compare two
    databases' schemas)."""
    with psycopg.connect(url) as conn:
        columns = conn.execute(
            "SELECT table_name, column_name, data_type, is_nullable, "
            "coalesce(column_default, '') FROM information_schema.columns "
            "WHERE table_schema = 'public' AND table_name <> 'schema_migrations'"
        ).fetchall()
        indexes = conn.execute(
            "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
        ).fetchall()
        functions = conn.execute(
            "SELECT p.proname, pg_get_function_arguments(p.oid), '' FROM pg_proc p "
            "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public'"
        ).fetchall()
    return sorted(tuple(str(v) for v in row) for row in [*columns, *indexes, *functions])


def write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(textwrap.dedent(text))
    return directory


def test_upgrade_from_empty_applies_every_migration_in_order_then_nothing(
    pool: ConnectionPool,
) -> None:
    names = [m.name for m in migrations()]
    assert names, "the project ships migrations"
    assert current(pool) == []
    assert state(pool).pending == names

    assert upgrade(pool) == names
    assert current(pool) == names
    assert upgrade(pool) == []  # idempotent: a second run (every later start) applies nothing
    found = state(pool)
    assert (found.pending, found.changed, found.unknown) == ([], [], [])
    require_current(pool)  # no error
    with pool.connection() as conn:
        rows = conn.execute("SELECT version, name FROM schema_migrations ORDER BY 1").fetchall()
    assert [name for _, name in rows] == names
    assert [v for v, _ in rows] == [m.version for m in migrations()]


@pytest.mark.parametrize("previous", range(len(migrations())))
def test_upgrade_from_each_previous_version_gives_the_schema_of_a_new_database(
    pg_server: PostgresServer, tmp_path: Path, previous: int
) -> None:
    """A database at any earlier release (its first ``previous`` migrations applied) upgrades
    to exactly the schema a new database gets."""
    wanted = migrations()
    older = tmp_path / "older"
    older.mkdir()
    for migration in wanted[:previous]:
        shutil.copy(MIGRATIONS_DIR / f"{migration.name}.sql", older)
    fresh_url = pg_server.create_database()
    old_url = pg_server.create_database()
    try:
        with open_pool(SETTINGS, url=fresh_url) as fresh:
            upgrade(fresh)
        with open_pool(SETTINGS, url=old_url) as old:
            assert upgrade(old, directory=older) == [m.name for m in wanted[:previous]]
            with pytest.raises(MigrationError, match="pending"):
                require_current(old)
            assert upgrade(old) == [m.name for m in wanted[previous:]]
            assert current(old) == [m.name for m in wanted]
        assert schema_of(old_url) == schema_of(fresh_url)
    finally:
        pg_server.drop_database(database_name(fresh_url))
        pg_server.drop_database(database_name(old_url))


RACE = {
    # Slow on purpose: the second process reaches the lock while the first holds it.
    "0001_first.sql": """
        CREATE TABLE applied_log (migration text NOT NULL, backend integer NOT NULL);
        INSERT INTO applied_log VALUES ('0001', pg_backend_pid());
        SELECT pg_sleep(0.5);
    """,
    "0002_second.sql": """
        INSERT INTO applied_log VALUES ('0002', pg_backend_pid());
    """,
    "0003_third.sql": """
        ALTER TABLE applied_log ADD COLUMN note text;
        INSERT INTO applied_log VALUES ('0003', pg_backend_pid(), 'non-idempotent DDL above');
    """,
}

UPGRADER = """
import json, sys
from pathlib import Path
from moderation.adapters.postgres.migrate import upgrade
from moderation.adapters.postgres.pool import open_pool
from moderation.settings import DatabaseSettings

print("ready", flush=True)
sys.stdin.readline()  # start together
with open_pool(DatabaseSettings(pool_min_size=1, pool_max_size=1), url=sys.argv[1]) as pool:
    print(json.dumps(upgrade(pool, directory=Path(sys.argv[2]))), flush=True)
"""


def test_concurrent_upgrades_in_two_processes_apply_each_migration_once(
    empty_url: str, tmp_path: Path
) -> None:
    directory = write(tmp_path / "race", RACE)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", UPGRADER, empty_url, str(directory)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for proc in procs:  # both imported everything and wait at the start line
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    outputs = [proc.communicate(timeout=120) for proc in procs]
    for proc, (_, stderr) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, stderr
    applied = [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in outputs]
    # Between them, each migration was applied by exactly one process.
    assert sorted(applied[0] + applied[1]) == ["0001_first", "0002_second", "0003_third"]
    with psycopg.connect(empty_url) as conn:
        log = conn.execute("SELECT migration FROM applied_log ORDER BY migration").fetchall()
        recorded = conn.execute("SELECT count(*) FROM schema_migrations").fetchone()
    assert [m for (m,) in log] == ["0001", "0002", "0003"]
    assert recorded == (3,)


def test_a_failing_migration_is_rolled_back_whole_and_named(
    pool: ConnectionPool, tmp_path: Path
) -> None:
    directory = write(
        tmp_path / "bad",
        {
            "0001_good.sql": "CREATE TABLE good (x integer);",
            "0002_bad.sql": "CREATE TABLE half (x integer);\nSELECT 1 / 0;",
            "0003_after.sql": "CREATE TABLE after_bad (x integer);",
        },
    )
    with pytest.raises(MigrationError, match=r"0002_bad\.sql failed and was rolled back"):
        upgrade(pool, directory=directory)
    assert current(pool) == ["0001_good"]
    with pool.connection() as conn:
        tables = conn.execute(
            "SELECT to_regclass('good') IS NOT NULL, to_regclass('half') IS NOT NULL, "
            "to_regclass('after_bad') IS NOT NULL"
        ).fetchone()
    assert tables == (True, False, False)
    # Fixed, the same upgrade goes on from where it stopped.
    (directory / "0002_bad.sql").write_text("CREATE TABLE half (x integer);")
    assert upgrade(pool, directory=directory) == ["0002_bad", "0003_after"]


def test_an_applied_file_changed_later_is_reported_not_rerun(
    pool: ConnectionPool, tmp_path: Path
) -> None:
    directory = write(tmp_path / "m", {"0001_t.sql": "CREATE TABLE t (x integer);"})
    assert upgrade(pool, directory=directory) == ["0001_t"]
    (directory / "0001_t.sql").write_text("CREATE TABLE t (x integer, y integer);")
    assert upgrade(pool, directory=directory) == []
    assert state(pool, directory=directory).changed == ["0001_t"]
    (directory / "0001_t.sql").unlink()
    assert state(pool, directory=directory).unknown == ["0001_t"]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"1_short.sql": "SELECT 1;"}, "NNNN_lowercase_name.sql"),
        ({"0001_a.sql": "SELECT 1;", "0001_b.sql": "SELECT 1;"}, "version 1 is also 0001_a"),
    ],
)
def test_badly_named_migration_files_are_refused(
    tmp_path: Path, files: dict[str, str], message: str
) -> None:
    with pytest.raises(MigrationError, match=message):
        migrations(write(tmp_path / "m", files))


def test_an_unreachable_database_is_transient_and_named(tmp_path: Path) -> None:
    settings = DatabaseSettings(pool_timeout_s=1, connect_timeout_s=1)
    url = f"postgresql://postgres:@/postgres?host={tmp_path}"  # no server on this socket
    with pytest.raises(DatabaseUnavailable, match="cannot connect to the database"):
        open_pool(settings, url=url)


def test_no_url_is_a_configuration_error() -> None:
    from moderation.exceptions import ConfigurationError

    with pytest.raises(ConfigurationError, match="MODERATION_DATABASE__URL"):
        open_pool(DatabaseSettings())


def test_database_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODERATION_DATABASE__URL", "postgresql://u:s3cret@db:5432/moderation")
    monkeypatch.setenv("MODERATION_DATABASE__POOL_MAX_SIZE", "20")
    settings = Settings()
    assert isinstance(settings.database.url, SecretStr)
    assert settings.database.url.get_secret_value() == "postgresql://u:s3cret@db:5432/moderation"
    assert "s3cret" not in repr(settings.database)
    assert settings.database.pool_max_size == 20
    # A child process gets the same database settings.
    monkeypatch.delenv("MODERATION_DATABASE__URL")
    monkeypatch.delenv("MODERATION_DATABASE__POOL_MAX_SIZE")
    for key, value in settings.to_env().items():
        if key.startswith("MODERATION_"):
            monkeypatch.setenv(key, value)
    assert Settings().database == settings.database
    with pytest.raises(ValueError, match="pool_min_size"):
        DatabaseSettings(pool_min_size=5, pool_max_size=2)


def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**Settings(environment="development").to_env(), "MODERATION_DATABASE__URL": url}
    return subprocess.run(
        [sys.executable, "-m", "moderation.cli", "db", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_db_commands_upgrade_and_report_status(empty_url: str) -> None:
    names = [m.name for m in migrations()]
    before = cli(empty_url, "status", "--check")
    assert before.returncode == 1, before.stderr
    assert "pending: " + ", ".join(names) in before.stdout

    done = cli(empty_url, "upgrade")
    assert done.returncode == 0, done.stderr
    assert f"applied {len(names)} migration(s)" in done.stdout

    status = cli(empty_url, "status", "--json", "--check")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout) == {
        "applied": names,
        "pending": [],
        "changed": [],
        "unknown": [],
    }
    again = cli(empty_url, "upgrade")
    assert again.returncode == 0 and "schema is current" in again.stdout


def test_job_partitions_are_made_ahead_and_dropped_whole(pg_url: str) -> None:
    """0001: daily partitions of ``jobs`` exist around today; retention drops old ones whole."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        today = conn.execute("SELECT (now() AT TIME ZONE 'UTC')::date").fetchone()
        assert today is not None
        made = conn.execute(
            "SELECT moderation_make_job_partitions(%s::date - 10, %s::date - 9)",
            (today[0], today[0]),
        ).fetchone()
        assert made == (2,)
        conn.execute(
            "INSERT INTO jobs (id, day, tenant, created_at, job, result) "
            "VALUES ('t/old', %s::date - 10, 't', now(), '{}', '{}'), "
            "('t/new', %s::date, 't', now(), '{}', '{}')",
            (today[0], today[0]),
        )
        dropped = conn.execute(
            "SELECT * FROM moderation_drop_job_partitions(%s::date - 9)", (today[0],)
        ).fetchall()
        old = today[0] - timedelta(days=10)
        assert dropped == [(f"jobs_{old:%Y%m%d}",)]
        left = conn.execute("SELECT id FROM jobs ORDER BY id").fetchall()
        assert left == [("t/new",)]
        # Again: nothing more to make or drop.
        assert conn.execute(
            "SELECT moderation_make_job_partitions(%s::date - 9, %s::date - 9)",
            (today[0], today[0]),
        ).fetchone() == (0,)


#: The migrations of the previous release (as of commit 3e560ee): the schema a database in
#: production may be at when this release starts on it.
PREVIOUS_RELEASE = [
    "0001_jobs",
    "0010_review",
    "0011_banks",
    "0020_review_away",
    "0021_review_taken_back",
]


def test_upgrade_from_the_previous_release_keeps_its_data(
    pg_server: PostgresServer, tmp_path: Path
) -> None:
    """A database at the previous release's schema, with rows written by that release, upgrades
    to the current schema and the current adapters read the same rows back."""
    from psycopg.types.json import Jsonb

    from moderation.adapters.memory import MemoryJobTransients
    from moderation.adapters.postgres.banks import PostgresBankStore
    from moderation.adapters.postgres.jobs import PostgresJobStore
    from moderation.adapters.postgres.review import PostgresReviewQueue
    from moderation.adapters.postgres.reviewers import PostgresReviewerStore
    from moderation.core.image_ref import ImageRef
    from moderation.core.jobs import Job, JobError, JobResult
    from moderation.core.review import rank_key
    from tests.test_review_queue import make_item, world_policy

    assert [m.name for m in migrations()][: len(PREVIOUS_RELEASE)] == PREVIOUS_RELEASE
    older = tmp_path / "previous"
    older.mkdir()
    for name in PREVIOUS_RELEASE:
        shutil.copy(MIGRATIONS_DIR / f"{name}.sql", older)
    url = pg_server.create_database()
    item = make_item(world_policy(), "upgrade-job", score=0.7)
    old_job = Job(id="acme/old-job", image=ImageRef.for_inline("acme/old-job"), tenant="acme")
    old_result = JobResult.ended(
        old_job, error=JobError(code="image_corrupt", message="not an image")
    )
    try:
        with open_pool(SETTINGS, url=url) as pool:
            assert upgrade(pool, directory=older) == PREVIOUS_RELEASE
            with pool.connection() as conn:  # what the previous release wrote, in its SQL
                conn.execute(
                    "INSERT INTO reviewer_accounts (username, role, password_hash, created_at)"
                    " VALUES ('carol', 'admin', '$argon2id$hash', 1700000000)"
                )
                conn.execute("INSERT INTO review_policies VALUES (%s)", (item.policy_id,))
                conn.execute(
                    "INSERT INTO review_items (review_id, policy_id, job_id, item, rank,"
                    " created_at) VALUES (%s, %s, %s, %s, %s, %s)",
                    (
                        item.review_id,
                        item.policy_id,
                        item.job_id,
                        Jsonb(item.model_dump(mode="json")),
                        rank_key(item.severity, item.score, item.created_at, age_doubling_s=900),
                        item.created_at,
                    ),
                )
                conn.execute(
                    "INSERT INTO banks (name, next_id, next_segment, entries, removed)"
                    " VALUES ('old-bank', 2, 1, 1, 1)"
                )
                conn.execute("INSERT INTO bank_segments VALUES ('old-bank', 0, 0, 2)")
                conn.execute(
                    "INSERT INTO jobs (id, day, tenant, created_at, job, result, status)"
                    " VALUES (%s, %s, 'acme', %s, %s, %s, 'done')",
                    (
                        old_job.id,
                        old_job.created_at.date(),
                        old_job.created_at,
                        old_job.model_dump_json(),
                        old_result.model_dump_json(),
                    ),
                )
                conn.execute(
                    "INSERT INTO bank_entries (bank, id, pdq, added_at, removed) VALUES"
                    " ('old-bank', 0, %s, now(), false), ('old-bank', 1, %s, now(), true)",
                    (b"\x01" * 32, b"\x02" * 32),
                )
            assert upgrade(pool) == [m.name for m in migrations()[len(PREVIOUS_RELEASE) :]]
            require_current(pool)
            account = PostgresReviewerStore(pool).get("carol")
            assert account is not None and account.role.value == "admin"
            banks = PostgresBankStore(pool)
            assert [e.pdq for e in banks.scan("old-bank")] == ["01" * 32]
            assert banks.manifest("old-bank").removed == frozenset({1})
            jobs = PostgresJobStore(pool, MemoryJobTransients())
            assert jobs.get_results([old_job.id]) == [old_result]  # JSONB only, before 0140
            assert jobs.get_job(old_job.id) == old_job
            queue = PostgresReviewQueue(pool, lease_s=60, age_doubling_s=900)
            assert queue.item(item.review_id) == item
            claim = queue.claim("rv_upgrade")
            assert claim is not None and claim.item == item
    finally:
        pg_server.drop_database(database_name(url))
