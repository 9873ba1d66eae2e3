"""Reading the embedding history of older versions, which lived in one Redis stream, for
``moderation history import-redis`` (the one-time copy into shards; nothing writes there any
more).

The old layout: one stream (``embeddings.key``, default ``mod:embeddings``) whose entry ids are
millisecond timestamps, each entry two fields: ``e``, the (frames, dim) float16 matrix as raw
bytes, and ``x``, compact JSON of the rest (``j`` job id, ``m`` model id, ``n`` frames, ``p``
requested policy ids, ``d`` live decision, ``k`` deciding ``policy/category``, ``v`` live
versions, ``h`` content sha256, ``i`` image reference). Those entries had no tenant field: the
tenant is read from the scoped job id (``tenant/id``; bare ids are tenant ``default``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import redis

from moderation.adapters.support.redis import connect, translated
from moderation.core.embeddings import StoredEmbedding
from moderation.core.jobs import tenant_of

__all__ = ["RedisHistoryReader"]

log = logging.getLogger(__name__)


class RedisHistoryReader:
    """The entries of an old history stream, oldest first, page by page."""

    def __init__(self, client: redis.Redis, key: str) -> None:
        self.redis = client
        self.key = key

    @classmethod
    def from_url(cls, url: str, key: str) -> RedisHistoryReader:
        return cls(connect(url), key)

    def describe(self) -> str:
        kwargs = self.redis.connection_pool.connection_kwargs
        return f"redis://{kwargs.get('host', '?')}:{kwargs.get('port', '?')} {self.key}"

    @translated("old embedding history")
    def count(self) -> int:
        """Entries in the stream (0 when there is none)."""
        return int(self.redis.xlen(self.key))

    def pages(self, *, page: int = 2000) -> Iterator[tuple[list[StoredEmbedding], int]]:
        """``(entries, how many were unreadable)`` page by page, oldest first.

        Raises:
            QueueUnavailable: Redis cannot be reached.
        """
        start = "-"
        while True:
            entries: Any = self._range(start, page)
            if not entries:
                return
            items = [_decode(entry_id, fields) for entry_id, fields in entries]
            found = [item for item in items if item is not None]
            yield found, len(items) - len(found)
            if len(entries) < page:
                return
            start = "(" + _text(entries[-1][0])

    @translated("old embedding history")
    def _range(self, start: str, page: int) -> Any:
        return self.redis.xrange(self.key, min=start, max="+", count=page)


def _decode(entry_id: Any, fields: Any) -> StoredEmbedding | None:
    try:
        meta = json.loads(fields[b"x"])
        matrix = np.frombuffer(fields[b"e"], dtype=np.float16).reshape(int(meta["n"]), -1)
        job_id = str(meta["j"])
        return StoredEmbedding(
            job_id=job_id,
            model_id=str(meta["m"]),
            embeddings=matrix,
            tenant=tenant_of(job_id),
            policies=tuple(meta.get("p") or ()),
            decision=meta.get("d") or "allow",
            deciding=meta.get("k"),
            versions={str(k): int(v) for k, v in (meta.get("v") or {}).items()},
            content_sha256=meta.get("h"),
            image=meta.get("i"),
            at=int(_text(entry_id).split("-")[0]) / 1000.0,
        )
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        log.warning("skipping an unreadable old history entry %r: %s", entry_id, exc)
        return None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
