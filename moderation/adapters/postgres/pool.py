"""The connection pool of a process (psycopg 3's ``ConnectionPool``): one per process, opened
by the composition root from :class:`~moderation.settings.DatabaseSettings` and closed with the
process."""

from __future__ import annotations

from typing import Any

from psycopg_pool import ConnectionPool, PoolTimeout

from moderation.adapters.postgres.errors import database_errors
from moderation.exceptions import ConfigurationError, DatabaseUnavailable
from moderation.settings import DatabaseSettings

__all__ = ["ConnectionPool", "connection_kwargs", "open_pool"]


def connection_kwargs(
    settings: DatabaseSettings, *, statement_timeout: bool = True, application: str = "moderation"
) -> dict[str, Any]:
    """Connection parameters added to the URL's: connect timeout, application name and (unless
    ``statement_timeout`` is false, as for migrations) the server-side statement timeout."""
    kwargs: dict[str, Any] = {
        "connect_timeout": settings.connect_timeout_s,
        "application_name": application,
    }
    if statement_timeout and settings.statement_timeout_ms:
        kwargs["options"] = f"-c statement_timeout={settings.statement_timeout_ms}"
    return kwargs


def open_pool(
    settings: DatabaseSettings,
    *,
    url: str | None = None,
    application: str = "moderation",
    wait: bool = True,
) -> ConnectionPool:
    """An open pool of connections to ``url`` (default ``settings.url``), sized by the settings.

    ``wait``: block until ``pool_min_size`` connections are open (a process that cannot reach its
    database at start fails at once, with a clear error, instead of at its first request).

    Raises:
        ConfigurationError: no URL is configured.
        DatabaseUnavailable: the server cannot be reached within ``pool_timeout_s``.
    """
    conninfo = url or (settings.url.get_secret_value() if settings.url else None)
    if not conninfo:
        raise ConfigurationError(
            "no database configured: set MODERATION_DATABASE__URL (or run `moderation demo`, "
            "which starts an embedded PostgreSQL)"
        )
    pool = ConnectionPool(
        conninfo,
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        timeout=settings.pool_timeout_s,
        kwargs=connection_kwargs(settings, application=application),
        name=application,
        # A connection is checked as it leaves the pool (one round trip): after a database
        # restart, dead connections are replaced instead of answering 503 until used up.
        check=ConnectionPool.check_connection,
        open=False,
    )
    with database_errors("database"):
        pool.open(wait=False)
    if wait and settings.pool_min_size:
        try:
            pool.wait(timeout=settings.pool_timeout_s)
        except PoolTimeout as exc:
            pool.close()
            raise DatabaseUnavailable(
                f"cannot connect to the database within {settings.pool_timeout_s:g} s "
                "(is it running, and is MODERATION_DATABASE__URL right?)"
            ) from exc
    return pool
