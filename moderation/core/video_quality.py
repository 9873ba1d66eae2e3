r"""Per-video precision and recall, and calibrating a policy's video rule. Pure (numpy only).

A labelled video counts once, whatever its number of sampled frames: for one category it is
**blocked** when its sampled frames meet the policy's rule (:class:`~moderation.core.policy.
VideoRule`: at least ``min_block_frames`` samples scoring ``≥ block`` and at least
``min_block_seconds`` of the video in them, each sample standing for the time until the next),
and **flagged** (review or block) when one sample scores ``≥ review``; exactly as the live
verdict decides (:mod:`moderation.core.video`). Per-video precision and recall follow, with
Wilson intervals.

Calibrating the rule (:func:`propose_video_rule`): the rule is the policy's, shared by its
categories, so it is searched over every (labelled video, category) pair of the policy, each at
the block threshold its category will use. Each candidate rule (a grid of ``min_block_frames``
× ``min_block_seconds``) blocks some pairs; the proposal is the rule with the highest per-video
block recall whose precision meets the target at the lower end of its interval (ties: the
fewest frames, then the fewest seconds; seconds hold when the sampling rate changes, a frame
count does not). When no candidate does, the rule with the best lower bound
is reported as unsupported, like a threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from moderation.core.data import Data
from moderation.core.evaluation import Interval, wilson
from moderation.core.policy import VideoRule

__all__ = [
    "RULE_FRAMES",
    "RULE_SECONDS",
    "AtThreshold",
    "LabelledVideo",
    "RuleOutcome",
    "VideoMetrics",
    "VideoRuleProposal",
    "propose_video_rule",
    "rule_outcome",
    "video_metrics",
]

#: Candidate ``min_block_frames`` and ``min_block_seconds`` of the rule search.
RULE_FRAMES = (1, 2, 3, 5)
RULE_SECONDS = (0.0, 0.5, 1.0, 2.0, 3.0, 5.0)


@dataclass(frozen=True, slots=True)
class LabelledVideo:
    """One labelled video for one category: its ground truth, and each sampled frame's score
    with the seconds it stands for."""

    name: str
    truth: bool
    scores: tuple[float, ...]
    spans_s: tuple[float, ...]

    def blocked(self, block: float, rule: VideoRule | None) -> bool:
        hits = [
            span for score, span in zip(self.scores, self.spans_s, strict=True) if score >= block
        ]
        if not hits:
            return False
        if rule is None:
            return True
        return len(hits) >= rule.min_block_frames and sum(hits) >= rule.min_block_seconds - 1e-9

    def flagged(self, review: float) -> bool:
        return any(score >= review for score in self.scores)


@dataclass(frozen=True, slots=True)
class RuleOutcome(Data):
    """What one rule does to the labelled videos at one block threshold."""

    min_block_frames: int
    min_block_seconds: float
    blocked: int
    true_blocked: int
    precision: float | None
    precision_low: float | None
    recall: float | None


@dataclass(frozen=True, slots=True)
class VideoMetrics(Data):
    """Per-video metrics of one category at its thresholds and the policy's video rule."""

    key: str
    videos: int
    positives: int
    negatives: int
    min_block_frames: int
    min_block_seconds: float
    block_precision: float | None
    block_precision_interval: Interval | None
    block_recall: float | None
    block_recall_interval: Interval | None
    flagged_recall: float | None
    flagged_precision: float | None
    #: Videos blocked, sent to review only, and allowed.
    blocked: int
    reviewed: int
    allowed: int
    #: The names of labelled videos the category got wrong (first 10 each).
    missed: list[str] = field(default_factory=list)
    false_blocks: list[str] = field(default_factory=list)


def _share(k: int, n: int) -> float | None:
    return k / n if n else None


#: A labelled video with the block threshold of its category.
AtThreshold = tuple[LabelledVideo, float]


def rule_outcome(videos: Sequence[AtThreshold], rule: VideoRule, confidence: float) -> RuleOutcome:
    """Per-video block precision and recall of ``rule``, each video at its block threshold."""
    blocked = [v for v, block in videos if v.blocked(block, rule)]
    true_blocked = sum(v.truth for v in blocked)
    positives = sum(v.truth for v, _ in videos)
    interval = wilson(true_blocked, len(blocked), confidence) if confidence else None
    precision = _share(true_blocked, len(blocked))
    return RuleOutcome(
        min_block_frames=rule.min_block_frames,
        min_block_seconds=rule.min_block_seconds,
        blocked=len(blocked),
        true_blocked=true_blocked,
        precision=precision,
        precision_low=interval.low if interval else precision,
        recall=_share(true_blocked, positives),
    )


