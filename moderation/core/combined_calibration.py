r"""Calibrating a combined category: its members' thresholds searched together. Pure.

A combined category (``signal: combine``) has no thresholds of its own: its band comes from its
members' bands by its rule (:func:`moderation.core.decision.combined_band`). Tuning each member
alone, against its own labels, does not tune the rule: with ``block: all`` a member's block
threshold can be far lower than it could be alone, because the other member must agree. So the
members' thresholds are searched *jointly*, against the combined category's labels, with the
same objective as :func:`moderation.core.calibration.propose_thresholds`:

* **block** — among member block thresholds ``b = (b_1 … b_k)``, the ones whose rule-blocked set
  meets the target precision at the Wilson lower bound and blocks the most violating images
  (ties: the fewest benign ones, then the highest thresholds);
* **review** — with ``b`` fixed, among member review thresholds ``r`` (each ``r_i < b_i``), the
  ones whose flagged set (rule review or block) meets the target recall at the lower bound and
  flags the fewest images (ties: the most violating ones, then the highest thresholds).

Candidates for each member are the scores its violating images have (a threshold between two of
them only adds benign images), thinned by quantile to keep the joint grid at most
:data:`GRID` points (``⌊GRID^(1/k)⌋`` per member). Each chosen threshold is rounded down as
:func:`~moderation.core.calibration.propose_thresholds` rounds (no calibration decision changes).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from moderation.core.calibration import examples_needed
from moderation.core.data import Data
from moderation.core.evaluation import wilson
from moderation.core.policy import Combine, Quorum

__all__ = [
    "GRID",
    "CombinedProposal",
    "MemberThresholds",
    "propose_combined",
    "rule_bands",
]

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]
#: The most joint threshold vectors tried per band.
GRID = 4096
_STEP = 1e-4
_CHUNK = 1 << 22


@dataclass(frozen=True, slots=True)
class MemberThresholds(Data):
    """One member's thresholds: current and proposed."""

    key: str
    current_review: float
    current_block: float
    review: float
    block: float


@dataclass(frozen=True, slots=True)
class CombinedProposal(Data):
    """Proposed member thresholds of one combined category and what the rule does with them on
    the calibration data (its labels are the combined category's)."""

    key: str
    n: int
    positives: int
    negatives: int
    members: list[MemberThresholds]
    block_supported: bool
    review_supported: bool
    block_precision: float | None
    block_precision_low: float | None
    block_recall: float | None
    flagged_recall: float | None
    flagged_recall_low: float | None
    review_load: float
    blocked_share: float
    current_block_precision: float | None
    current_flagged_recall: float | None
    current_review_load: float
    #: Joint threshold vectors tried (block, review).
    tried: tuple[int, int] = (0, 0)
    problems: list[str] = field(default_factory=list)

    @property
    def supported(self) -> bool:
        return self.block_supported and self.review_supported

    @property
    def changed(self) -> bool:
        return any((m.review, m.block) != (m.current_review, m.current_block) for m in self.members)


