"""Evaluating a policy on labelled images: ``moderation eval``, and the scoring half of
``moderation calibrate`` and ``moderation testmodel eval``.

Every image is fetched through the image sources (local files, S3, HTTP(S), inline bytes of a
reviewed job) and scored by :func:`~moderation.pipeline.score.score_local`: the same decode,
preprocessing, forward pass, signals and per-category scores as live traffic. The metrics are the
core's (:mod:`moderation.core.evaluation`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from moderation.core.appeals import Appeal, overturn_rates
from moderation.core.combined_evaluation import CombinedMetrics, combined_metrics
from moderation.core.data import Data
from moderation.core.decision import Timeline, Verdict
from moderation.core.evaluation import (
    CategoryMetrics,
    Dataset,
    Interval,
    LabelledItem,
    category_metrics,
    wilson,
)
from moderation.core.image_ref import ImageRef
from moderation.core.policy import COMBINE_SIGNAL, Category, Combine
from moderation.core.video_quality import LabelledVideo, VideoMetrics, video_metrics
from moderation.exceptions import ModerationError
from moderation.pipeline.moderator import Moderator
from moderation.pipeline.policies import CompiledSet
from moderation.pipeline.score import score_local
from moderation.pipeline.sources import ImageSources

__all__ = [
    "Accuracy",
    "AppealQuality",
    "EvaluationReport",
    "OverturnRow",
    "ScoredItem",
    "appeal_quality",
    "category_keys",
    "combined_members",
    "evaluate",
    "fetcher",
    "labelled_member_scores",
    "labelled_scores",
    "labelled_videos",
    "score_dataset",
]


@dataclass(frozen=True, slots=True)
class ScoredItem:
    """A labelled image and its verdict (or why it could not be scored)."""

    item: LabelledItem
    verdict: Verdict | None = None
    error: ModerationError | None = None
    #: A video's sampled frames: each one's own verdict, and when it was shown.
    frames: tuple[Verdict, ...] = ()
    timeline: Timeline | None = None

    @property
    def is_video(self) -> bool:
        return self.timeline is not None and self.timeline.kind == "video" and bool(self.frames)


def score_dataset(
    dataset: Dataset,
    moderator: Moderator,
    fetch: Callable[[str], bytes],
    *,
    compiled: CompiledSet | None = None,
    policy_ids: Iterable[str] | None = None,
    batch_size: int = 32,
    on_done: Callable[[int], None] | None = None,
) -> list[ScoredItem]:
    """Fetch (``fetch(image reference)``: the image sources) and score every image of
    ``dataset`` in order; an image that cannot be fetched or decoded keeps its error."""

    def loader(item: LabelledItem) -> Callable[[], bytes]:
        return lambda: fetch(item.image)

    items = [(item.name or item.image, loader(item)) for item in dataset.items]
    results = score_local(
        items,
        moderator,
        policy_ids=policy_ids,
        compiled=compiled,
        batch_size=batch_size,
        on_done=on_done,
        frames=True,
        complete=True,  # each signal is measured, even where a cheaper one settled the image
    )
    return [
        ScoredItem(
            item=item,
            verdict=result.verdict,
            error=result.error,
            frames=result.frames,
            timeline=result.timeline,
        )
        for item, result in zip(dataset.items, results, strict=True)
    ]


def fetcher(sources: ImageSources) -> Callable[[str], bytes]:
    """``fetch`` for :func:`score_dataset` through the image sources (any scheme they read),
    as the operator (a labelled dataset is the operator's own, not a tenant's)."""
    return lambda uri: sources.fetch(ImageRef(uri=uri), tenant=None)


def category_keys(
    compiled: CompiledSet, policy_ids: Iterable[str] | None = None
) -> dict[str, tuple[float, float]]:
    """``policy/category`` -> (review, block) thresholds of every category applied."""
    out: dict[str, tuple[float, float]] = {}
    for pid in compiled.ids_for(policy_ids):
        for category in compiled.by_id[pid].policy.categories:
            thresholds = category.thresholds
            out[f"{pid}/{category.id}"] = (thresholds.review, thresholds.block)
    return out


def _combined_keys(compiled: CompiledSet, policy_ids: Iterable[str] | None) -> set[str]:
    return {
        f"{pid}/{category.id}"
        for pid in compiled.ids_for(policy_ids)
        for category in compiled.by_id[pid].policy.categories
        if category.signal == COMBINE_SIGNAL
    }


def labelled_videos(scored: Sequence[ScoredItem], key: str) -> list[LabelledVideo]:
    """The videos labelled for category ``key``: ground truth, and each sampled frame's score
    with the seconds it stands for (what per-video metrics and the video rule work on)."""
    out: list[LabelledVideo] = []
    for entry in scored:
        truth = entry.item.truth(key)
        if truth is None or not entry.is_video or entry.timeline is None:
            continue
        if any(key not in frame.scores for frame in entry.frames):
            continue
        spans = entry.timeline.spans()
        out.append(
            LabelledVideo(
                name=entry.item.name or entry.item.image,
                truth=truth,
                scores=tuple(frame.scores[key] for frame in entry.frames),
                spans_s=tuple(end - start for start, end in spans),
            )
        )
    return out


def labelled_scores(
    scored: Sequence[ScoredItem], key: str
) -> tuple[np.ndarray, np.ndarray, list[ScoredItem]]:
    """The scores and ground truths (violates?) of the images labelled for category ``key``,
    and those images."""
    scores, truths, kept = [], [], []
    for entry in scored:
        if entry.verdict is None:
            continue
        truth = entry.item.truth(key)
        if truth is None or key not in entry.verdict.scores:
            continue
        # a video's score for a category: its highest sampled frame's
        frames = [f.scores[key] for f in entry.frames if key in f.scores]
        scores.append(max(frames) if frames else entry.verdict.scores[key])
        truths.append(truth)
        kept.append(entry)
    return np.asarray(scores, np.float64), np.asarray(truths, bool), kept


def labelled_member_scores(
    scored: Sequence[ScoredItem], key: str, members: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """(N, k) the member scores and (N,) ground truths of the images labelled for the combined
    category ``key`` (a video's member score: its highest sampled frame's, as
    :func:`labelled_scores` takes it)."""
    rows: list[list[float]] = []
    truths: list[bool] = []
    for entry in scored:
        if entry.verdict is None:
            continue
        truth = entry.item.truth(key)
        if truth is None or any(m not in entry.verdict.scores for m in members):
            continue
        row = []
        for member in members:
            frames = [f.scores[member] for f in entry.frames if member in f.scores]
            row.append(max(frames) if frames else entry.verdict.scores[member])
        rows.append(row)
        truths.append(truth)
    return (
        np.asarray(rows, np.float64).reshape(len(rows), len(members)),
        np.asarray(truths, bool),
    )


def combined_members(compiled: CompiledSet, key: str) -> tuple[Combine, list[Category]] | None:
    """The rule and member categories of ``key`` when it is a combined category."""
    policy_id, _, category_id = key.partition("/")
    policy = compiled.by_id[policy_id].policy
    category = policy.category(category_id)
    if category.combine is None:
        return None
    return category.combine, [policy.category(m) for m in category.combine.of]


@dataclass(frozen=True, slots=True)
class Accuracy(Data):
    """Top-1 accuracy of a dataset where every image has exactly one category (a zero-shot
    classification set): the highest-scoring category must be the labelled one."""

    top1: float
    n: int
    interval: Interval | None
    per_class: dict[str, float]
    confusions: dict[str, int]


@dataclass(frozen=True, slots=True)
class OverturnRow(Data):
    """Decided appeals of one category (``policy/category``) or policy version
    (``policy@vN``): how many, how many overturned, the rate and its interval."""

    key: str
    decided: int
    overturned: int
    rate: float
    interval: Interval | None


@dataclass(frozen=True, slots=True)
class AppealQuality(Data):
    """Appeal outcomes of the evaluated policies over the last ``days``: a quality signal
    from production beside the labelled set's metrics. A high overturn rate says the model (or
    the first reviewers) restrict what should stand, in that category or since that version."""

    days: float
    decided: int
    overturned: int
    by_category: list[OverturnRow]
    by_policy_version: list[OverturnRow]


def appeal_quality(
    appeals: Iterable[Appeal],
    *,
    policy_ids: Iterable[str],
    days: float,
    confidence: float = 0.95,
) -> AppealQuality:
    """The overturn rates of the decided ``appeals`` of ``policy_ids``, per category and per
    policy version (highest rate first), with Wilson intervals."""
    wanted = set(policy_ids)
    mine = [a for a in appeals if a.policy_id in wanted]

    def rows(by: str) -> list[OverturnRow]:
        return [
            OverturnRow(
                key=r.key,
                decided=r.decided,
                overturned=r.overturned,
                rate=r.rate,
                interval=wilson(r.overturned, r.decided, confidence),
            )
            for r in overturn_rates(mine, by=by)
        ]

    by_category = rows("category")
    return AppealQuality(
        days=days,
        decided=sum(r.decided for r in by_category),
        overturned=sum(r.overturned for r in by_category),
        by_category=by_category,
        by_policy_version=rows("policy_version"),
    )


@dataclass(frozen=True, slots=True)
class EvaluationReport(Data):
    """What ``moderation eval`` reports."""

    dataset: str
    kind: str
    n_items: int
    n_scored: int
    errors: dict[str, int]  # error code -> images
    error_examples: list[str]
    skipped: dict[str, int]
    policies: list[dict[str, str | int]]
    model: str
    confidence: float
    categories: list[CategoryMetrics]
    unlabelled: list[str]  # categories applied without any labelled image
    accuracy: Accuracy | None = None
    notes: list[str] = field(default_factory=list)
    #: Per-video metrics (each labelled video counts once, under its policy's video rule), for
    #: the categories with labelled videos.
    videos: list[VideoMetrics] = field(default_factory=list)
    n_videos: int = 0
    #: Appeal outcomes in production (``moderation eval`` with a database), None without.
    appeals: AppealQuality | None = None
    #: Combined categories with labelled images: each member's signal alone, and the rule.
    combined: list[CombinedMetrics] = field(default_factory=list)


def _accuracy(
    scored: Sequence[ScoredItem], keys: Sequence[str], confidence: float
) -> Accuracy | None:
    rows = [(e.item, e.verdict) for e in scored if e.verdict is not None]
    if not rows:
        return None
    truth: list[str] = []
    predicted: list[str] = []
    for item, verdict in rows:
        matches = [k for k in keys if item.truth(k) is True]
        if len(matches) != 1:
            return None
        truth.append(matches[0])
        scores = verdict.scores
        predicted.append(max(keys, key=lambda k: scores.get(k, -1.0)))
    correct = [t == p for t, p in zip(truth, predicted, strict=True)]
    per_class: dict[str, list[bool]] = {}
    for t, ok in zip(truth, correct, strict=True):
        per_class.setdefault(t, []).append(ok)
    confusions = Counter(
        f"{t} -> {p}" for t, p in zip(truth, predicted, strict=True) if t != p
    ).most_common(10)
    return Accuracy(
        top1=sum(correct) / len(correct),
        n=len(correct),
        interval=wilson(sum(correct), len(correct), confidence),
        per_class={k: sum(v) / len(v) for k, v in per_class.items()},
        confusions=dict(confusions),
    )


def evaluate(
    scored: Sequence[ScoredItem],
    compiled: CompiledSet,
    *,
    dataset: Dataset,
    policy_ids: Iterable[str] | None = None,
    confidence: float = 0.95,
    resamples: int = 400,
) -> EvaluationReport:
    """Per-category metrics at the policies' current thresholds (see
    :mod:`moderation.core.evaluation`), plus top-1 accuracy for a one-label-per-image set."""
    keys = category_keys(compiled, policy_ids)
    categories: list[CategoryMetrics] = []
    unlabelled: list[str] = []
    videos: list[VideoMetrics] = []
    combined = _combined_keys(compiled, policy_ids)
    measured: list[CombinedMetrics] = []
    for key, (review, block) in keys.items():
        if key in combined:
            # its band is its members' rule, not a threshold on its score: each member alone
            # and the rule, against this category's labels
            rule, members = combined_members(compiled, key) or (None, [])
            policy_id = key.partition("/")[0]
            member_keys = [f"{policy_id}/{m.id}" for m in members]
            member_scores, member_truths = labelled_member_scores(scored, key, member_keys)
            if rule is None or not len(member_truths):
                unlabelled.append(key)
                continue
            measured.append(
                combined_metrics(
                    key=key,
                    member_keys=member_keys,
                    scores=member_scores,
                    labels=member_truths,
                    rule=rule,
                    thresholds=[(m.thresholds.review, m.thresholds.block) for m in members],
                    confidence=confidence,
                    resamples=resamples,
                )
            )
            continue
        labelled = labelled_videos(scored, key)
        if labelled:
            videos.append(
                video_metrics(
                    key,
                    labelled,
                    review=review,
                    block=block,
                    rule=compiled.by_id[key.partition("/")[0]].policy.video,
                    confidence=confidence,
                )
            )
        scores, truths, _ = labelled_scores(scored, key)
        if not len(scores):
            unlabelled.append(key)
            continue
        categories.append(
            category_metrics(
                key=key,
                scores=scores,
                labels=truths,
                review=review,
                block=block,
                confidence=confidence,
                resamples=resamples,
            )
        )
    errors = Counter(e.error.code for e in scored if e.error is not None)
    examples = [f"{e.item.name}: {e.error}" for e in scored if e.error is not None][:10]
    notes = []
    if measured:
        notes.append(
            "combined categories (signal: combine) are measured as their rule and as each "
            "member's signal alone, on the combined category's labels: "
            + ", ".join(m.key for m in measured)
        )
    if dataset.from_review:
        notes.append(
            "labels come from human review: only images the model flagged were reviewed, so "
            "recall is measured among flagged images and benign images below the review "
            "threshold are missing"
        )
    policies: list[dict[str, str | int]] = [
        {
            "id": p.id,
            "version": p.version,
            "policy_hash": p.policy_hash,
            "compiled_hash": p.compiled_hash,
        }
        for p in (compiled.by_id[pid] for pid in compiled.ids_for(policy_ids))
    ]
    return EvaluationReport(
        dataset=dataset.source,
        kind=dataset.kind,
        n_items=len(scored),
        n_scored=sum(e.verdict is not None for e in scored),
        errors=dict(errors),
        error_examples=examples,
        skipped=dict(dataset.skipped),
        policies=policies,
        model=compiled.model.id,
        confidence=confidence,
        categories=categories,
        unlabelled=unlabelled,
        accuracy=_accuracy(scored, list(keys), confidence),
        notes=notes,
        videos=videos,
        combined=measured,
        n_videos=sum(e.is_video for e in scored),
    )
