"""Keeping decided items' image embeddings for policy backtests (``embeddings.store``).

After a job ends with a verdict, the worker hands its frames' embeddings, the model identity and
the live decision to the :class:`~moderation.ports.EmbeddingStore`. Best effort by design: the
history is for measuring policy versions, not for deciding, so a store that is down costs a
warning and a ``moderation_embeddings_stored_total{result="failed"}``, never the job.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from moderation.core.decision import Verdict
from moderation.core.embeddings import StoredEmbedding
from moderation.core.jobs import Job
from moderation.exceptions import ModerationError
from moderation.metrics import metrics
from moderation.ports import EmbeddingStore

__all__ = ["EmbeddingHistory"]

log = logging.getLogger(__name__)


class EmbeddingHistory:
    """Records decided items in an :class:`~moderation.ports.EmbeddingStore`."""

    def __init__(self, store: EmbeddingStore) -> None:
        self.store = store

    def record(
        self,
        job: Job,
        verdict: Verdict,
        embeddings: NDArray[np.float32],
        *,
        content_sha256: str | None,
    ) -> bool:
        """Keep one decided job's frame embeddings. Never raises; returns whether it was kept."""
        return self.record_many([(job, verdict, embeddings, content_sha256)]) == 1

    def record_many(
        self, decided: Sequence[tuple[Job, Verdict, NDArray[np.float32], str | None]]
    ) -> int:
        """Keep decided jobs' frame embeddings (job, verdict, embeddings, content sha256), in
        one store round trip. Never raises; returns how many were kept."""
        if not decided:
            return 0
        items = [
            _stored(job, verdict, embeddings, digest)
            for job, verdict, embeddings, digest in decided
        ]
        try:
            self.store.add_many(items)
        except ModerationError as exc:
            log.warning("%d embeddings not kept for backtests: %s", len(items), exc)
            metrics().embeddings_stored.labels("failed").inc(len(items))
            return 0
        metrics().embeddings_stored.labels("ok").inc(len(items))
        return len(items)


def _stored(
    job: Job, verdict: Verdict, embeddings: NDArray[np.float32], content_sha256: str | None
) -> StoredEmbedding:
    deciding = verdict.deciding
    return StoredEmbedding(
        job_id=job.id,
        model_id=verdict.model,
        embeddings=StoredEmbedding.quantize(embeddings),
        policies=tuple(job.policies or ()),
        decision=verdict.decision.value,
        deciding=deciding.key if deciding is not None and verdict.decision.rank else None,
        versions={p.id: p.version for p in verdict.policies},
        content_sha256=content_sha256,
        image=job.image.uri,
    )
