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

db_app = typer.Typer(
    no_args_is_help=True,
    help="The PostgreSQL schema (upgrade, status) and importing a Redis-only release's state.",
)


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


@db_app.command("import-redis")
def db_import_redis(
    redis_url: Annotated[
        str | None,
        typer.Option(
            "--redis-url",
            help="The Redis of the Redis-only release (default: MODERATION_REDIS_URL).",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Read and count everything; write nothing.")
    ] = False,
    batch: Annotated[int, typer.Option("--batch", min=1, max=10_000)] = 500,
    as_json: Annotated[bool, typer.Option("--json", help="The summary as JSON.")] = False,
) -> None:
    """Copy the durable state of a Redis-only release (reviewer accounts, the review queue with
    its decisions, leases and outbox, hash banks with their tombstones) into PostgreSQL.

    Idempotent and resumable: what is already in PostgreSQL is left as it is, so run it again
    after an interruption. Stop the old release first (nothing may write to Redis meanwhile);
    Redis is only read.
    """
    from moderation.adapters.postgres.migrate import upgrade
    from moderation.cli.common import progress
    from moderation.compose.state_import import open_state_importer
    from moderation.pipeline.state_import import ImportSummary

    settings = load_settings()
    url = redis_url or settings.redis_url
    if not url:
        err.print("no Redis to import from: pass --redis-url or set MODERATION_REDIS_URL")
        raise typer.Exit(2)
    summary = ImportSummary(dry_run=dry_run)
    try:
        with _pool(settings) as pool:
            if not dry_run:
                applied = upgrade(pool)
                if applied:
                    err.print(f"applied migration(s): {', '.join(applied)}", highlight=False)
            importer = open_state_importer(settings, pool, redis_url=url, batch=batch)
            importer.reviewers(summary)
            with progress("review items", importer.review_total()) as advance:
                importer.review(summary, advance=advance)
            with progress("bank entries", importer.bank_total()) as advance:
                importer.banks(summary, advance=advance)
    except ModerationError as exc:
        raise fail(exc) from exc
    if as_json:
        print(json.dumps(summary.as_dict()))
        return
    verb = "would import" if dry_run else "imported"
    for kind, c in (
        ("reviewer accounts", summary.reviewers),
        ("review items", summary.review_items),
        ("bank requests", summary.bank_requests),
        ("banks", summary.banks),
        ("bank entries", summary.bank_entries),
    ):
        out.print(
            f"{kind}: read {c.read}, {verb} {c.imported}, already in PostgreSQL {c.present}",
            highlight=False,
            soft_wrap=True,
        )
    if dry_run:
        out.print("dry run: nothing was written")
