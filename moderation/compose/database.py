"""PostgreSQL for a process: its connection pool, with the schema brought up to date at start
(``database.migrate_at_start``: pending migrations are applied under the advisory lock, so many
processes starting at once apply each one once) or checked (false: a process refuses to run
against an older schema)."""

from __future__ import annotations

import logging

from moderation.adapters.postgres.migrate import require_current, upgrade
from moderation.adapters.postgres.pool import ConnectionPool, open_pool
from moderation.settings import Settings

__all__ = ["database_configured", "open_database", "warn_local_blobs", "warn_redis_only"]

log = logging.getLogger(__name__)


def database_configured(settings: Settings) -> bool:
    """Whether this process has a database (``database.url`` set; the demo sets it to its
    embedded server's)."""
    return settings.database.url is not None


def open_database(
    settings: Settings, *, application: str = "moderation", migrate: bool | None = None
) -> ConnectionPool:
    """This process's pool, the schema current (``migrate``: default
    ``database.migrate_at_start``). The caller closes it.

    Raises:
        ConfigurationError: no database URL is configured.
        DatabaseUnavailable: the database cannot be reached.
        MigrationError: a migration failed, or (without ``migrate``) migrations are pending.
    """
    pool = open_pool(settings.database, application=application)
    try:
        if settings.database.migrate_at_start if migrate is None else migrate:
            applied = upgrade(pool)
            if applied:
                log.info("database schema upgraded: %s", ", ".join(applied))
        else:
            require_current(pool)
    except BaseException:
        pool.close()
        raise
    return pool


def warn_redis_only(settings: Settings, *, process: str) -> bool:
    """Say loudly, at the start of a process, that its durable state (review queue, reviewer
    accounts, banks, job results) lives in Redis because no database is configured: the
    Redis-only mode is for development; PostgreSQL is the system of record. Returns whether it
    warned."""
    if database_configured(settings) or not settings.redis_url:
        return False
    log.warning(
        "%s: no MODERATION_DATABASE__URL: durable state (review queue, reviewer accounts, hash "
        "banks, job results) is kept in Redis, which is for development only and loses it with "
        "the Redis volume. Set MODERATION_DATABASE__URL (PostgreSQL, the system of record); to "
        "carry over what this Redis holds, run `moderation db import-redis` (docs/runbook.md).",
        process,
    )
    return True


def warn_local_blobs(settings: Settings, *, process: str) -> bool:
    """Say loudly, at the start of a process with a database, that its blobs (review evidence,
    filmstrips, spilled inline images, policy exemplars) go to a local folder: with several API
    and worker pods, each has its own, and one pod cannot read what another wrote. Returns
    whether it warned."""
    if not database_configured(settings) or settings.blobs.bucket:
        return False
    log.warning(
        "%s: no MODERATION_BLOBS__BUCKET: review evidence, filmstrips, spilled inline images and "
        "policy exemplars go to the folder %s, which other pods do not see. With more than one "
        "process on more than one host, set MODERATION_BLOBS__BUCKET (docs/deployment.md).",
        process,
        settings.blobs.local_dir,
    )
    return True
