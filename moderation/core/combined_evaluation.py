"""Measuring a combined category: each member's signal alone and the rule. Pure.

For a combined category ``K`` (``signal: combine``) with labelled images, ``moderation eval``
reports, against ``K``'s labels:

* each **member alone**: its own score at its own thresholds, the usual
  :func:`~moderation.core.evaluation.category_metrics` (what that signal would do deciding
  alone);
* the **rule**: the band the combined rule gives (:func:`~moderation.core.combined_calibration.
  rule_bands`, the live decision's), as precision and recall of its block band and of its flagged
  set (review or block), the review load and the confusion table. A rule has no score, so no ROC
  AUC or AP: ``BandMetrics.threshold`` is the band (2 block, 1 flagged).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from moderation.core.combined_calibration import rule_bands
from moderation.core.data import Data
from moderation.core.evaluation import (
    SMALL_SAMPLE,
    BandMetrics,
    CategoryMetrics,
    Interval,
    category_metrics,
    wilson,
)
from moderation.core.policy import Combine

__all__ = ["CombinedMetrics", "combined_metrics"]


@dataclass(frozen=True, slots=True)
class CombinedMetrics(Data):
    """A combined category measured alone per member and as its rule, on its own labels."""

    key: str
    rule: dict[str, Any]
    n: int
    positives: int
    negatives: int
    #: Each member's signal deciding alone (its score at its thresholds), against these labels.
    members: list[CategoryMetrics]
    block: BandMetrics
    flagged: BandMetrics
    review_load: float
    review_load_ci: Interval | None
    blocked_share: float
    confusion: dict[str, dict[str, int]]
    small_sample: bool


def combined_metrics(
    *,
    key: str,
    member_keys: list[str],
    scores: NDArray[np.float64],
    labels: NDArray[np.bool_],
    rule: Combine,
    thresholds: list[tuple[float, float]],
    confidence: float = 0.95,
    resamples: int = 400,
) -> CombinedMetrics:
    """Metrics of the combined category ``key`` from its members' (N, k) ``scores`` at their
    (review, block) ``thresholds``."""
    s = np.asarray(scores, np.float64).reshape(len(labels), len(member_keys))
    y = np.asarray(labels, bool)
    n = len(y)
    review = np.array([r for r, _ in thresholds], np.float64)
    block = np.array([b for _, b in thresholds], np.float64)
    band = rule_bands(s, review[None, :], block[None, :], rule)[0]
    as_score = band.astype(np.float64)
    names = ("allow", "review", "block")
    in_review = band == 1
    positives = int(y.sum())
    return CombinedMetrics(
        key=key,
        rule=rule.model_dump(mode="json", exclude_none=True),
        n=n,
        positives=positives,
        negatives=n - positives,
        members=[
            category_metrics(
                key=member,
                scores=s[:, i],
                labels=y,
                review=float(review[i]),
                block=float(block[i]),
                confidence=confidence,
                resamples=resamples,
            )
            for i, member in enumerate(member_keys)
        ],
        block=BandMetrics.at(as_score, y, 2.0, confidence),
        flagged=BandMetrics.at(as_score, y, 1.0, confidence),
        review_load=float(in_review.mean()) if n else 0.0,
        review_load_ci=wilson(int(in_review.sum()), n, confidence),
        blocked_share=float((band == 2).mean()) if n else 0.0,
        confusion={
            truth: {names[b]: int(((band == b) & mask).sum()) for b in range(3)}
            for truth, mask in (("violating", y), ("benign", ~y))
        },
        small_sample=min(positives, n - positives) < SMALL_SAMPLE,
    )
