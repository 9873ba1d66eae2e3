"""Shared fixtures: real servers on free ports, the bundled test model, settings in tmp dirs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from moderation.settings import Settings
from tests.servers import MotoServer, PostgresServer, database_name, valkey_url

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def test_model_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings for the bundled test model and the test-world policy; every local path (compile
    cache, audit folder and spool) in a session temp dir, never in the checkout."""
    from moderation import testmodel

    root = tmp_path_factory.mktemp("session")
    base = Settings()
    return Settings(
        environment="development",  # tests of the production checks build their own settings
        model=testmodel.model_settings(),
        policy_paths=[testmodel.POLICY_PATH],
        cache_dir=root / "cache",
        audit=base.audit.model_copy(
            update={"local_dir": root / "audit", "spool_dir": root / "audit-spool"}
        ),
        blobs=base.blobs.model_copy(update={"local_dir": root / "blobs"}),
        # Decisions handed on at once; the tests of the undo window turn it on.
        review=base.review.model_copy(update={"undo_window_s": 0.0}),
    )


@pytest.fixture(scope="session")
def scoring(test_model_settings: Settings, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The test model, the test-world policy and the scoring path (loaded once per process)."""
    from moderation.compose.scoring import build_scoring

    settings = test_model_settings.model_copy(
        update={"cache_dir": tmp_path_factory.mktemp("compile-cache")}
    )
    return build_scoring(settings)


@pytest.fixture
def settings(tmp_path: Path, test_model_settings: Settings) -> Settings:
    """Per-test Settings on the test model with every local path under tmp_path."""
    return test_model_settings.model_copy(
        update={
            "cache_dir": tmp_path / "cache",
            "audit": test_model_settings.audit.model_copy(
                update={"local_dir": tmp_path / "audit", "spool_dir": tmp_path / "spool"}
            ),
            "blobs": test_model_settings.blobs.model_copy(update={"local_dir": tmp_path / "blobs"}),
        }
    )


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A fresh real Redis-protocol server (valkey) for this test, on a free port."""
    with valkey_url() as url:
        yield url


#: The template every test module's database is copied from: migrated once per test process.
PG_TEMPLATE = "moderation_template"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL per test process (pgserver, a Unix socket in a temporary folder),
    with a database ``moderation_template`` at the newest schema (every migration applied)."""
    from moderation.adapters.postgres.migrate import upgrade
    from moderation.adapters.postgres.pool import open_pool
    from moderation.settings import DatabaseSettings

    server = PostgresServer()
    server.start()
    try:
        url = server.create_database(name=PG_TEMPLATE)
        pool = open_pool(DatabaseSettings(pool_min_size=1, pool_max_size=1), url=url)
        try:
            upgrade(pool)
        finally:
            pool.close()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def pg_url(pg_server: PostgresServer) -> Iterator[str]:
    """The URL of a fresh database of this test module, at the newest schema (a copy of the
    migrated template: milliseconds). Tests of one module share it: use distinct ids/tenants."""
    url = pg_server.create_database(template=PG_TEMPLATE)
    try:
        yield url
    finally:
        pg_server.drop_database(database_name(url))


@pytest.fixture
def s3_server() -> Iterator[MotoServer]:
    """A real S3-compatible HTTP server (moto_server process) for this test."""
    server = MotoServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
