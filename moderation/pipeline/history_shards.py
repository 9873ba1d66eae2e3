"""The embedding history in the object store: shards of a time range in time order, reading them
with bounded memory, writing one, and retention by whole days.

Layout and key rules: :mod:`moderation.core.history_keys`. Byte format: the
:class:`~moderation.ports.HistoryFormat` (Parquet in production). Memory: a reader holds the shard
it hands out plus at most ``prefetch`` shards being fetched; a shard is bounded by the writers'
``embeddings.flush_rows`` / ``flush_bytes``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from moderation.core.data import Data
from moderation.core.embeddings import HistoryBatch
from moderation.core.history_keys import (
    HISTORY_PREFIX,
    ShardKey,
    day_prefix,
    days_between,
    parse_shard_key,
)
from moderation.exceptions import BlobNotFound
from moderation.metrics import metrics
from moderation.ports import BlobStore, HistoryFormat

__all__ = ["DayUsage", "HistoryShards"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DayUsage(Data):
    """One day of history: its shards (``moderation history stats``)."""

    day: str
    shards: int


class HistoryShards:
    """Shards of the embedding history in ``blobs`` (under ``embeddings/``). Nothing older than
    ``retention_s`` is ever listed or read (the retention limit is exact for readers, whenever
    the sweep or a lifecycle rule deletes the old days)."""

    def __init__(
        self,
        blobs: BlobStore,
        fmt: HistoryFormat,
        *,
        retention_s: float = 30 * 86400,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.blobs = blobs
        self.format = fmt
        self.retention_s = retention_s
        self.clock = clock

    def horizon(self) -> float:
        """The oldest time a reader sees (now minus the retention limit)."""
        return self.clock() - self.retention_s

    def describe(self) -> str:
        return f"{self.blobs.describe().rstrip('/')}/{HISTORY_PREFIX}"

    # --- reading ------------------------------------------------------------------------------

    def keys(self, since: float, until: float | None = None) -> list[ShardKey]:
        """The shards that may hold rows of ``[since, until]``, oldest first row first.

        Raises:
            BlobStoreUnavailable, BlobError: the store cannot be listed.
        """
        since = max(since, self.horizon())
        end = self.clock() if until is None else until
        if end < since:
            return []
        found: list[ShardKey] = []
        for day in days_between(since, end):
            for key in self.blobs.list(day_prefix(day)):
                shard = parse_shard_key(key)
                if shard is not None and shard.overlaps(since, until):
                    found.append(shard)
        found.sort()
        return found

    def read(self, key: str, *, tenant: str | None = None) -> HistoryBatch:
        """One shard's rows (only ``tenant``'s when given).

        Raises:
            HistoryShardUnreadable: not a readable shard.
            BlobNotFound: deleted meanwhile (the retention sweep).
            BlobStoreUnavailable, BlobError: the store cannot be read.
        """
        return self.format.decode(self.blobs.get(key), tenant=tenant)

    def read_many(
        self, keys: Sequence[str], *, tenant: str | None = None, prefetch: int = 1
    ) -> Iterator[tuple[str, HistoryBatch]]:
        """``(key, rows)`` of each shard in order, the next ``prefetch`` fetched meanwhile. A
        shard deleted meanwhile (the retention sweep) is skipped.

        Raises:
            HistoryShardUnreadable, BlobStoreUnavailable, BlobError: as :meth:`read`.
        """
        if prefetch <= 0 or len(keys) <= 1:
            for key in keys:
                batch = self._read_if_there(key, tenant)
                if batch is not None:
                    yield key, batch
            return
        with ThreadPoolExecutor(prefetch, thread_name_prefix="history-read") as pool:
            pending: list[tuple[str, Future[HistoryBatch | None]]] = []
            position = 0
            try:
                while position < len(keys) or pending:
                    while position < len(keys) and len(pending) <= prefetch:
                        key = keys[position]
                        pending.append((key, pool.submit(self._read_if_there, key, tenant)))
                        position += 1
                    key, future = pending.pop(0)
                    found = future.result()
                    if found is not None:
                        yield key, found
            finally:
                for _, future in pending:
                    future.cancel()

    def _read_if_there(self, key: str, tenant: str | None) -> HistoryBatch | None:
        try:
            return self.read(key, tenant=tenant)
        except BlobNotFound:
            log.info("history: shard %s is gone (past retention?); skipped", key)
            return None

    # --- writing ------------------------------------------------------------------------------

    def write(self, key: str, batch: HistoryBatch) -> int:
        """Store ``batch`` as the shard ``key``; returns its size in bytes.

        Raises:
            BlobStoreUnavailable, BlobError: the store refused it.
        """
        data = self.format.encode(batch)
        self.blobs.put(key, data)
        metrics().history_shards_written.inc()
        metrics().history_shard_bytes.inc(len(data))
        return len(data)

    # --- retention ----------------------------------------------------------------------------

    def drop_days(self, days: Sequence[date]) -> int:
        """Delete every shard of ``days``; returns how many objects were deleted.

        Raises:
            BlobStoreUnavailable, BlobError: the store cannot be listed or refused a delete.
        """
        deleted = 0
        for day in days:
            keys = list(self.blobs.list(day_prefix(day)))
            for key in keys:
                self.blobs.delete(key)
            deleted += len(keys)
            if keys:
                metrics().history_days_dropped.inc()
                log.info("history: dropped %s (%d shards), past retention", day, len(keys))
        return deleted

    def sweep(self, *, lookback_days: int) -> int:
        """Drop the whole days that ended before the retention limit, looking back
        ``lookback_days`` days from it (the periodic sweep); returns the objects deleted.

        A day is dropped only once all of it is older than the limit, so what a backtest may
        still read (rows newer than the limit) is never deleted.

        Raises:
            BlobStoreUnavailable, BlobError: as :meth:`drop_days`.
        """
        return self.drop_days(expired_days(self.clock(), self.retention_s, lookback_days))

    def usage(self, since: float, until: float | None = None) -> list[DayUsage]:
        """Shards per day in ``[since, until]`` (one listing per day)."""
        since = max(since, self.horizon())
        end = self.clock() if until is None else until
        out = []
        for day in days_between(since, end):
            count = sum(1 for key in self.blobs.list(day_prefix(day)) if parse_shard_key(key))
            if count:
                out.append(DayUsage(day.isoformat(), count))
        return out


def expired_days(now: float, retention_s: float, lookback_days: int) -> list[date]:
    """The UTC days that ended at or before ``now - retention_s``, the newest ``lookback_days``
    of them, oldest first."""
    limit = datetime.fromtimestamp(now - retention_s, UTC)
    newest = limit.date() - timedelta(days=1)  # the day of the limit still has live rows
    return [newest - timedelta(days=i) for i in reversed(range(lookback_days))]
