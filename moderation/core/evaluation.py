r"""Measuring a policy against labelled data: the maths of ``moderation eval``. Pure: numpy only.

For one category, with ``y`` the ground truth (1: violates) and ``s`` the category's score of each
labelled image (the same score live traffic gets), at the category's thresholds ``r < b``::

    block   = s ≥ b                   the automatic action
    flagged = s ≥ r                   sent to a human or blocked
    precision = TP / (TP + FP),  recall = TP / (TP + FN),  F1 = 2PR / (P + R)   (for each)
    review load = share of all images with r ≤ s < b   (what humans must look at)

Threshold-free: ROC AUC (the probability that a random violating image outscores a random benign
one; ties count one half: the Mann–Whitney U statistic), and average precision
``AP = Σ_k (R_k − R_{k−1}) · P_k`` over the descending distinct scores (the area under the
precision–recall step curve, as scikit-learn computes it).

Uncertainty. Every proportion carries a Wilson score interval (good at small n and near 0 or 1,
where the normal approximation fails)::

    centre ± half = (p̂ + z²/2n ± z·√(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n)

ROC AUC and AP carry a percentile bootstrap interval (images resampled with replacement, a fixed
seed: the same data gives the same interval). A category with fewer than
:data:`SMALL_SAMPLE` labelled positives or negatives is marked ``small_sample``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from moderation.core.data import Data

__all__ = [
    "SMALL_SAMPLE",
    "BandMetrics",
    "CategoryMetrics",
    "Dataset",
    "Interval",
    "LabelledItem",
    "average_precision",
    "bootstrap_interval",
    "category_metrics",
    "pr_curve",
    "roc_auc",
    "wilson",
    "z_for",
]

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]

#: Fewer labelled positives or negatives than this: the category's numbers are marked small.
SMALL_SAMPLE = 30


@dataclass(frozen=True, slots=True)
class Interval(Data):
    """A two-sided confidence interval."""

    low: float
    high: float


def z_for(confidence: float) -> float:
    """The two-sided standard-normal quantile of ``confidence`` (0 for 0): 0.95 -> 1.96.

    Raises:
        ValueError: ``confidence`` outside ``[0, 1)``.
    """
    if not 0.0 <= confidence < 1.0:
        raise ValueError(f"confidence must be in [0, 1), got {confidence}")
    if confidence == 0.0:
        return 0.0
    # Acklam's rational approximation of the normal quantile (|error| < 1.2e-9).
    p = 0.5 + confidence / 2.0
    a = (-39.69683028665376, 220.9460984245205, -275.9285104469687, 138.3577518672690,
         -30.66479806614716, 2.506628277459239)  # fmt: skip
    b = (-54.47609879822406, 161.5858368580409, -155.6989798598866, 66.80131188771972,
         -13.28068155288572)  # fmt: skip
    c = (-7.784894002430293e-03, -0.3223964580411365, -2.400758277161838, -2.549732539343734,
         4.374664141464968, 2.938163982698783)  # fmt: skip
    d = (7.784695709041462e-03, 0.3224671290700398, 2.445134137142996, 3.754408661907416)
    if p > 0.97575:
        q = math.sqrt(-2.0 * math.log(1.0 - p))
        num = ((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]
        return -num / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1.0)
    q = p - 0.5
    r = q * q
    num = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q
    return num / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1.0)


def wilson(successes: int, n: int, confidence: float = 0.95) -> Interval | None:
    """The Wilson score interval of ``successes`` out of ``n`` (None when ``n`` is 0)."""
    if n <= 0:
        return None
    z = z_for(confidence)
    p = successes / n
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return Interval(max(0.0, centre - half), min(1.0, centre + half))


def roc_auc(scores: FloatArray, labels: BoolArray) -> float | None:
    """Area under the ROC curve (ties count one half); None without both classes."""
    y = np.asarray(labels, bool)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    s = np.asarray(scores, np.float64)
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = ((ends - counts + ends + 1) / 2.0)[inverse]  # average 1-based rank over ties
    u = float(ranks[y].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def pr_curve(scores: FloatArray, labels: BoolArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Precision, recall and threshold at each distinct score, highest threshold first (each
    point: everything scoring at or above the threshold is called positive)."""
    y = np.asarray(labels, bool)
    s = np.asarray(scores, np.float64)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    tp = np.cumsum(y)
    fp = np.cumsum(~y)
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1] if len(s) else np.zeros(0, int)
    tp, fp = tp[last].astype(np.float64), fp[last].astype(np.float64)
    positives = max(int(y.sum()), 1)
    precision = tp / np.maximum(tp + fp, 1.0)
    recall = tp / positives
    return precision, recall, s[last]


def average_precision(scores: FloatArray, labels: BoolArray) -> float | None:
    """AP: Σ (R_k − R_{k−1}) · P_k over descending distinct scores; None without positives."""
    y = np.asarray(labels, bool)
    if not y.any():
        return None
    precision, recall, _ = pr_curve(scores, y)
    steps = np.diff(np.r_[0.0, recall])
    return float((steps * precision).sum())


def bootstrap_interval(
    statistic: Callable[[FloatArray, BoolArray], float | None],
    scores: FloatArray,
    labels: BoolArray,
    *,
    confidence: float = 0.95,
    resamples: int = 400,
    seed: int = 0,
) -> Interval | None:
    """Percentile bootstrap interval of ``statistic`` (None when it is undefined too often)."""
    n = len(scores)
    if n == 0 or confidence <= 0 or resamples <= 0:
        return None
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        pick = rng.integers(0, n, n)
        value = statistic(scores[pick], labels[pick])
        if value is not None:
            values.append(value)
    if len(values) < resamples // 2:
        return None
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(np.asarray(values), [tail, 1.0 - tail])
    return Interval(float(low), float(high))


