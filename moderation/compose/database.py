"""PostgreSQL for a process: its connection pool, with the schema brought up to date at start
(``database.migrate_at_start``: pending migrations are applied under the advisory lock, so many
processes starting at once apply each one once) or checked (false: a process refuses to run
against an older schema)."""

from __future__ import annotations

import logging

from moderation.adapters.postgres.migrate import require_current, upgrade
from moderation.adapters.postgres.pool import ConnectionPool, open_pool
from moderation.settings import Settings

__all__ = ["database_configured", "open_database"]

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
