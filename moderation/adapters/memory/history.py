"""Embedding-history shards as JSON (the :class:`~moderation.ports.HistoryFormat` twin): the same
columns as the Parquet format, for unit tests of the use cases without pyarrow."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np

from moderation.core.embeddings import HistoryBatch
from moderation.exceptions import HistoryShardUnreadable

__all__ = ["MemoryHistoryFormat"]


class MemoryHistoryFormat:
    """Shards as one JSON document each; the embeddings as base64 float16 bytes."""

    suffix = ".json"

    def encode(self, batch: HistoryBatch) -> bytes:
        doc = {
            "format": "memory-1",
            "dim": batch.dim,
            "job_ids": batch.job_ids,
            "tenants": batch.tenants,
            "at": batch.at.tolist(),
            "model_ids": batch.model_ids,
            "frames": batch.frames.tolist(),
            "embeddings": base64.b64encode(batch.embeddings.astype(np.float16).tobytes()).decode(),
            "policies": batch.policies,
            "decisions": batch.decisions,
            "deciding": batch.deciding,
            "versions": batch.versions,
            "content_sha256": batch.content_sha256,
            "images": batch.images,
        }
        return json.dumps(doc).encode()

    def decode(self, data: bytes, *, tenant: str | None = None) -> HistoryBatch:
        try:
            doc: dict[str, Any] = json.loads(data)
            if doc.get("format") != "memory-1":
                raise ValueError("not a memory-1 shard")
            frames = np.array(doc["frames"], np.int32)
            flat = np.frombuffer(base64.b64decode(doc["embeddings"]), np.float16)
            batch = HistoryBatch(
                job_ids=doc["job_ids"],
                tenants=doc["tenants"],
                at=np.array(doc["at"], np.float64),
                model_ids=doc["model_ids"],
                frames=frames,
                embeddings=flat.reshape(int(frames.sum()), int(doc["dim"])),
                policies=doc["policies"],
                decisions=doc["decisions"],
                deciding=doc["deciding"],
                versions=doc["versions"],
                content_sha256=doc["content_sha256"],
                images=doc["images"],
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise HistoryShardUnreadable(f"not a readable shard: {exc}") from exc
        if tenant is None:
            return batch
        return select(batch, [i for i, t in enumerate(batch.tenants) if t == tenant])


def select(batch: HistoryBatch, rows: list[int]) -> HistoryBatch:
    """Rows ``rows`` of ``batch``."""
    return HistoryBatch.from_items([batch.item(i) for i in rows]) if rows else _empty(batch)


def _empty(batch: HistoryBatch) -> HistoryBatch:
    return HistoryBatch.from_items([])
