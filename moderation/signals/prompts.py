r"""The CLIP zero-shot prompts signal (``signal: prompts``, the default).

For an image embedding :math:`x` (L2-normalized) and a category with positive prompt embeddings
:math:`p_1..p_m` and contrast ("benign") prompt embeddings :math:`b_1..b_k` (the category's own,
then the policy's ``defaults.benign_prompts``)::

    logits = s · [x·p_1, …, x·p_m, x·b_1, …, x·b_k]          s = the model's logit scale
    score  = Σ_{i≤m} softmax(logits)_i                       ∈ [0, 1]

i.e. the probability mass the model puts on "this is the harmful thing" when it must choose
between the harmful prompts and their look-alikes, exactly like CLIP zero-shot classification.
The evidence of a category is its top prompts by that softmax, positive or benign, with their
cosine similarities. The prompt embeddings come from the compiled policy
(:func:`moderation.core.compiled.compile_policy`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from moderation.core.policy import DEFAULT_SIGNAL
from moderation.core.scoring import CategorySlot, Evidence, FeatureBatch

__all__ = ["TOP_PROMPTS", "PromptScorer", "PromptScores", "PromptSignal"]

#: Prompts shown as evidence per category.
TOP_PROMPTS = 3


class PromptSignal:
    """Scores categories by CLIP zero-shot prompts; needs only the image embedding."""

    name = DEFAULT_SIGNAL
    needs_image = False
    min_side = 0

    def features(self, image: Any) -> None:
        """Nothing beyond the image embedding."""
        return

    def fingerprint(self, feature: Any) -> dict[str, Any]:
        return {}

    def scorer(self, slots: Sequence[CategorySlot]) -> PromptScorer:
        return PromptScorer(slots)


@dataclass(frozen=True, slots=True)
class _Block:
    columns: NDArray[np.intp]  # this category's columns in the stacked prompt matrix
    n_positive: int
    names: tuple[str, ...]


class PromptScorer:
    """The stacked prompt matrix of some categories (positives, then benign, per category).

    Raises:
        ValueError: the categories disagree on the logit scale.
    """

    def __init__(self, slots: Sequence[CategorySlot]) -> None:
        scales = {round(s.policy.logit_scale, 4) for s in slots}
        if len(scales) > 1:
            raise ValueError("compiled policies disagree on the logit scale")
        self.logit_scale = float(slots[0].policy.logit_scale) if slots else 100.0
        rows: list[NDArray[np.float32]] = []
        self.blocks: list[_Block] = []
        offset = 0
        for slot in slots:
            category = slot.category
            block = np.concatenate([category.positive, category.benign]).astype(np.float32)
            rows.append(block)
            self.blocks.append(
                _Block(
                    columns=np.arange(offset, offset + len(block), dtype=np.intp),
                    n_positive=len(category.positive),
                    names=(*category.prompts, *category.benign_prompts),
                )
            )
            offset += len(block)
        self.matrix: NDArray[np.float32] = np.ascontiguousarray(np.concatenate(rows).T)

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[0])

    def score(self, batch: FeatureBatch) -> PromptScores:
        """Score the batch's image embeddings (rows are re-normalized defensively).

        Raises:
            ValueError: the embeddings are not of the policies' model width.
        """
        x = np.asarray(batch.embeddings, dtype=np.float32)
        if x.ndim == 1:
            x = x[None, :]
        if x.shape[1] != self.dim:
            raise ValueError(f"embedding dim {x.shape[1]} != policy dim {self.dim}")
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        sims = x @ self.matrix  # (N, T)
        scores = np.empty((x.shape[0], len(self.blocks)), dtype=np.float32)
        for c, block in enumerate(self.blocks):
            logits = self.logit_scale * sims[:, block.columns]
            logits -= logits.max(axis=1, keepdims=True)
            np.exp(logits, out=logits)
            scores[:, c] = logits[:, : block.n_positive].sum(axis=1) / logits.sum(axis=1)
        return PromptScores(scores=scores, similarities=sims, scorer=self)


@dataclass(frozen=True, slots=True)
class PromptScores:
    """Scores plus the prompt similarities they came from (for the evidence)."""

    scores: NDArray[np.float32]
    similarities: NDArray[np.float32]  # (N, T) cosine similarity to each stacked prompt
    scorer: PromptScorer

    def evidence(self, rows: NDArray[np.intp], cols: NDArray[np.intp]) -> list[list[Evidence]]:
        """Top prompts of each (row, category) pair by the category's softmax, batched per
        category."""
        out: list[list[Evidence]] = [[] for _ in range(len(rows))]
        for c, block in enumerate(self.scorer.blocks):
            selected = np.flatnonzero(cols == c)
            if not len(selected):
                continue
            sims = self.similarities[rows[selected][:, None], block.columns[None, :]]
            logits = self.scorer.logit_scale * sims
            probs = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs /= probs.sum(axis=1, keepdims=True)
            order = np.argsort(-probs, axis=1)[:, :TOP_PROMPTS]
            top_p = np.take_along_axis(probs, order, axis=1).astype(np.float64).tolist()
            top_s = np.take_along_axis(sims, order, axis=1).astype(np.float64).tolist()
            names, n_positive = block.names, block.n_positive
            for position, idx, ps, ss in zip(
                selected.tolist(), order.tolist(), top_p, top_s, strict=True
            ):
                out[position] = [
                    Evidence(
                        DEFAULT_SIGNAL,
                        names[j],
                        p,
                        {"kind": "positive" if j < n_positive else "benign", "similarity": s},
                    )
                    for j, p, s in zip(idx, ps, ss, strict=True)
                ]
        return out
