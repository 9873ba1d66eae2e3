"""Stored image embeddings in a Redis stream (:class:`~moderation.ports.EmbeddingStore`).

Why a stream: every worker already talks to Redis, and a stream is exactly an append-only log
keyed by time. Each decided job is one ``XADD`` (pipelined with the trim, one round trip), so
nothing is buffered in the worker and a crash loses nothing that was acknowledged; entry ids
*are* millisecond timestamps, so ``--since``/``--until`` are plain ``XRANGE`` bounds and the
retention limit is ``MINID`` trimming (approximate: whole radix-tree nodes, cheap; reads skip
what an approximate trim left behind, so the limit is exact for readers), with a ``MAXLEN`` cap
as a memory bound.

Size: an entry is the float16 embedding (1 KiB for a 512-d ViT-B-32 image embedding, 256 bytes
for the 128-d test model) plus about 200 bytes of context; 100,000 entries of ViT-B-32 take about
120 MB. Keep long histories on a Redis of their own (``MODERATION_EMBEDDINGS__REDIS_URL``) so
they never compete with the broker for memory.

An entry has two fields, so that reading 100,000 of them parses 400,000 strings rather than
two million: ``e``, the (frames, dim) float16 matrix as raw bytes, and ``x``, compact JSON of the
rest: ``j`` job id, ``m`` model id, ``n`` frames, ``p`` requested policy ids (empty: the default
set), ``d`` live decision, ``k`` deciding ``policy/category``, ``v`` live versions, ``h`` content
sha256, ``i`` image reference.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import redis

from moderation.adapters.support.redis import connect, translated
from moderation.core.embeddings import StoredEmbedding
from moderation.settings import EmbeddingSettings

__all__ = ["RedisEmbeddingStore"]

log = logging.getLogger(__name__)


class RedisEmbeddingStore:
    """Embeddings in one Redis stream, trimmed to the retention limit on every write."""

    def __init__(self, client: redis.Redis, settings: EmbeddingSettings) -> None:
        self.redis = client
        self.settings = settings
        self.key = settings.key

    @classmethod
    def from_url(cls, url: str, settings: EmbeddingSettings) -> RedisEmbeddingStore:
        return cls(connect(url), settings)

    def add(self, item: StoredEmbedding) -> None:
        self.add_many([item])

    @translated("embedding store")
    def add_many(self, items: Sequence[StoredEmbedding]) -> None:
        if not items:
            return
        cutoff_ms = int((time.time() - self.settings.retention_s) * 1000)
        pipe = self.redis.pipeline(transaction=False)
        for item in items:
            meta = {
                "j": item.job_id,
                "m": item.model_id,
                "n": item.frames,
                "p": list(item.policies),
                "d": item.decision,
                "k": item.deciding,
                "v": item.versions,
                "h": item.content_sha256,
                "i": item.image,
            }
            fields: dict[str, bytes | str] = {
                "e": StoredEmbedding.quantize(item.embeddings).tobytes(),
                "x": json.dumps(meta, separators=(",", ":")),
            }
            pipe.xadd(self.key, fields, minid=str(max(cutoff_ms, 0)), approximate=True)  # type: ignore[arg-type]
        if self.settings.max_items:
            pipe.xtrim(self.key, maxlen=self.settings.max_items, approximate=True)
        pipe.execute()

    @translated("embedding store")
    def scan(
        self, *, since: float, until: float | None = None, page: int = 1000
    ) -> Iterator[list[StoredEmbedding]]:
        since = max(since, time.time() - self.settings.retention_s)
        start = f"{max(int(since * 1000), 0)}-0"
        end = "+" if until is None else f"{int(until * 1000)}-18446744073709551615"
        while True:
            entries: Any = self.redis.xrange(self.key, min=start, max=end, count=page)
            if not entries:
                return
            items = [self._decode(entry_id, fields) for entry_id, fields in entries]
            yield [item for item in items if item is not None]
            if len(entries) < page:
                return
            start = "(" + _text(entries[-1][0])

    @translated("embedding store")
    def count(self) -> int:
        return int(self.redis.xlen(self.key))

    @staticmethod
    def _decode(entry_id: Any, fields: Any) -> StoredEmbedding | None:
        try:
            meta = json.loads(fields[b"x"])
            matrix = np.frombuffer(fields[b"e"], dtype=np.float16).reshape(int(meta["n"]), -1)
            return StoredEmbedding(
                job_id=meta["j"],
                model_id=meta["m"],
                embeddings=matrix,
                policies=tuple(meta.get("p") or ()),
                decision=meta.get("d") or "allow",
                deciding=meta.get("k"),
                versions=meta.get("v") or {},
                content_sha256=meta.get("h"),
                image=meta.get("i"),
                at=int(_text(entry_id).split("-")[0]) / 1000.0,
            )
        except (KeyError, ValueError, TypeError) as exc:
            log.warning("skipping unreadable stored embedding %r: %s", entry_id, exc)
            return None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
