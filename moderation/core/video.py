"""A video's verdict from its sampled frames' verdicts: segments per category, the top frame, and
the policy's minimum before a video blocks. Pure (no I/O).

Each sampled frame stands for the time until the next sample (the last one: until the end of
the video), its *span*. For every category, the runs of consecutive samples that reached at
least ``review`` are its **segments**: from the first such sample's timestamp to the end of the
last one's span, with the most severe band reached in it, the number of samples, and the top
frame (highest score). A red star seen in the samples at 12.1, 13.0 and 14.0 s of a clip
sampled once a second, and not at 15.0 s, gives the segment 12.1-15.0 s.

The video's decision for a category is the most severe band its samples reached, except that a
policy may ask for a minimum before a video is **blocked** (:class:`~moderation.core.policy.
VideoRule`: ``min_block_frames`` samples and ``min_block_seconds`` of spans in the block band);
below it the category goes to human review instead, so that one odd frame does not decide. The
video's verdict is then chosen among the categories as for a photo (band, severity, margin).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from moderation.core.decision import (
    CategoryResult,
    Decision,
    Timeline,
    Verdict,
    VideoFindings,
    VideoSegment,
    build_verdict,
    most_severe,
)
from moderation.core.policy import Action, VideoRule

__all__ = ["Timeline", "VideoFindings", "VideoSegment", "video_verdict"]

_BY_RANK = (Decision.ALLOW, Decision.REVIEW, Decision.BLOCK)


def _decision_of(verdict: Verdict, key: str) -> tuple[Decision, CategoryResult | None]:
    for result in verdict.categories:
        if result.key == key:
            return result.decision, result
    return Decision.ALLOW, None


def video_verdict(
    frames: Sequence[Verdict], timeline: Timeline, rules: Mapping[str, VideoRule | None]
) -> Verdict:
    """The verdict of a video from its sampled frames' verdicts (in time order).

    Args:
        frames: one verdict per sampled frame, in the order of ``timeline.timestamps``.
        timeline: when each was shown.
        rules: each policy's minimum before a video blocks (by policy id; None: none).

    Raises:
        ValueError: ``frames`` and the timeline disagree in length, or no frames.
    """
    if not frames or len(frames) != len(timeline.timestamps):
        raise ValueError(
            f"{len(frames)} frame verdicts for {len(timeline.timestamps)} sampled frames"
        )
    spans = timeline.spans()
    keys = list(dict.fromkeys(r.key for v in frames for r in v.categories))
    segments: list[VideoSegment] = []
    best: dict[str, tuple[int, CategoryResult, int]] = {}  # key -> (rank, result, frame)
    held: list[str] = []
    for key in keys:
        found = [_decision_of(v, key) for v in frames]
        run: list[int] = []
        for index, (decision, _) in enumerate([*found, (Decision.ALLOW, None)]):
            if decision.rank > 0 and index < len(found):
                run.append(index)
                continue
            if run:
                segments.append(_segment(key, run, found, spans))
                run = []
        flagged = [(i, r) for i, (d, r) in enumerate(found) if r is not None and d.rank > 0]
        if not flagged:
            continue
        top_index, top = max(flagged, key=lambda item: (item[1].decision.rank, item[1].score))
        rank = top.decision.rank
        if rank == 2 and not _meets(rules.get(top.policy_id), found, spans):
            rank = 1
            held.append(key)
        best[key] = (rank, top, top_index)
    if not best:
        verdict = most_severe(frames)
        top_index = frames.index(verdict)
        return dataclasses.replace(
            verdict,
            video=_findings(timeline, segments, top_index, held),
        )
    results = [_as_band(result, rank) for rank, result, _ in best.values()]
    results.sort(
        key=lambda r: (
            -r.decision.rank,
            -r.severity.rank,
            -(r.margin_block if r.decision is Decision.BLOCK else r.margin_review),
        )
    )
    top_index = best[results[0].key][2]
    scores: dict[str, float] = {}
    for frame in frames:  # a category a skipped signal left unscored on a frame: the others'
        for key, value in frame.scores.items():
            scores[key] = max(value, scores.get(key, value))
    skipped = {s.signal: s for frame in frames for s in reversed(frame.skipped)}
    return build_verdict(
        results,
        scores,
        frames[top_index].policies,
        frames[top_index].model,
        video=_findings(timeline, segments, top_index, held),
        skipped=list(skipped.values()),
    )


def _segment(
    key: str,
    run: list[int],
    found: list[tuple[Decision, CategoryResult | None]],
    spans: list[tuple[float, float]],
) -> VideoSegment:
    scored = [(found[i][1], i) for i in run if found[i][1] is not None]
    top, top_index = max(scored, key=lambda item: item[0].score if item[0] else 0.0)
    return VideoSegment(
        category=key,
        decision=max((found[i][0] for i in run), key=lambda d: d.rank),
        start_s=round(spans[run[0]][0], 3),
        end_s=round(spans[run[-1]][1], 3),
        frames=len(run),
        top_score=round(top.score if top else 0.0, 6),
        top_frame_s=round(spans[top_index][0], 3),
    )


def _meets(
    rule: VideoRule | None,
    found: list[tuple[Decision, CategoryResult | None]],
    spans: list[tuple[float, float]],
) -> bool:
    if rule is None:
        return True
    blocked = [i for i, (decision, _) in enumerate(found) if decision is Decision.BLOCK]
    seconds = sum(spans[i][1] - spans[i][0] for i in blocked)
    return len(blocked) >= rule.min_block_frames and seconds >= rule.min_block_seconds - 1e-9


def _as_band(result: CategoryResult, rank: int) -> CategoryResult:
    """A category's result held from block to review by the policy's minimum."""
    if result.decision.rank == rank:
        return result
    return dataclasses.replace(result, decision=_BY_RANK[rank], action=Action.HUMAN_REVIEW)


def _findings(
    timeline: Timeline, segments: list[VideoSegment], top_index: int, held: list[str]
) -> VideoFindings:
    return VideoFindings(
        kind=timeline.kind,
        duration_s=round(timeline.duration_s, 3),
        frames_scored=len(timeline.timestamps),
        timestamps=[round(t, 3) for t in timeline.timestamps],
        segments=sorted(segments, key=lambda s: (s.start_s, s.category)),
        top_frame_s=round(timeline.timestamps[top_index], 3),
        held_to_review=held,
    )
