"""Decisions and verdicts: from category scores to allow / review / block, with an explanation.

Each category's score falls in one of three bands cut by its two thresholds::

    score <  review           -> ALLOW
    review <= score < block   -> REVIEW  (human review queue)
    score >= block            -> BLOCK

The verdict of an image is the most severe decision over every category of every policy applied
(BLOCK > REVIEW > ALLOW); ties go to the higher category severity, then to the larger margin past
the threshold. Which signal scored a category does not matter here: prompts, hash banks and any
other signal meet in the same bands and the same most-severe rule. A combined category
(``signal: combine``) takes its band from its members' bands by its rule
(:class:`~moderation.core.policy.Combine`), and its members, inputs only, are held at allow.
Pure: no I/O.

Verdicts are frozen, slotted dataclasses: a worker builds thousands a second, and plain slotted
objects cost a fraction of validated models (and of the garbage collector's time). Pydantic
models that hold them (a job result, a review item) validate and serialize them like models;
``to_dict`` and ``from_dict`` do it directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
from numpy.typing import NDArray

from moderation.core.data import Data
from moderation.core.policy import COMBINE_SIGNAL, Action, Severity
from moderation.core.scoring import (
    CategorySlot,
    Evidence,
    ScoreBatch,
    combined_band,
    member_bands,
)

__all__ = [
    "CategoryResult",
    "Decision",
    "Evidence",
    "FrameHash",
    "PolicyRef",
    "SkippedSignal",
    "Timeline",
    "Verdict",
    "VideoFindings",
    "VideoSegment",
    "bands",
    "build_verdict",
    "decisions",
    "most_severe",
    "verdict_at",
    "verdicts",
]


class Decision(str, Enum):
    ALLOW = "allow"
    REVIEW = "review"
    BLOCK = "block"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {Decision.ALLOW: 0, Decision.REVIEW: 1, Decision.BLOCK: 2}
_BY_RANK = (Decision.ALLOW, Decision.REVIEW, Decision.BLOCK)


@dataclass(frozen=True, slots=True)
class CategoryResult(Data):
    """How one category scored an image, with its signal's evidence."""

    policy_id: str
    policy_version: int
    category_id: str
    signal: str
    severity: Severity
    score: float
    decision: Decision
    review_threshold: float
    block_threshold: float
    margin_review: float  # score - review threshold (>= 0: at least review)
    margin_block: float  # score - block threshold (>= 0: blocked)
    action: Action
    reason_code: str | None
    evidence: list[Evidence]

    @property
    def key(self) -> str:
        return f"{self.policy_id}/{self.category_id}"


@dataclass(frozen=True, slots=True)
class PolicyRef(Data):
    id: str
    version: int
    policy_hash: str
    compiled_hash: str


@dataclass(frozen=True, slots=True)
class Timeline(Data):
    """When each sampled frame of a video or an animation was shown, seconds from its start."""

    kind: str  # "video" or "animation"
    duration_s: float
    timestamps: tuple[float, ...]
    #: The frame number of each sample (a video's: estimated from its timestamp and frame rate).
    frame_numbers: tuple[int, ...] = ()

    def spans(self) -> list[tuple[float, float]]:
        """(start, end) each sample stands for: until the next sample, the last until the end."""
        ends = [*self.timestamps[1:], max(self.duration_s, self.timestamps[-1])]
        return [(t, max(t, end)) for t, end in zip(self.timestamps, ends, strict=True)]


@dataclass(frozen=True, slots=True)
class VideoSegment(Data):
    """A run of samples in which a category reached at least review."""

    category: str  # "policy/category"
    decision: Decision  # the most severe band reached in it
    start_s: float
    end_s: float
    frames: int
    top_score: float
    top_frame_s: float


@dataclass(frozen=True, slots=True)
class FrameHash(Data):
    """A sampled frame's PDQ hash, vPDQ-style: frame number, timestamp, quality, hash."""

    frame_number: int
    timestamp_s: float
    quality: int
    pdq: str


