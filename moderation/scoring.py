r"""Zero-shot category scores from image embeddings (numpy only).

For an image embedding :math:`x` (L2-normalized) and a category with positive prompt embeddings
:math:`p_1..p_m` and contrast ("benign") prompt embeddings :math:`b_1..b_k` (the category's own,
then the policy's ``defaults.benign_prompts``)::

    logits = s · [x·p_1, …, x·p_m, x·b_1, …, x·b_k]          s = the model's logit scale
    score  = Σ_{i≤m} softmax(logits)_i                       ∈ [0, 1]

i.e. the probability mass the model puts on "this is the harmful thing" when it must choose
between the harmful prompts and their look-alikes, exactly like CLIP zero-shot classification.
Every category is scored independently, so adding a category never changes another's score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from moderation.compiled import CompiledCategory, CompiledPolicy

__all__ = ["CategorySlot", "ScoreBatch", "Scorer"]


@dataclass(frozen=True, kw_only=True)
class CategorySlot:
    """Where one category's prompts live in the scorer's stacked prompt matrix."""

    policy: CompiledPolicy
    category: CompiledCategory
    columns: NDArray[np.intp]  # positives first, then benign
    n_positive: int


@dataclass(frozen=True, kw_only=True)
class ScoreBatch:
    """Scores of N images against C categories.

    Attributes:
        scores: (N, C) category scores in [0, 1].
        similarities: (N, T) cosine similarity of each image to each stacked prompt.
        slots: the C categories, in column order.
    """

    scores: NDArray[np.float32]
    similarities: NDArray[np.float32]
    slots: tuple[CategorySlot, ...]
    logit_scale: float

    def __len__(self) -> int:
        return int(self.scores.shape[0])


class Scorer:
    """Scores image embeddings against a fixed list of compiled policies.

    All policies must be compiled for the same model.

    Raises:
        ValueError: the list is empty or mixes models.
    """

    def __init__(self, policies: Sequence[CompiledPolicy]) -> None:
        if not policies:
            raise ValueError("Scorer needs at least one compiled policy")
        models = {p.model.id for p in policies}
        if len(models) != 1:
            raise ValueError(f"compiled policies come from different models: {sorted(models)}")
        scales = {round(p.logit_scale, 4) for p in policies}
        if len(scales) != 1:
            raise ValueError("compiled policies disagree on the logit scale")
        self.policies = tuple(policies)
        self.logit_scale = float(policies[0].logit_scale)
        rows: list[NDArray[np.float32]] = []
        slots: list[CategorySlot] = []
        offset = 0
        for policy in policies:
            for category in policy.categories:
                block = np.concatenate([category.positive, category.benign]).astype(np.float32)
                rows.append(block)
                slots.append(
                    CategorySlot(
                        policy=policy,
                        category=category,
                        columns=np.arange(offset, offset + len(block), dtype=np.intp),
                        n_positive=len(category.positive),
                    )
                )
                offset += len(block)
        self.matrix: NDArray[np.float32] = np.ascontiguousarray(np.concatenate(rows).T)
        self.slots = tuple(slots)

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[0])

    def score(self, image_embeddings: NDArray[np.floating]) -> ScoreBatch:
        """Score (N, D) image embeddings. Rows are re-normalized defensively."""
        x = np.asarray(image_embeddings, dtype=np.float32)
        if x.ndim == 1:
            x = x[None, :]
        if x.shape[1] != self.dim:
            raise ValueError(f"embedding dim {x.shape[1]} != policy dim {self.dim}")
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        sims = x @ self.matrix  # (N, T)
        scores = np.empty((x.shape[0], len(self.slots)), dtype=np.float32)
        for c, slot in enumerate(self.slots):
            logits = self.logit_scale * sims[:, slot.columns]
            logits -= logits.max(axis=1, keepdims=True)
            np.exp(logits, out=logits)
            scores[:, c] = logits[:, : slot.n_positive].sum(axis=1) / logits.sum(axis=1)
        return ScoreBatch(
            scores=scores, similarities=sims, slots=self.slots, logit_scale=self.logit_scale
        )
