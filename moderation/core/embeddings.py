"""Stored image embeddings: what a worker keeps of each decided item so that a policy version can
be backtested on past traffic without re-encoding any image. Pure: no I/O.

One :class:`StoredEmbedding` per decided job: the frames' image embeddings in float16 (half the
bytes of float32; scores move by about 1e-3, see the backtest's drift count), the identity of the
model that produced them (a backtest refuses embeddings of another model), the policies the job
asked for, and the live decision at the time (for the report).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

__all__ = ["StoredEmbedding"]


@dataclass(frozen=True, slots=True)
class StoredEmbedding:
    """One decided item's image embedding(s) and the context to re-score it.

    Attributes:
        job_id: the job.
        at: when it was decided (unix seconds; set by the store on write).
        model_id: ``ModelIdentity.id`` of the model that produced the embeddings.
        embeddings: (frames, dim) float16, rows L2-normalized before quantization.
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

    @staticmethod
    def quantize(embeddings: NDArray[np.floating]) -> NDArray[np.float16]:
        """(frames, dim) float16 copy of image embeddings (a 1-D vector is one frame)."""
        x = np.asarray(embeddings, dtype=np.float32)
        if x.ndim == 1:
            x = x[None, :]
        return np.ascontiguousarray(x.astype(np.float16))