@dataclass(frozen=True, slots=True)
class VideoFindings(Data):
    """What a video's verdict adds to a photo's: where each category was reached."""

    kind: str
    duration_s: float
    frames_scored: int
    timestamps: list[float]
    segments: list[VideoSegment]
    #: The timestamp of the frame that decided the verdict (its top frame).
    top_frame_s: float
    #: Categories whose block was held to review by the policy's minimum (``policy/category``).
    held_to_review: list[str] = field(default_factory=list)
    #: Each sampled frame's PDQ hash and quality (when the PDQ signal ran), in time order.
    frame_hashes: list[FrameHash] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SkippedSignal(Data):
    """A signal that did not run on an image, and why (cost control,
    :mod:`moderation.core.scoring`): its categories have no score in the verdict."""

    signal: str
    #: Why: ``settled`` (a cheaper signal's category had already blocked with a severity at
    #: least this signal's categories could reach).
    reason: str
    #: Its categories (``policy/category``), left unscored.
    categories: list[str]
    #: The category whose block settled the decision.
    settled_by: str | None = None


@dataclass(frozen=True, slots=True)
class Verdict(Data):
    """The outcome for one image, with enough context to explain and audit it."""

    decision: Decision
    action: Action
    reason_code: str | None
    policy_id: str | None  # the deciding category's policy (None when nothing was scored)
    category_id: str | None
    severity: Severity | None
    score: float
    categories: list[CategoryResult]  # every non-allow category, or the top-scoring one
    scores: dict[str, float]  # "policy/category" -> score, for every category applied
    policies: list[PolicyRef]
    model: str
    #: A video's or an animation's findings (segments per category, the top frame); None for
    #: a still image.
    video: VideoFindings | None = None
    #: Signals not run on this image because its decision was already settled (cost order).
    skipped: list[SkippedSignal] = field(default_factory=list)

    @property
    def deciding(self) -> CategoryResult | None:
        """The category that decided the verdict."""
        return self.categories[0] if self.categories else None

    def explain(self) -> str:
        top = self.deciding
        if top is None:
            return "allowed: no categories applied"
        verb = {"allow": "allowed", "review": "sent to review", "block": "blocked"}[
            self.decision.value
        ]
        bound = (
            _combined_bound(top)
            if top.signal == COMBINE_SIGNAL
            else f"≥ block {top.block_threshold:.2f}"
            if self.decision is Decision.BLOCK
            else f"≥ review {top.review_threshold:.2f}"
            if self.decision is Decision.REVIEW
            else f"< review {top.review_threshold:.2f}"
        )
        best = top.evidence[0] if top.evidence else None
        tail = f"; best match {best.label!r} ({best.score:.2f})" if best else ""
        if self.skipped:
            tail += "; not run (decision settled): " + ", ".join(
                f"{s.signal} (by {s.settled_by})" for s in self.skipped
            )
        return f"{verb}: {top.key} ({top.severity.value}) score {top.score:.3f} {bound}{tail}"


def _combined_bound(top: CategoryResult) -> str:
    parts = [
        f"{e.label} {e.score:.2f} {e.details.get('band', '?')}"
        for e in top.evidence
        if "band" in e.details
    ]
    return "by " + ", ".join(parts)


def most_severe(items: Sequence[Verdict]) -> Verdict:
    """The most severe of several verdicts (the frames of one animated image): decision, then
    severity, then score."""
    return max(
        items, key=lambda v: (v.decision.rank, v.severity.rank if v.severity else 0, v.score)
    )


