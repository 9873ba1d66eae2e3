"""``moderation db``: the PostgreSQL schema (``upgrade``, ``status``). Without
``MODERATION_DATABASE__URL`` both work on the embedded server of ``moderation demo``
(``database.embedded_dir``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer

from moderation.cli.common import err, fail, load_settings, out
from moderation.exceptions import ModerationError
from moderation.settings import Settings

if TYPE_CHECKING:
    from moderation.adapters.postgres.pool import ConnectionPool

__all__ = ["db_app"]

db_app = typer.Typer(no_args_is_help=True, help="The PostgreSQL schema: upgrade and status.")


@contextmanager
def _pool(settings: Settings) -> Iterator[ConnectionPool]:
    from moderation.adapters.postgres.embedded import EmbeddedPostgres
    from moderation.adapters.postgres.pool import open_pool

    embedded: EmbeddedPostgres | None = None
    url: str | None = None
    if settings.database.url is None:
        embedded = EmbeddedPostgres(data_dir=settings.database.embedded_dir)
        url = embedded.start()
        err.print(
            f"no MODERATION_DATABASE__URL: using the embedded PostgreSQL in "
            f"{settings.database.embedded_dir}",
            highlight=False,
        )
    try:
        pool = open_pool(settings.database, url=url, application="moderation-db")
        try:
            yield pool
        finally:
            pool.close()
    finally:
        if embedded is not None:
            embedded.stop()


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply the pending schema migrations (each once, under a lock; safe while the API and
    workers run, and beside other upgrades)."""
    from moderation.adapters.postgres.migrate import upgrade

    settings = load_settings()
    try:
        with _pool(settings) as pool:
            applied = upgrade(pool)
    except ModerationError as exc:
        raise fail(exc) from exc
    if applied:
        out.print(
            f"applied {len(applied)} migration(s): {', '.join(applied)}",
            highlight=False,
            soft_wrap=True,
        )
    else:
        out.print("the schema is current (nothing to apply)")


@db_app.command("status")
def db_status(
    as_json: Annotated[bool, typer.Option("--json")] = False,
    check: Annotated[
        bool, typer.Option("--check", help="Exit with status 1 when migrations are pending.")
    ] = False,
) -> None:
    """The applied and pending migrations (and applied files changed since)."""
    from moderation.adapters.postgres.migrate import state

    settings = load_settings()
    try:
        with _pool(settings) as pool:
            found = state(pool)
    except ModerationError as exc:
        raise fail(exc) from exc
    if as_json:
        print(
            json.dumps(
                {
                    "applied": found.applied,
                    "pending": found.pending,
                    "changed": found.changed,
                    "unknown": found.unknown,
                }
            )
        )
    else:
        # One line each, never wrapped at the terminal's width: scripts read them.
        out.print(f"applied: {', '.join(found.applied) or 'none'}", highlight=False, soft_wrap=True)
        out.print(f"pending: {', '.join(found.pending) or 'none'}", highlight=False, soft_wrap=True)
        for name in found.changed:
            err.print(f"[yellow]changed since applied (not re-run)[/]: {name}", highlight=False)
        for name in found.unknown:
            err.print(f"[yellow]applied by a newer release[/]: {name}", highlight=False)
    if check and found.pending:
        raise typer.Exit(1)
