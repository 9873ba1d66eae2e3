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

**Exemplars.** A category's example images (``exemplars.positive``: violating;
``exemplars.benign``: allowed look-alikes) join the softmax as extra entries, on the side they
belong to. Image-to-image similarities live on another scale than image-to-text ones (a photo is
far closer to its near-duplicate than to any caption), so an exemplar :math:`e` enters with its
own logit::

    g(x, e) = s · a_e + β · (1 − (1 − x·e) / ρ)
    a_e     = max_t e·t          over the category's prompt embeddings (its best caption match)

with ``β`` = :data:`EXEMPLAR_BOOST` nats and ``ρ`` the category's ``exemplars.radius`` (cosine
distance). An image identical to the exemplar scores ``β`` nats above the exemplar's own best
prompt, so the exemplar decides it; at distance ``ρ`` the exemplar weighs as much as that prompt,
and its weight falls by a factor ``e^β`` per further ``ρ``: beyond ``2ρ`` it no longer matters.
Adding a known false positive under ``benign`` therefore flips it (and its near-duplicates)
without moving anything else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from moderation.core.policy import DEFAULT_SIGNAL
from moderation.core.scoring import CategorySlot, Evidence, FeatureBatch

__all__ = ["EXEMPLAR_BOOST", "TOP_PROMPTS", "PromptScorer", "PromptScores", "PromptSignal"]

#: Prompts shown as evidence per category.
TOP_PROMPTS = 3
#: How many nats an image identical to an exemplar scores above the exemplar's best prompt.
EXEMPLAR_BOOST = 5.0


class PromptSignal:
    """Scores categories by CLIP zero-shot prompts; needs only the image embedding."""

    name = DEFAULT_SIGNAL
    needs_image = False
    min_side = 0
    #: Free once the image is embedded (the embedding is computed for every image anyway).
    cost = 0.0

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
    n_positive: int  # the first n_positive columns are positive (prompts, then exemplars)
    names: tuple[str, ...]
    kinds: tuple[str, ...]
    #: Per column: logit = scale · similarity + bias (None: every column is a prompt, scale s).
    scale: NDArray[np.float32] | None = None
    bias: NDArray[np.float32] | None = None

    def logits(self, sims: NDArray[np.float32], logit_scale: float) -> NDArray[np.float32]:
        """Logits from this block's similarities (a new array)."""
        if self.scale is None or self.bias is None:
            out: NDArray[np.float32] = logit_scale * sims
            return out
        scaled: NDArray[np.float32] = sims * self.scale + self.bias
        return scaled


def _block_rows(category: Any, logit_scale: float) -> tuple[NDArray[np.float32], _Block]:
    """One category's rows of the stacked matrix (positive prompts, positive exemplars, benign
    prompts, benign exemplars) and its block, without columns yet."""
    prompts = [category.positive, category.benign]
    parts = [category.positive]
    names = [*category.prompts]
    kinds = ["positive"] * len(category.prompts)
    has_exemplars = len(category.exemplars) + len(category.benign_exemplars) > 0
    if has_exemplars:
        parts.append(category.exemplar_positive)
        names += category.exemplars
        kinds += ["positive_exemplar"] * len(category.exemplars)
    n_positive = len(names)
    parts.append(category.benign)
    names += category.benign_prompts
    kinds += ["benign"] * len(category.benign_prompts)
    if has_exemplars:
        parts.append(category.exemplar_benign)
        names += category.benign_exemplars
        kinds += ["benign_exemplar"] * len(category.benign_exemplars)
    rows = np.concatenate([p for p in parts if len(p)]).astype(np.float32)
    block = _Block(
        columns=np.zeros(0, np.intp),
        n_positive=n_positive,
        names=tuple(names),
        kinds=tuple(kinds),
    )
    if not has_exemplars:
        return rows, block
    texts = np.concatenate([p for p in prompts if len(p)]).astype(np.float32)
    is_exemplar = np.array([k.endswith("_exemplar") for k in kinds])
    anchor = (rows[is_exemplar] @ texts.T).max(axis=1)  # a_e: each exemplar's best prompt
    steep = EXEMPLAR_BOOST / category.exemplar_radius
    scale = np.full(len(rows), logit_scale, np.float32)
    bias = np.zeros(len(rows), np.float32)
    scale[is_exemplar] = steep
    bias[is_exemplar] = logit_scale * anchor + EXEMPLAR_BOOST - steep
    return rows, _Block(
        columns=block.columns,
        n_positive=n_positive,
        names=block.names,
        kinds=block.kinds,
        scale=scale,
        bias=bias,
    )


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
            block_rows, block = _block_rows(slot.category, self.logit_scale)
            rows.append(block_rows)
            self.blocks.append(
                _Block(
                    columns=np.arange(offset, offset + len(block_rows), dtype=np.intp),
                    n_positive=block.n_positive,
                    names=block.names,
                    kinds=block.kinds,
                    scale=block.scale,
                    bias=block.bias,
                )
            )
            offset += len(block_rows)
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
            logits = block.logits(sims[:, block.columns], self.logit_scale)
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
            logits = block.logits(sims, self.scorer.logit_scale)
            probs = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs /= probs.sum(axis=1, keepdims=True)
            order = np.argsort(-probs, axis=1)[:, :TOP_PROMPTS]
            top_p = np.take_along_axis(probs, order, axis=1).astype(np.float64).tolist()
            top_s = np.take_along_axis(sims, order, axis=1).astype(np.float64).tolist()
            names, kinds = block.names, block.kinds
            for position, idx, ps, ss in zip(
                selected.tolist(), order.tolist(), top_p, top_s, strict=True
            ):
                out[position] = [
                    Evidence(DEFAULT_SIGNAL, names[j], p, {"kind": kinds[j], "similarity": s})
                    for j, p, s in zip(idx, ps, ss, strict=True)
                ]
        return out
