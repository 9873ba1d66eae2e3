"""Where the embedding history's shards live in the object store. Pure: no I/O.

A shard's key says when its rows were decided and which writer wrote it, nothing else (no
tenant, no job id)::

    embeddings/date=2026-12-07/hour=04/1765080000123-1765080059876-<writer>-<seq>.parquet
               └ UTC day ┘      └ hour ┘ └ first row ms ┘ └ last row ms ┘

Every row of a shard lies in the hour its key names (a writer splits its buffer at hour
boundaries), so a time range maps to whole day prefixes (one listing each) and a shard outside
it is skipped from its key alone; keys of a day list in time order of their first row; and
retention is deleting whole day prefixes (or an S3 lifecycle rule on ``embeddings/``), never
rows. The ``date=``/``hour=`` segments are Hive-style partitions, which Athena, DuckDB, Spark and
pyarrow datasets read as columns.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

__all__ = [
    "HISTORY_PREFIX",
    "ShardKey",
    "day_prefix",
    "days_between",
    "hour_prefix",
    "hour_start",
    "parse_shard_key",
    "shard_key",
    "writer_token",
]

#: Every shard key starts with this (inside the object store's own prefix).
HISTORY_PREFIX = "embeddings/"

_KEY = re.compile(
    r"^embeddings/date=(\d{4}-\d{2}-\d{2})/hour=(\d{2})/(\d{13})-(\d{13})-([A-Za-z0-9._-]+)\.(\w+)$"
)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True, slots=True, order=True)
class ShardKey:
    """What a shard's key says about it (ordered by time of its first row)."""

    first_ms: int
    last_ms: int
    key: str
    writer: str

    @property
    def writer_name(self) -> str:
        """The writer token, without the shard's sequence number."""
        return self.writer.rsplit("-", 1)[0]

    @property
    def first(self) -> float:
        return self.first_ms / 1000.0

    @property
    def last(self) -> float:
        return self.last_ms / 1000.0

    def overlaps(self, since: float, until: float | None) -> bool:
        """Whether any row of the shard may lie in ``[since, until]``."""
        return self.last >= since and (until is None or self.first <= until)


def writer_token(name: str) -> str:
    """``name`` (a worker name: ``host-pid``) made safe for one key segment."""
    token = _UNSAFE.sub("-", name).strip(".-")[:80]
    return token or "writer"


def day_prefix(day: date) -> str:
    return f"{HISTORY_PREFIX}date={day.isoformat()}/"


def hour_prefix(ts: float) -> str:
    """The prefix of the shards of the UTC hour of ``ts``."""
    start = datetime.fromtimestamp(ts, UTC)
    return f"{day_prefix(start.date())}hour={start.hour:02d}/"


def shard_key(first: float, last: float, writer: str, seq: int, *, suffix: str) -> str:
    """The key of a shard whose rows lie in ``[first, last]`` (unix seconds, one UTC hour).

    Raises:
        ValueError: the rows span more than one hour, or ``last`` precedes ``first``.
    """
    first_ms, last_ms = int(first * 1000), int(last * 1000)
    start = datetime.fromtimestamp(first_ms / 1000, UTC)
    end = datetime.fromtimestamp(last_ms / 1000, UTC)
    if last_ms < first_ms or start.replace(minute=0, second=0, microsecond=0) != end.replace(
        minute=0, second=0, microsecond=0
    ):
        raise ValueError("a shard's rows must lie in one UTC hour, in order")
    return (
        f"{hour_prefix(first_ms / 1000)}"
        f"{first_ms:013d}-{last_ms:013d}-{writer_token(writer)}-{seq:06d}{suffix}"
    )


def parse_shard_key(key: str) -> ShardKey | None:
    """What ``key`` says, or None when it is not a shard key (a stray object is ignored)."""
    match = _KEY.match(key)
    if match is None:
        return None
    return ShardKey(
        first_ms=int(match.group(3)), last_ms=int(match.group(4)), key=key, writer=match.group(5)
    )


def hour_start(ts: float) -> float:
    """The start of the UTC hour of ``ts``."""
    return float(int(ts // 3600) * 3600)


def days_between(since: float, until: float) -> list[date]:
    """The UTC days that ``[since, until]`` touches, oldest first."""
    first = datetime.fromtimestamp(max(since, 0.0), UTC).date()
    last = datetime.fromtimestamp(max(until, 0.0), UTC).date()
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]
