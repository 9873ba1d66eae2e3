"""The moderation service: compiled policies + an image encoder -> verdicts.

Wires ports together; holds no I/O of its own beyond what the encoder does.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from moderation.compiled import CompiledPolicy
from moderation.decision import Verdict, verdicts
from moderation.exceptions import UnknownPolicyError
from moderation.ports import ImageEncoder
from moderation.scoring import Scorer

__all__ = ["Moderator", "most_severe"]


def most_severe(items: Sequence[Verdict]) -> Verdict:
    """The most severe of several verdicts (e.g. frames of one animated image)."""
    return max(
        items,
        key=lambda v: (v.decision.rank, v.severity.rank if v.severity else 0, v.score),
    )


class Moderator:
    """Scores images against compiled policies. Policy subsets get their own (cached) scorer."""

    def __init__(self, *, encoder: ImageEncoder, compiled: Sequence[CompiledPolicy]) -> None:
        if not compiled:
            raise ValueError("Moderator needs at least one compiled policy")
        self.encoder = encoder
        self.compiled = {p.id: p for p in compiled}
        self._default_ids = tuple(p.id for p in compiled if p.policy.active) or tuple(
            self.compiled
        )
        self._scorers: dict[tuple[str, ...], Scorer] = {}

    @property
    def policy_versions(self) -> dict[str, int]:
        return {pid: p.version for pid, p in self.compiled.items()}

    def scorer(self, policy_ids: Iterable[str] | None = None) -> Scorer:
        """Scorer for the named policies (default: every active one).

        Raises:
            UnknownPolicyError: a named policy is not loaded.
        """
        ids = tuple(sorted(policy_ids)) if policy_ids else self._default_ids
        for pid in ids:
            if pid not in self.compiled:
                raise UnknownPolicyError(pid, list(self.compiled))
        if ids not in self._scorers:
            self._scorers[ids] = Scorer([self.compiled[pid] for pid in ids])
        return self._scorers[ids]

    def verdicts_for_embeddings(
        self, embeddings: NDArray[np.float32], policy_ids: Iterable[str] | None = None
    ) -> list[Verdict]:
        if len(embeddings) == 0:
            return []
        return verdicts(self.scorer(policy_ids).score(embeddings))

    def embed(self, prepared: Sequence[Any]) -> NDArray[np.float32]:
        return self.encoder.encode_prepared(prepared)

    def moderate_images(
        self, images: Sequence[Image.Image], policy_ids: Iterable[str] | None = None
    ) -> list[Verdict]:
        return self.verdicts_for_embeddings(self.encoder.encode_images(images), policy_ids)
