"""``moderation history``: the embedding history kept for backtests (shards in the object
store): what it holds, retention now, and the one-time copy of an older version's Redis history.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.table import Table

from moderation.cli.common import err, fail, load_settings, out, progress
from moderation.cli.quality import parse_since
from moderation.exceptions import ModerationError

__all__ = ["history_app"]

history_app = typer.Typer(
    no_args_is_help=True, help="The embedding history kept for policy backtests."
)


@history_app.command("stats")
def history_stats(
    since: Annotated[str, typer.Option(help="From: 30d, 24h or an ISO date/time.")] = "30d",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Shards per day of history (one listing per day)."""
    from moderation.compose.stores import open_history

    settings = load_settings()
    try:
        shards = open_history(settings)
        days = shards.usage(parse_since(since))
    except ModerationError as exc:
        raise fail(exc) from exc
    if as_json:
        print(json.dumps({"where": shards.describe(), "days": [d.to_dict() for d in days]}))
        return
    table = Table("day (UTC)", "shards", title=f"embedding history in {shards.describe()}")
    for day in days:
        table.add_row(day.day, str(day.shards))
    out.print(table)
    keep = settings.embeddings.retention_s / 86400
    out.print(
        f"{sum(d.shards for d in days)} shards; retention {keep:g} days "
        f"(embeddings.retention_s); writing {'on' if settings.embeddings.store else 'off'} "
        "(embeddings.store)",
        highlight=False,
    )


@history_app.command("prune")
def history_prune(
    days: Annotated[
        int, typer.Option(min=1, max=36_500, help="Days before the retention limit to look at.")
    ] = 365,
) -> None:
    """Delete every whole day of history older than the retention limit now (the workers'
    sweep does this hourly for the last embeddings.retention_sweep_days days)."""
    from moderation.compose.stores import open_history

    settings = load_settings()
    try:
        deleted = open_history(settings).sweep(lookback_days=days)
    except ModerationError as exc:
        raise fail(exc) from exc
    out.print(f"deleted {deleted} shards past the retention limit", highlight=False)


@history_app.command("import-redis")
def history_import_redis(
    redis_url: Annotated[
        str | None,
        typer.Option(
            help="The Redis that held the history (default: the deprecated "
            "MODERATION_EMBEDDINGS__REDIS_URL, else MODERATION_REDIS_URL)."
        ),
    ] = None,
    key: Annotated[
        str | None, typer.Option(help="Its stream (default: embeddings.key, mod:embeddings).")
    ] = None,
    rows_per_shard: Annotated[int, typer.Option(min=1, max=1_000_000)] = 10_000,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Copy an older version's embedding history (a Redis stream) into shards, once, keeping
    the backtest window across the upgrade. Running it again replaces what it wrote (nothing is
    counted twice); the stream itself is left as it is (delete it yourself once satisfied)."""
    from moderation.compose.history import open_old_history
    from moderation.compose.stores import open_history
    from moderation.pipeline.history_import import import_history

    settings = load_settings()
    started = time.perf_counter()
    try:
        old = open_old_history(settings, url=redis_url, key=key)
        shards = open_history(settings)
        total = old.count()
        with progress("import", total) as advance:
            report = import_history(
                old.pages(),
                shards,
                rows_per_shard=rows_per_shard,
                on_progress=advance,
            )
    except ModerationError as exc:
        raise fail(exc) from exc
    if as_json:
        print(json.dumps(report.to_dict()))
        return
    err.print(
        f"{old.describe()} -> {shards.describe()} "
        f"({time.perf_counter() - started:.1f} s, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC)",
        highlight=False,
    )
    out.print(
        f"copied {report.copied} of {report.read} entries into {report.shards} shards over "
        f"{report.hours} hours ({report.expired} past retention, {report.unreadable} "
        f"unreadable, {report.replaced} shards of an earlier import replaced)",
        highlight=False,
    )