@dataclass(frozen=True, slots=True)
class BandMetrics(Data):
    """Precision, recall and F1 of one decision rule (``score ≥ threshold``)."""

    threshold: float
    tp: int
    fp: int
    fn: int
    tn: int
    precision: float | None
    recall: float | None
    f1: float | None
    precision_ci: Interval | None
    recall_ci: Interval | None

    @classmethod
    def at(
        cls, scores: FloatArray, labels: BoolArray, threshold: float, confidence: float
    ) -> BandMetrics:
        called = scores >= threshold
        tp = int((called & labels).sum())
        fp = int((called & ~labels).sum())
        fn = int((~called & labels).sum())
        tn = int((~called & ~labels).sum())
        precision = tp / (tp + fp) if tp + fp else None
        recall = tp / (tp + fn) if tp + fn else None
        f1 = (
            2 * precision * recall / (precision + recall)
            if precision is not None and recall is not None and precision + recall > 0
            else (0.0 if precision is not None and recall is not None else None)
        )
        return cls(
            threshold=threshold,
            tp=tp,
            fp=fp,
            fn=fn,
            tn=tn,
            precision=precision,
            recall=recall,
            f1=f1,
            precision_ci=wilson(tp, tp + fp, confidence),
            recall_ci=wilson(tp, tp + fn, confidence),
        )


@dataclass(frozen=True, slots=True)
class CategoryMetrics(Data):
    """Everything ``moderation eval`` reports about one category.

    ``confusion[truth][band]``: counts of labelled images by ground truth (``violating`` /
    ``benign``) and the band their score falls in (``allow`` / ``review`` / ``block``).
    """

    key: str
    policy_id: str
    category_id: str
    n: int
    positives: int
    negatives: int
    review_threshold: float
    block_threshold: float
    block: BandMetrics
    flagged: BandMetrics
    review_load: float
    review_load_ci: Interval | None
    blocked_share: float
    roc_auc: float | None
    roc_auc_ci: Interval | None
    average_precision: float | None
    average_precision_ci: Interval | None
    confusion: dict[str, dict[str, int]]
    small_sample: bool
    scores: list[float] = field(default_factory=list, repr=False)
    labels: list[bool] = field(default_factory=list, repr=False)


def category_metrics(
    *,
    key: str,
    scores: FloatArray,
    labels: BoolArray,
    review: float,
    block: float,
    confidence: float = 0.95,
    resamples: int = 400,
) -> CategoryMetrics:
    """The metrics of one category's scores against its labels at thresholds ``review <
    block`` (see the module docstring)."""
    s = np.asarray(scores, np.float64)
    y = np.asarray(labels, bool)
    n = len(s)
    in_review = (s >= review) & (s < block)
    bands = np.where(s >= block, 2, np.where(s >= review, 1, 0))
    names = ("allow", "review", "block")
    confusion = {
        truth: {names[b]: int(((bands == b) & mask).sum()) for b in range(3)}
        for truth, mask in (("violating", y), ("benign", ~y))
    }
    positives = int(y.sum())
    policy_id, _, category_id = key.partition("/")
    return CategoryMetrics(
        key=key,
        policy_id=policy_id,
        category_id=category_id,
        n=n,
        positives=positives,
        negatives=n - positives,
        review_threshold=review,
        block_threshold=block,
        block=BandMetrics.at(s, y, block, confidence),
        flagged=BandMetrics.at(s, y, review, confidence),
        review_load=float(in_review.mean()) if n else 0.0,
        review_load_ci=wilson(int(in_review.sum()), n, confidence),
        blocked_share=float((s >= block).mean()) if n else 0.0,
        roc_auc=roc_auc(s, y),
        roc_auc_ci=bootstrap_interval(roc_auc, s, y, confidence=confidence, resamples=resamples),
        average_precision=average_precision(s, y),
        average_precision_ci=bootstrap_interval(
            average_precision, s, y, confidence=confidence, resamples=resamples
        ),
        confusion=confusion,
        small_sample=min(positives, n - positives) < SMALL_SAMPLE,
        scores=s.tolist(),
        labels=y.tolist(),
    )


# --- labelled data -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LabelledItem:
    """One labelled image: what it violates and, where known, what it does not.

    Labels name a category as ``policy/category`` or by its bare id. ``negative`` None means
    "every category not in ``positive``" (a labels file lists all an image violates); a reviewer's
    decision labels only the category that was reviewed, so the others stay unknown.
    """

    image: str  # an image reference (URI)
    positive: frozenset[str]
    negative: frozenset[str] | None = None
    name: str = ""

    def truth(self, key: str) -> bool | None:
        """Whether this image violates category ``key`` (``policy/category``); None: unknown."""
        category = key.partition("/")[2]
        if key in self.positive or category in self.positive:
            return True
        if self.negative is None or key in self.negative or category in self.negative:
            return False
        return None


@dataclass(frozen=True, slots=True)
class Dataset:
    """Labelled images read from a labels file or a review export."""

    items: list[LabelledItem]
    source: str
    kind: str  # "labels", "review_export" or "folders" (a folder per label)
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> rows

    @property
    def from_review(self) -> bool:
        return self.kind == "review_export"