def rule_bands(
    scores: FloatArray, review: FloatArray, block: FloatArray, rule: Combine
) -> NDArray[np.int8]:
    """The rule's band (0 allow, 1 review, 2 block) of every image for every threshold vector.

    Args:
        scores: (N, k) member scores.
        review: (G, k) member review thresholds.
        block: (G, k) member block thresholds.

    Returns:
        (G, N) bands, what :func:`moderation.core.decision.combined_band` gives for each vector.
    """
    s = np.asarray(scores, np.float64)
    r = np.asarray(review, np.float64)
    b = np.asarray(block, np.float64)
    g, (n, k) = len(b), s.shape
    out = np.zeros((g, n), np.int8)
    disagree = (
        (s.max(axis=1) - s.min(axis=1)) > rule.disagree_review
        if rule.disagree_review is not None and k
        else np.zeros(n, bool)
    )
    step = max(1, _CHUNK // max(n * k, 1))  # bounded memory: a few vectors at a time
    for start in range(0, g, step):
        stop = min(g, start + step)
        reached_block = s[None, :, :] >= b[start:stop, None, :]
        reached_review = (s[None, :, :] >= r[start:stop, None, :]) | reached_block
        blocked = _quorum(reached_block, rule.block)
        flagged = _quorum(reached_review, rule.review) | disagree[None, :]
        out[start:stop] = np.where(blocked, 2, np.where(flagged, 1, 0))
    return out


def _quorum(reached: NDArray[np.bool_], quorum: Quorum) -> NDArray[np.bool_]:
    out: NDArray[np.bool_] = (
        np.all(reached, axis=2) if quorum is Quorum.ALL else np.any(reached, axis=2)
    )
    return out


def _low(k: int, n: int, confidence: float) -> float:
    interval = wilson(k, n, confidence)
    return 0.0 if interval is None else interval.low


def _candidates(values: FloatArray, per_member: int) -> FloatArray:
    """At most ``per_member`` of the distinct ``values`` (violating images' scores), spread by
    quantile, always with the lowest and highest."""
    distinct: FloatArray = np.unique(np.asarray(values, np.float64))
    if len(distinct) <= per_member:
        return distinct
    picks = np.unique(np.round(np.linspace(0, len(distinct) - 1, per_member)).astype(int))
    out: FloatArray = distinct[picks]
    return out


def _grid(columns: list[FloatArray]) -> FloatArray:
    return np.array(list(itertools.product(*columns)), np.float64).reshape(-1, len(columns))


def _round_down(chosen: float, scores: FloatArray) -> float:
    for decimals in (4, 6):
        scale = 10.0**decimals
        rounded = float(f"{math.floor(chosen * scale) / scale:.{decimals}f}")
        if decimals == 6 or not np.any((scores >= rounded) & (scores < chosen)):
            return rounded
    return chosen


def propose_combined(
    *,
    key: str,
    member_keys: list[str],
    scores: FloatArray,
    labels: BoolArray,
    rule: Combine,
    current: list[tuple[float, float]],
    target_precision: float,
    target_recall: float,
    confidence: float = 0.95,
) -> CombinedProposal:
    """Member thresholds for the combined category ``key`` (see the module docstring).
    Unsupported targets keep the current thresholds of that band and say why in ``problems``.

    Args:
        member_keys: the k members (``policy/category``), in the rule's order.
        scores: (N, k) each labelled image's member scores.
        labels: (N,) whether each image violates the combined category.
        current: each member's (review, block).
    """
    s = np.asarray(scores, np.float64).reshape(len(labels), len(member_keys))
    y = np.asarray(labels, bool)
    n, k = s.shape
    positives = int(y.sum())
    negatives = n - positives
    cur_review = np.array([r for r, _ in current], np.float64)
    cur_block = np.array([b for _, b in current], np.float64)
    per_member = max(2, int(GRID ** (1.0 / k)))
    problems: list[str] = []

    block, block_ok, tried_block = cur_block.copy(), False, 0
    review, review_ok, tried_review = cur_review.copy(), False, 0
    if positives == 0:
        problems.append("no violating examples: precision for blocking cannot be measured")
        problems.append("no violating examples: recall for the review band cannot be measured")
    else:
        pos = s[y]
        grid = _grid([_candidates(pos[:, i], per_member) for i in range(k)])
        tried_block = len(grid)
        blocked = rule_bands(s, grid - 1.0, grid, rule) == 2  # review irrelevant to block
        tp = (blocked & y).sum(axis=1)
        fp = (blocked & ~y).sum(axis=1)
        lows = np.array([_low(int(a), int(a + b), confidence) for a, b in zip(tp, fp, strict=True)])
        feasible = np.flatnonzero((lows >= target_precision) & (tp > 0))
        if len(feasible):
            order = np.lexsort((-grid[feasible].sum(axis=1), fp[feasible], -tp[feasible]))
            pick = int(feasible[order[0]])
            block = np.array([_round_down(grid[pick, i], s[:, i]) for i in range(k)])
            block_ok = True
        else:
            best = int(np.argmax(lows))
            need = examples_needed(target_precision, confidence)
            point = tp[best] / max(int(tp[best] + fp[best]), 1)
            problems.append(
                f"the data cannot support {target_precision:.1%} precision for blocking: the best "
                f"member thresholds ({_vector(grid[best])}) block {tp[best] + fp[best]} images at "
                f"{point:.1%} precision, lower bound {lows[best]:.1%} at {confidence:.0%} "
                "confidence"
                + (
                    f"; showing {target_precision:.1%} takes at least {need} blocked violating "
                    "images with no benign one"
                    if need
                    else ""
                )
            )

        grid = _grid([_candidates(pos[:, i], per_member) for i in range(k)])
        grid = np.minimum(grid, block[None, :] - _STEP)
        grid = np.unique(np.maximum(grid, 0.0), axis=0)
        tried_review = len(grid)
        flagged = rule_bands(s, grid, np.broadcast_to(block, grid.shape), rule) >= 1
        tp = (flagged & y).sum(axis=1)
        count = flagged.sum(axis=1)
        lows = np.array([_low(int(a), positives, confidence) for a in tp])
        feasible = np.flatnonzero(lows >= target_recall)
        if len(feasible):
            order = np.lexsort((-grid[feasible].sum(axis=1), -tp[feasible], count[feasible]))
            pick = int(feasible[order[0]])
            review = np.array([_round_down(grid[pick, i], s[:, i]) for i in range(k)])
            review_ok = True
        else:
            need = examples_needed(target_recall, confidence)
            problems.append(
                f"the data cannot support {target_recall:.1%} recall for the review band: the "
                f"rule flags at most {int(tp.max())} of {positives} violating images, lower "
                f"bound {lows.max():.1%} at {confidence:.0%} confidence"
                + (
                    f"; showing {target_recall:.1%} takes at least {need} violating images"
                    if need
                    else ""
                )
            )
    if negatives == 0:
        problems.append("no benign examples: false positives cannot be seen in this data")
    review = np.maximum(np.minimum(review, block - _STEP), 0.0)

    def at(r: FloatArray, b: FloatArray) -> tuple[BoolArray, BoolArray]:
        band = rule_bands(s, r[None, :], b[None, :], rule)[0]
        return band == 2, band >= 1

    blocked_now, flagged_now = at(review, block)
    blocked_cur, flagged_cur = at(cur_review, cur_block)

    def precision(mask: BoolArray) -> float | None:
        return float((mask & y).sum() / mask.sum()) if mask.any() else None

    def recall(mask: BoolArray) -> float | None:
        return float((mask & y).sum() / positives) if positives else None

    def share(mask: BoolArray) -> float:
        return float(mask.mean()) if n else 0.0

    return CombinedProposal(
        key=key,
        n=n,
        positives=positives,
        negatives=negatives,
        members=[
            MemberThresholds(
                key=member,
                current_review=float(cur_review[i]),
                current_block=float(cur_block[i]),
                review=round(float(review[i]), 6),
                block=float(block[i]),
            )
            for i, member in enumerate(member_keys)
        ],
        block_supported=block_ok,
        review_supported=review_ok,
        block_precision=precision(blocked_now),
        block_precision_low=(
            _low(int((blocked_now & y).sum()), int(blocked_now.sum()), confidence)
            if blocked_now.any()
            else None
        ),
        block_recall=recall(blocked_now),
        flagged_recall=recall(flagged_now),
        flagged_recall_low=(
            _low(int((flagged_now & y).sum()), positives, confidence) if positives else None
        ),
        review_load=share(flagged_now & ~blocked_now),
        blocked_share=share(blocked_now),
        current_block_precision=precision(blocked_cur),
        current_flagged_recall=recall(flagged_cur),
        current_review_load=share(flagged_cur & ~blocked_cur),
        tried=(tried_block, tried_review),
        problems=problems,
    )


def _vector(values: FloatArray) -> str:
    return ", ".join(f"{v:.4f}" for v in values)
