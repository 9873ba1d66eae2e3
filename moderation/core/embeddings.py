"""Stored image embeddings: what a worker keeps of each decided item so that a policy version can
be backtested on past traffic without re-encoding any image. Pure: no I/O.

One :class:`StoredEmbedding` per decided job: the frames' image embeddings in float16 (half the
bytes of float32; ``bench/backtest.py`` measures how often that moves a decision), the identity
of the model that produced them (a backtest refuses embeddings of another model), the tenant, the
policies the job asked for, and the live decision at the time (for the report).

Workers write them in batches as columnar *shards* (:class:`HistoryBatch`, one per shard: a
column per field, the frames of every row in one matrix), and a backtest reads them back the
same way, so that re-scoring a shard is one matrix product per requested policy set rather than a
Python loop over rows.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from moderation.core.jobs import DEFAULT_TENANT

__all__ = ["HistoryBatch", "StoredEmbedding"]


@dataclass(frozen=True, slots=True)
class StoredEmbedding:
    """One decided item's image embedding(s) and the context to re-score it.

    Attributes:
        job_id: the job (its scoped id: ``tenant/id``, bare for tenant ``default``).
        at: when it was decided (unix seconds).
        model_id: ``ModelIdentity.id`` of the model that produced the embeddings.
        embeddings: (frames, dim) float16, rows L2-normalized before quantization.
        tenant: the tenant that submitted the job.
        policies: the policy ids the job named (empty: the default active set).
        decision: the live verdict's decision at the time.
        deciding: the deciding ``policy/category`` at the time (None: nothing flagged).
        versions: the live policy versions that decided it.
        content_sha256: the image bytes' hash.
        image: the image reference (for the report's examples).
    """

    job_id: str
    model_id: str
    embeddings: NDArray[np.float16]
    tenant: str = DEFAULT_TENANT
    policies: tuple[str, ...] = ()
    decision: str = "allow"
    deciding: str | None = None
    versions: dict[str, int] = field(default_factory=dict)
    content_sha256: str | None = None
    image: str | None = None
    at: float = 0.0

    @property
    def frames(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def nbytes(self) -> int:
        """About what the item takes in a writer's buffer (for its size threshold)."""
        return int(self.embeddings.nbytes) + 160

    @staticmethod
    def quantize(embeddings: NDArray[np.floating]) -> NDArray[np.float16]:
        """(frames, dim) float16 copy of image embeddings (a 1-D vector is one frame)."""
        x = np.asarray(embeddings, dtype=np.float32)
        if x.ndim == 1:
            x = x[None, :]
        return np.ascontiguousarray(x.astype(np.float16))


@dataclass(frozen=True, slots=True)
class HistoryBatch:
    """Stored items as columns: what one shard holds (row ``i`` is one decided job).

    ``embeddings`` holds every row's frames one after the other (row ``i`` owns
    ``frames[i]`` consecutive rows of it, from ``offsets[i]``); ``policies`` are the requested
    ids joined by ``,`` (policy ids never contain one) and ``versions`` is compact JSON, so that
    both are cheap, low-cardinality columns.
    """

    job_ids: list[str]
    tenants: list[str]
    at: NDArray[np.float64]
    model_ids: list[str]
    frames: NDArray[np.int32]
    embeddings: NDArray[np.float16]
    policies: list[str]
    decisions: list[str]
    deciding: list[str | None]
    versions: list[str]
    content_sha256: list[str | None]
    images: list[str | None]

    def __len__(self) -> int:
        return len(self.job_ids)

    @property
    def offsets(self) -> NDArray[np.int64]:
        """Where each row's frames start in ``embeddings``."""
        return np.concatenate([[0], np.cumsum(self.frames[:-1], dtype=np.int64)]).astype(np.int64)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1]) if self.embeddings.ndim == 2 else 0

    @classmethod
    def from_items(cls, items: Sequence[StoredEmbedding]) -> HistoryBatch:
        """The columns of ``items`` (in order).

        Raises:
            ValueError: the items' embeddings differ in width.
        """
        dims = {item.dim for item in items}
        if len(dims) > 1:
            raise ValueError(f"embeddings of different widths in one batch: {sorted(dims)}")
        dim = dims.pop() if dims else 0
        matrix = (
            np.concatenate([item.embeddings for item in items]).astype(np.float16, copy=False)
            if items
            else np.zeros((0, dim), np.float16)
        )
        return cls(
            job_ids=[item.job_id for item in items],
            tenants=[item.tenant for item in items],
            at=np.array([item.at for item in items], np.float64),
            model_ids=[item.model_id for item in items],
            frames=np.array([item.frames for item in items], np.int32),
            embeddings=matrix,
            policies=[",".join(item.policies) for item in items],
            decisions=[item.decision for item in items],
            deciding=[item.deciding for item in items],
            versions=[
                json.dumps(item.versions, separators=(",", ":"), sort_keys=True) for item in items
            ],
            content_sha256=[item.content_sha256 for item in items],
            images=[item.image for item in items],
        )

    def item(self, i: int) -> StoredEmbedding:
        """Row ``i`` as one :class:`StoredEmbedding`."""
        start = int(self.offsets[i])
        return StoredEmbedding(
            job_id=self.job_ids[i],
            model_id=self.model_ids[i],
            embeddings=self.embeddings[start : start + int(self.frames[i])],
            tenant=self.tenants[i],
            policies=requested_policies(self.policies[i]),
            decision=self.decisions[i],
            deciding=self.deciding[i],
            versions={str(k): int(v) for k, v in json.loads(self.versions[i] or "{}").items()},
            content_sha256=self.content_sha256[i],
            image=self.images[i],
            at=float(self.at[i]),
        )

    def items(self) -> list[StoredEmbedding]:
        return [self.item(i) for i in range(len(self))]


def requested_policies(joined: str) -> tuple[str, ...]:
    """The policy ids of a ``policies`` cell (empty: the default active set)."""
    return tuple(joined.split(",")) if joined else ()
