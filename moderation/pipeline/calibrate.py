"""Calibrating a policy's thresholds on labelled images: ``moderation calibrate``.

The images are scored exactly as :mod:`moderation.pipeline.evaluate` scores them (the live
scoring path); the thresholds come from the core's search
(:func:`moderation.core.calibration.propose_thresholds`): per category, the lowest block
threshold that meets the target precision and the highest review threshold that meets the target
recall, both at the lower end of a confidence interval. The proposal becomes a *new* policy
version (written by the caller), never an edit of the live file.

With labelled videos, the policy's **video rule** (``video.min_block_frames`` /
``min_block_seconds``: what a video needs before it is blocked) is calibrated too, on a per-video
basis at the proposed block thresholds (:func:`moderation.core.video_quality.
propose_video_rule`), and written with them.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from moderation.core.calibration import ThresholdProposal, propose_thresholds
from moderation.core.combined_calibration import CombinedProposal, propose_combined
from moderation.core.data import Data
from moderation.core.evaluation import Dataset
from moderation.core.policy import COMBINE_SIGNAL
from moderation.core.video_quality import VideoRuleProposal, propose_video_rule
from moderation.exceptions import CalibrationUnsupported
from moderation.pipeline.evaluate import (
    ScoredItem,
    labelled_member_scores,
    labelled_scores,
    labelled_videos,
)
from moderation.pipeline.policies import CompiledSet

__all__ = ["CalibrationReport", "calibrate"]


@dataclass(frozen=True, slots=True)
class CalibrationReport(Data):
    """Proposed thresholds of one policy and what they imply on the calibration data."""

    dataset: str
    kind: str
    policy_id: str
    version: int
    target_precision: float
    target_recall: float
    confidence: float
    n_scored: int
    proposals: list[ThresholdProposal]
    #: Combined categories: their members' thresholds, searched together.
    combined: list[CombinedProposal]
    #: Categories left as they are: no labelled image, or not asked for.
    untouched: list[str]
    notes: list[str] = field(default_factory=list)
    #: The policy's video rule, calibrated on the labelled videos (None: there were none).
    video_rule: VideoRuleProposal | None = None

    @property
    def supported(self) -> bool:
        return (
            all(p.supported for p in self.proposals)
            and all(c.supported for c in self.combined)
            and (self.video_rule is None or self.video_rule.supported)
        )

    @property
    def thresholds(self) -> dict[str, tuple[float, float]]:
        """category id -> (review, block) for every calibrated category, and for every member
        of a calibrated combined category."""
        out = {p.key.partition("/")[2]: (p.review, p.block) for p in self.proposals}
        for combined in self.combined:
            for member in combined.members:
                out[member.key.partition("/")[2]] = (member.review, member.block)
        return out

    @property
    def problems(self) -> list[str]:
        found = [f"{p.key}: {problem}" for p in self.proposals for problem in p.problems]
        found += [f"{c.key}: {problem}" for c in self.combined for problem in c.problems]
        if self.video_rule is not None:
            found += [f"{self.policy_id} video rule: {p}" for p in self.video_rule.problems]
        return found


def calibrate(
    scored: Sequence[ScoredItem],
    compiled: CompiledSet,
    policy_id: str,
    *,
    dataset: Dataset,
    target_precision: float,
    target_recall: float,
    confidence: float = 0.95,
    categories: Collection[str] | None = None,
) -> CalibrationReport:
    """Propose thresholds for the categories of ``policy_id`` that have labelled images.

    Raises:
        CalibrationUnsupported: not one category of the policy has a labelled image.
        ValueError: a target outside (0, 1].
    """
    for name, target in (("precision", target_precision), ("recall", target_recall)):
        if not 0.0 < target <= 1.0:
            raise ValueError(f"target {name} must be in (0, 1], got {target}")
    policy = compiled.by_id[policy_id].policy
    proposals: list[ThresholdProposal] = []
    untouched: list[str] = []
    for category in policy.categories:
        key = f"{policy_id}/{category.id}"
        if categories and category.id not in categories and key not in categories:
            untouched.append(key)
            continue
        if category.signal == COMBINE_SIGNAL:
            continue  # below: its members' thresholds, searched together
        scores, truths, _ = labelled_scores(scored, key)
        if not len(scores):
            untouched.append(key)
            continue
        proposals.append(
            propose_thresholds(
                key=key,
                scores=scores,
                labels=truths,
                current=(category.thresholds.review, category.thresholds.block),
                target_precision=target_precision,
                target_recall=target_recall,
                confidence=confidence,
            )
        )
    combined, taken = _combined_proposals(
        scored,
        compiled,
        policy_id,
        categories=categories,
        target_precision=target_precision,
        target_recall=target_recall,
        confidence=confidence,
    )
    notes: list[str] = []
    for key, rule_key in taken.items():
        alone = [p for p in proposals if p.key == key]
        if alone:
            proposals.remove(alone[0])
            notes.append(
                f"{key} is a member of the combined category {rule_key} (an input only): its "
                "thresholds are tuned with the other members, for the combined category's labels"
            )
    for key in [k for k in untouched if k in taken]:
        untouched.remove(key)
    untouched += [
        f"{policy_id}/{c.id}"
        for c in policy.categories
        if c.signal == COMBINE_SIGNAL
        and f"{policy_id}/{c.id}" not in {p.key for p in combined}
        and (not categories or c.id in categories or f"{policy_id}/{c.id}" in categories)
    ]
    videos = [
        (video, proposal.block)
        for proposal in proposals
        for video in labelled_videos(scored, proposal.key)
    ]
    video_rule = (
        propose_video_rule(
            policy_id,
            videos,
            current=policy.video,
            target_precision=target_precision,
            confidence=confidence,
        )
        if videos
        else None
    )
    if not proposals and not combined:
        raise CalibrationUnsupported(
            f"no labelled image for any category of policy {policy_id!r}: nothing to calibrate"
        )
    if dataset.from_review:
        notes.append(
            "labels come from human review: only images the model flagged were reviewed, so "
            "recall is measured among flagged images; the review threshold is not evidence-"
            "based below the lowest reviewed score"
        )
    return CalibrationReport(
        dataset=dataset.source,
        kind=dataset.kind,
        policy_id=policy_id,
        version=policy.version,
        target_precision=target_precision,
        target_recall=target_recall,
        confidence=confidence,
        n_scored=sum(e.verdict is not None for e in scored),
        proposals=proposals,
        combined=combined,
        untouched=untouched,
        notes=notes,
        video_rule=video_rule,
    )


def _combined_proposals(
    scored: Sequence[ScoredItem],
    compiled: CompiledSet,
    policy_id: str,
    *,
    categories: Collection[str] | None,
    target_precision: float,
    target_recall: float,
    confidence: float,
) -> tuple[list[CombinedProposal], dict[str, str]]:
    """A joint proposal for each combined category with labelled images, and which member
    (``policy/category``) each one took. A member already taken by an earlier combined
    category is not tuned twice: the later category is left out (it keeps those thresholds)."""
    policy = compiled.by_id[policy_id].policy
    out: list[CombinedProposal] = []
    taken: dict[str, str] = {}
    for category in policy.categories:
        key = f"{policy_id}/{category.id}"
        rule = category.combine
        if rule is None or (categories and category.id not in categories and key not in categories):
            continue
        members = [f"{policy_id}/{m}" for m in rule.of]
        if any(m in taken for m in members):
            continue
        scores, truths = labelled_member_scores(scored, key, members)
        if not len(truths):
            continue
        out.append(
            propose_combined(
                key=key,
                member_keys=members,
                scores=scores,
                labels=truths,
                rule=rule,
                current=[
                    (policy.category(m).thresholds.review, policy.category(m).thresholds.block)
                    for m in rule.of
                ],
                target_precision=target_precision,
                target_recall=target_recall,
                confidence=confidence,
            )
        )
        taken.update({m: key for m in members})
    return out, taken
