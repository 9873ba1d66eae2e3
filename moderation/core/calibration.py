r"""Proposing thresholds from labelled scores: the maths of ``moderation calibrate``. Pure.

For one category, given each labelled image's score ``s`` and ground truth ``y``:

* **block** (automatic action) — the *lowest* threshold ``b`` whose blocked set meets the target
  precision, so blocking catches as much as the precision target allows (only the scores of
  violating images are candidates: lowering the threshold between two of them would add benign
  images and no recall)::

      b = min { t ∈ scores of violating images : L(TP(t), TP(t) + FP(t)) ≥ target_precision }

* **review** (the human band) — the *highest* threshold ``r`` whose flagged set (review or
  block) meets the target recall, so humans see as little as the recall target allows::

      r = max { t : L(TP(t), P) ≥ target_recall }

where ``t`` runs over the observed scores, ``TP(t)``/``FP(t)`` count labelled violating/benign
images scoring ``≥ t``, ``P`` is the number of violating images, and ``L(k, n)`` is the lower end
of the two-sided Wilson interval at ``confidence`` (``confidence = 0`` uses the plain
proportion). Requiring the *lower bound* to meet the target is what makes a proposal hold on
fresh data: a threshold is only proposed where the evidence supports it, and when no threshold
does, the category is reported **unsupported** with the best the data shows and how many
labelled examples it would take (the smallest ``n`` with ``L(n, n) ≥ target``).

Each threshold is the observed score it was found at, rounded *down* to 4 decimals when no other
labelled score falls in between (so no decision on the calibration data changes by the
rounding). If ``r ≥ b`` the review band is empty: ``r = b − 0.0001``. The implied review load is
the share of labelled images with ``r ≤ s < b``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from moderation.core.data import Data
from moderation.core.evaluation import wilson, z_for

__all__ = ["ThresholdProposal", "examples_needed", "propose_thresholds"]

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]
_STEP = 1e-4


@dataclass(frozen=True, slots=True)
class ThresholdProposal(Data):
    """Proposed thresholds for one category, what they imply on the calibration data, and
    whether the data supports the targets (``problems`` says why not)."""

    key: str
    n: int
    positives: int
    negatives: int
    current_review: float
    current_block: float
    review: float
    block: float
    block_supported: bool
    review_supported: bool
    #: On the calibration data, at the proposed thresholds.
    block_precision: float | None
    block_precision_low: float | None
    block_recall: float | None
    flagged_recall: float | None
    flagged_recall_low: float | None
    review_load: float
    blocked_share: float
    #: The same at the current thresholds, for comparison.
    current_block_precision: float | None
    current_flagged_recall: float | None
    current_review_load: float
    problems: list[str] = field(default_factory=list)

    @property
    def supported(self) -> bool:
        return self.block_supported and self.review_supported

    @property
    def changed(self) -> bool:
        return (self.review, self.block) != (self.current_review, self.current_block)


def _low(k: int, n: int, confidence: float) -> float:
    interval = wilson(k, n, confidence)
    return 0.0 if interval is None else interval.low


def examples_needed(target: float, confidence: float) -> int | None:
    """The fewest labelled examples, all correct, whose Wilson lower bound reaches ``target``:
    with every one correct the bound is ``n / (n + z²)``, so ``n ≥ target · z² / (1 − target)``
    (None for a target of 1, which no finite sample shows)."""
    if target <= 0:
        return 0
    if target >= 1:
        return None
    z = z_for(confidence)
    n = max(1, math.ceil(target * z * z / (1.0 - target) - 1e-9))
    while _low(n, n, confidence) < target:  # guard against rounding at the boundary
        n += 1
    return n


def _round_down(chosen: float, scores: FloatArray) -> float:
    """``chosen`` rounded down to 4 decimals if no score lies in between, else to 6 (what a
    policy file keeps): never above ``chosen``, so no image at ``chosen`` changes side."""
    for decimals in (4, 6):
        scale = 10.0**decimals
        rounded = float(f"{math.floor(chosen * scale) / scale:.{decimals}f}")
        if decimals == 6 or not np.any((scores >= rounded) & (scores < chosen)):
            return rounded
    return chosen


def _share(mask: BoolArray) -> float:
    return float(mask.mean()) if len(mask) else 0.0


def propose_thresholds(
    *,
    key: str,
    scores: FloatArray,
    labels: BoolArray,
    current: tuple[float, float],
    target_precision: float,
    target_recall: float,
    confidence: float = 0.95,
) -> ThresholdProposal:
    """Thresholds for one category (see the module docstring). Unsupported targets keep the
    current threshold of that band and say why in ``problems``."""
    s = np.asarray(scores, np.float64)
    y = np.asarray(labels, bool)
    n, positives = len(s), int(y.sum())
    negatives = n - positives
    problems: list[str] = []
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    tp = np.cumsum(y_sorted)
    fp = np.cumsum(~y_sorted)
    # candidate thresholds: each distinct score, at its last (lowest) occurrence
    last = np.r_[np.flatnonzero(s_sorted[1:] != s_sorted[:-1]), n - 1] if n else np.zeros(0, int)
    thresholds = s_sorted[last]
    tp_at, fp_at = tp[last], fp[last]
    # a threshold only gains recall at a violating image's score: between two of them it would
    # only add benign images, so candidates are the scores some violating image has
    gains = np.diff(np.r_[0, tp_at]) > 0

    # --- block: lowest threshold whose precision lower bound meets the target ----------------
    block, block_ok = current[1], False
    if positives == 0:
        problems.append("no violating examples: precision for blocking cannot be measured")
    else:
        lows = np.array(
            [_low(int(a), int(a + b), confidence) for a, b in zip(tp_at, fp_at, strict=True)]
        )
        feasible = np.flatnonzero((lows >= target_precision) & gains)
        if len(feasible):
            pick = int(feasible.max())  # thresholds descend: the largest index is the lowest
            block, block_ok = _round_down(float(thresholds[pick]), s), True
        else:
            best = int(np.argmax(lows))
            point = tp_at[best] / max(tp_at[best] + fp_at[best], 1)
            need = examples_needed(target_precision, confidence)
            problems.append(
                f"the data cannot support {target_precision:.1%} precision for blocking: the best "
                f"threshold ({thresholds[best]:.4f}) blocks {tp_at[best] + fp_at[best]} images at "
                f"{point:.1%} precision, lower bound {lows[best]:.1%} at {confidence:.0%} "
                f"confidence"
                + (
                    f"; showing {target_precision:.1%} takes at least {need} blocked violating "
                    "images with no benign one"
                    if need
                    else ""
                )
            )

    # --- review: highest threshold whose recall lower bound meets the target ------------------
    review, review_ok = current[0], False
    if positives:
        lows = np.array([_low(int(a), positives, confidence) for a in tp_at])
        feasible = np.flatnonzero(lows >= target_recall)
        if len(feasible):
            pick = int(feasible.min())  # the highest such threshold
            review, review_ok = _round_down(float(thresholds[pick]), s), True
        else:
            need = examples_needed(target_recall, confidence)
            problems.append(
                f"the data cannot support {target_recall:.1%} recall for the review band: "
                f"flagging every labelled image finds {positives} of {positives} violating "
                f"images, lower bound {lows.max():.1%} at {confidence:.0%} confidence"
                + (
                    f"; showing {target_recall:.1%} takes at least {need} violating images"
                    if need
                    else ""
                )
            )
    else:
        problems.append("no violating examples: recall for the review band cannot be measured")
    if negatives == 0:
        problems.append("no benign examples: false positives cannot be seen in this data")
    review = min(review, block - _STEP) if review >= block else review
    review = max(review, 0.0)

    def at(r: float, b: float) -> tuple[float | None, float | None, float | None, float]:
        blocked, flagged = s >= b, s >= r
        precision = float((blocked & y).sum() / blocked.sum()) if blocked.any() else None
        recall_b = float((blocked & y).sum() / positives) if positives else None
        recall_f = float((flagged & y).sum() / positives) if positives else None
        return precision, recall_b, recall_f, _share(flagged & ~blocked)

    precision, recall_b, recall_f, load = at(review, block)
    c_precision, _, c_recall_f, c_load = at(*current)
    blocked = s >= block
    return ThresholdProposal(
        key=key,
        n=n,
        positives=positives,
        negatives=negatives,
        current_review=current[0],
        current_block=current[1],
        review=review,
        block=block,
        block_supported=block_ok,
        review_supported=review_ok,
        block_precision=precision,
        block_precision_low=(
            _low(int((blocked & y).sum()), int(blocked.sum()), confidence)
            if blocked.any()
            else None
        ),
        block_recall=recall_b,
        flagged_recall=recall_f,
        flagged_recall_low=(
            _low(int(((s >= review) & y).sum()), positives, confidence) if positives else None
        ),
        review_load=load,
        blocked_share=_share(blocked),
        current_block_precision=c_precision,
        current_flagged_recall=c_recall_f,
        current_review_load=c_load,
        problems=problems,
    )