def video_metrics(
    key: str,
    videos: Sequence[LabelledVideo],
    *,
    review: float,
    block: float,
    rule: VideoRule | None,
    confidence: float = 0.95,
) -> VideoMetrics:
    """Per-video precision and recall of category ``key`` (see the module docstring)."""
    rule = rule or VideoRule()
    blocked = [v.blocked(block, rule) for v in videos]
    flagged = [v.flagged(review) for v in videos]
    truths = [v.truth for v in videos]
    positives = sum(truths)
    tp = sum(b and t for b, t in zip(blocked, truths, strict=True))
    n_blocked = sum(blocked)
    flagged_tp = sum(f and t for f, t in zip(flagged, truths, strict=True))
    return VideoMetrics(
        key=key,
        videos=len(videos),
        positives=positives,
        negatives=len(videos) - positives,
        min_block_frames=rule.min_block_frames,
        min_block_seconds=rule.min_block_seconds,
        block_precision=_share(tp, n_blocked),
        block_precision_interval=wilson(tp, n_blocked, confidence) if confidence else None,
        block_recall=_share(tp, positives),
        block_recall_interval=wilson(tp, positives, confidence) if confidence else None,
        flagged_recall=_share(flagged_tp, positives),
        flagged_precision=_share(flagged_tp, sum(flagged)),
        blocked=n_blocked,
        reviewed=sum(f and not b for f, b in zip(flagged, blocked, strict=True)),
        allowed=sum(not f for f in flagged),
        missed=[v.name for v, f in zip(videos, flagged, strict=True) if v.truth and not f][:10],
        false_blocks=[v.name for v, b in zip(videos, blocked, strict=True) if b and not v.truth][
            :10
        ],
    )


@dataclass(frozen=True, slots=True)
class VideoRuleProposal(Data):
    """The proposed video rule of one category's policy, and every candidate's outcome."""

    policy_id: str
    videos: int
    current: RuleOutcome
    proposed: RuleOutcome
    supported: bool
    candidates: list[RuleOutcome]
    problems: list[str] = field(default_factory=list)

    @property
    def rule(self) -> VideoRule:
        return VideoRule(
            min_block_frames=self.proposed.min_block_frames,
            min_block_seconds=self.proposed.min_block_seconds,
        )


def propose_video_rule(
    policy_id: str,
    videos: Sequence[AtThreshold],
    *,
    current: VideoRule | None,
    target_precision: float,
    confidence: float = 0.95,
    frames: Sequence[int] = RULE_FRAMES,
    seconds: Sequence[float] = RULE_SECONDS,
) -> VideoRuleProposal:
    """The video rule of policy ``policy_id`` from its labelled videos, each at its category's
    block threshold (see the module docstring).

    Raises:
        ValueError: no labelled video, or a target outside (0, 1].
    """
    if not videos:
        raise ValueError(f"{policy_id}: no labelled video to calibrate the video rule on")
    if not 0.0 < target_precision <= 1.0:
        raise ValueError(f"target precision must be in (0, 1], got {target_precision}")
    now = current or VideoRule()
    candidates = [
        rule_outcome(videos, VideoRule(min_block_frames=f, min_block_seconds=s), confidence)
        for f in frames
        for s in seconds
    ]
    meeting = [
        c
        for c in candidates
        if c.precision_low is not None and c.precision_low >= target_precision - 1e-12
    ]
    problems: list[str] = []
    if meeting:
        best = max(
            meeting,
            key=lambda c: (c.recall or 0.0, -c.min_block_frames, -c.min_block_seconds),
        )
    else:
        best = max(
            candidates,
            key=lambda c: (c.precision_low or 0.0, c.recall or 0.0, -c.min_block_seconds),
        )
        problems.append(
            f"no video rule reaches {target_precision:.1%} per-video block precision at the "
            f"{confidence:.0%} lower bound on {len(videos)} videos (best "
            f"{(best.precision_low or 0.0):.1%}); more labelled videos are needed"
        )
    return VideoRuleProposal(
        policy_id=policy_id,
        videos=len(videos),
        current=rule_outcome(videos, now, confidence),
        proposed=best,
        supported=bool(meeting),
        candidates=candidates,
        problems=problems,
    )