def _thresholds(slots: Sequence[CategorySlot]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    review = np.array([s.category.category.thresholds.review for s in slots], np.float32)
    block = np.array([s.category.category.thresholds.block for s in slots], np.float32)
    return review, block


def bands(batch: ScoreBatch) -> NDArray[np.int8]:
    """(N, C) band per image and category: 0 allow, 1 review, 2 block; capped by the batch's
    ``ceiling`` where a signal set one (a quarantined bank entry's match: review at most)."""
    out = member_bands(batch.scores, batch.slots, batch.ceiling)
    if not batch.combined:
        return out
    own = out.copy()
    for combined in batch.combined:
        out[:, combined.column] = combined_band(own, batch.scores, combined)
        if batch.ceiling is not None:
            out[:, combined.column] = np.minimum(
                out[:, combined.column], batch.ceiling[:, combined.column]
            )
    for combined in batch.combined:
        out[:, list(combined.members)] = 0  # inputs only: the combined category decides
    return out


def _policy_refs(batch: ScoreBatch) -> list[PolicyRef]:
    seen: dict[str, PolicyRef] = {}
    for slot in batch.slots:
        p = slot.policy
        if p.id not in seen:
            seen[p.id] = PolicyRef(p.id, p.version, p.policy_hash, p.compiled_hash)
    return list(seen.values())


def _category_result(
    slot: CategorySlot, score: float, band: int, evidence: list[Evidence]
) -> CategoryResult:
    category = slot.category.category
    action = getattr(category.actions, _BY_RANK[band].value)
    review, block = category.thresholds.review, category.thresholds.block
    return CategoryResult(
        policy_id=slot.policy.id,
        policy_version=slot.policy.version,
        category_id=category.id,
        signal=category.signal,
        severity=category.severity,
        score=score,
        decision=_BY_RANK[band],
        review_threshold=review,
        block_threshold=block,
        margin_review=score - review,
        margin_block=score - block,
        action=action.action,
        reason_code=action.reason_code,
        evidence=evidence,
    )


def build_verdict(
    results: list[CategoryResult],
    scores: dict[str, float],
    refs: list[PolicyRef],
    model: str,
    *,
    video: VideoFindings | None = None,
    skipped: list[SkippedSignal] | None = None,
) -> Verdict:
    """The verdict of ``results`` (most severe first): the head band decides."""
    head = results[0]
    return Verdict(
        decision=head.decision,
        action=head.action,
        reason_code=head.reason_code,
        policy_id=head.policy_id,
        category_id=head.category_id,
        severity=head.severity,
        score=head.score,
        categories=results,
        scores=scores,
        policies=refs,
        model=model,
        video=video,
        skipped=skipped or [],
    )


def _skipped(batch: ScoreBatch, row: int) -> list[SkippedSignal]:
    return [
        SkippedSignal(
            signal=skip.signal,
            reason="settled",
            categories=[batch.slots[c].key for c in skip.columns.tolist()],
            settled_by=batch.slots[by].key if by >= 0 else None,
        )
        for skip, by in batch.skipped(row)
    ]


def _scores_of(
    keys: Sequence[str], row: Sequence[float], unscored: NDArray[np.bool_] | None
) -> dict[str, float]:
    if unscored is None:
        return {k: round(v, 6) for k, v in zip(keys, row, strict=True)}
    return {
        k: round(v, 6) for k, v, skip in zip(keys, row, unscored.tolist(), strict=True) if not skip
    }


def verdict_at(batch: ScoreBatch, row: int) -> Verdict:
    """The verdict for image ``row`` of ``batch``: the plain reference that :func:`verdicts`
    computes for a whole batch at once."""
    band_row = bands(batch)[row]
    scores = batch.scores[row]
    margins = [
        float(scores[c])
        - (
            s.category.category.thresholds.block
            if band_row[c] == 2
            else s.category.category.thresholds.review
        )
        for c, s in enumerate(batch.slots)
    ]
    order = sorted(
        range(len(batch.slots)),
        key=lambda c: (
            -int(band_row[c]),
            -batch.slots[c].category.category.severity.rank,
            -margins[c],
        ),
    )
    shown = [c for c in order if band_row[c] > 0] or order[:1]
    cols = np.array(shown, np.intp)
    evidence = batch.evidence(np.full(len(cols), row, np.intp), cols)
    results = [
        _category_result(batch.slots[c], float(scores[c]), int(band_row[c]), ev)
        for c, ev in zip(shown, evidence, strict=True)
    ]
    unscored = batch.unscored()
    return build_verdict(
        results,
        _scores_of(
            [s.key for s in batch.slots],
            scores.astype(np.float64).tolist(),
            None if unscored is None else unscored[row],
        ),
        _policy_refs(batch),
        batch.slots[0].policy.model.id,
        skipped=_skipped(batch, row),
    )


def verdicts(batch: ScoreBatch) -> list[Verdict]:
    """Verdicts for every image of ``batch``, in order.

    Same result as ``[verdict_at(batch, i) for i in range(len(batch))]``: the numeric work
    (bands, margins, ordering) is done for the whole batch at once, evidence is asked only for the
    categories a verdict shows, and only the result objects are built per image.
    """
    n, n_slots = batch.scores.shape
    if n == 0:
        return []
    slots = batch.slots
    review, block = _thresholds(slots)
    band_matrix = bands(batch)
    severity = np.broadcast_to(
        np.array([s.category.category.severity.rank for s in slots]), (n, n_slots)
    )
    margins = batch.scores - np.where(band_matrix == 2, block, review)
    orders = np.lexsort((-margins, -severity, -band_matrix), axis=-1)
    n_shown = np.maximum((band_matrix > 0).sum(axis=1), 1)
    # The (image, category) pairs the verdicts show, row-major in display order.
    shown = np.arange(n_slots)[None, :] < n_shown[:, None]
    rows = np.repeat(np.arange(n), n_shown)
    cols = orders[shown]
    evidence = batch.evidence(rows, cols)

    refs = _policy_refs(batch)
    model = slots[0].policy.model.id
    keys = [s.key for s in slots]
    scores = batch.scores.astype(np.float64).tolist()
    pair_cols = cols.tolist()
    pair_bands = band_matrix[rows, cols].tolist()
    counts = n_shown.tolist()
    unscored = batch.unscored()
    out: list[Verdict] = []
    start = 0
    for i in range(n):
        row_scores = scores[i]
        end = start + counts[i]
        results = [
            _category_result(slots[c], row_scores[c], band, evidence[pair])
            for pair, c, band in zip(
                range(start, end), pair_cols[start:end], pair_bands[start:end], strict=True
            )
        ]
        start = end
        out.append(
            build_verdict(
                results,
                _scores_of(keys, row_scores, None if unscored is None else unscored[i]),
                refs,
                model,
                skipped=_skipped(batch, i) if unscored is not None else None,
            )
        )
    return out


def decisions(
    batch: ScoreBatch,
) -> tuple[NDArray[np.int8], NDArray[np.intp], NDArray[np.float32]]:
    """Per row of ``batch``: the verdict's decision rank (0 allow, 1 review, 2 block), its
    deciding column and that column's score — what :func:`verdicts` decides, by the same
    ordering (band, then severity, then margin), without building any verdict. For bulk
    re-scoring (policy backtests)."""
    n, n_slots = batch.scores.shape
    if n == 0:
        return np.zeros(0, np.int8), np.zeros(0, np.intp), np.zeros(0, np.float32)
    review, block = _thresholds(batch.slots)
    band_matrix = bands(batch)
    severity = np.broadcast_to(
        np.array([s.category.category.severity.rank for s in batch.slots]), (n, n_slots)
    )
    margins = batch.scores - np.where(band_matrix == 2, block, review)
    deciding = np.lexsort((-margins, -severity, -band_matrix), axis=-1)[:, 0]
    rows = np.arange(n)
    return band_matrix[rows, deciding], deciding, batch.scores[rows, deciding]
