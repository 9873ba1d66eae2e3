"""Copying an older version's embedding history (a Redis stream) into shards, once, so that an
upgraded deployment keeps its backtest window: ``moderation history import-redis``.

The entries come oldest first; they are cut at UTC hour boundaries and every
``rows_per_shard`` rows, and written as shards of writer ``import`` (``<first>-<last>-import-
<n>``, ``n`` counting within the hour). Running it again replaces, hour by hour, the import
shards it wrote before (those of the hours it reads that it did not write this time are
deleted once the hour is written), so a second run after more entries were added, or after a
failure, never counts a row twice. Rows past the retention limit are not copied.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from moderation.core.data import Data
from moderation.core.embeddings import HistoryBatch, StoredEmbedding
from moderation.core.history_keys import (
    hour_prefix,
    hour_start,
    parse_shard_key,
    shard_key,
    writer_token,
)
from moderation.pipeline.history_shards import HistoryShards

__all__ = ["IMPORT_WRITER", "ImportReport", "import_history"]

log = logging.getLogger(__name__)

#: The writer name of imported shards.
IMPORT_WRITER = "import"


@dataclass(frozen=True, slots=True)
class ImportReport(Data):
    read: int
    copied: int
    unreadable: int
    expired: int  # older than the retention limit: not copied
    shards: int
    hours: int
    replaced: int  # import shards of an earlier run deleted


def import_history(
    pages: Iterable[tuple[list[StoredEmbedding], int]],
    shards: HistoryShards,
    *,
    rows_per_shard: int = 10_000,
    on_progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Write the entries of ``pages`` (``(entries, unreadable)``, oldest first) as shards.

    Raises:
        BlobStoreUnavailable, BlobError: a shard cannot be written (run it again: it replaces
            what it wrote).
        QueueUnavailable: the old history cannot be read.
    """
    cutoff = shards.horizon()
    counts = {"read": 0, "copied": 0, "unreadable": 0, "expired": 0, "shards": 0, "replaced": 0}
    hours: list[float] = []
    hour: list[StoredEmbedding] = []
    written: set[str] = set()
    seq = 0

    def write(rows: list[StoredEmbedding]) -> None:
        nonlocal seq
        seq += 1
        key = shard_key(rows[0].at, rows[-1].at, IMPORT_WRITER, seq, suffix=shards.format.suffix)
        shards.write(key, HistoryBatch.from_items(rows))
        written.add(key)
        counts["shards"] += 1
        counts["copied"] += len(rows)

    def close_hour() -> None:
        nonlocal seq
        if hour:
            write(hour)
            hour.clear()
        if hours:
            counts["replaced"] += _drop_stale(shards, hours[-1], written)
        written.clear()
        seq = 0

    for entries, unreadable in pages:
        counts["unreadable"] += unreadable
        counts["read"] += len(entries) + unreadable
        for item in entries:
            if item.at < cutoff:
                counts["expired"] += 1
                continue
            start = hour_start(item.at)
            if not hours or start != hours[-1]:
                close_hour()
                hours.append(start)
            hour.append(item)
            if len(hour) >= rows_per_shard:
                write(hour)
                hour.clear()
        if on_progress is not None:
            on_progress(len(entries) + unreadable)
    close_hour()
    return ImportReport(**counts, hours=len(hours))


def _drop_stale(shards: HistoryShards, hour: float, written: set[str]) -> int:
    """Delete the import shards of ``hour`` that this run did not write; returns how many."""
    stale = [
        key
        for key in shards.blobs.list(hour_prefix(hour))
        if key not in written
        and (found := parse_shard_key(key)) is not None
        and found.writer_name == writer_token(IMPORT_WRITER)
    ]
    for key in stale:
        shards.blobs.delete(key)
    return len(stale)
