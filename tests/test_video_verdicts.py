"""A video's verdict from its sampled frames (core.video): segments with start and end per
category, the top frame, and a policy's minimum before a video blocks; through the real
scoring path on clips of the test world, and in job results, audit records and the API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from moderation.core.decision import Decision, Timeline, Verdict
from moderation.core.policy import Policy, VideoRule, policy_hash
from moderation.core.video import video_verdict
from moderation.testmodel import POLICY_PATH
from moderation.testmodel.clips import Shot, allow_image, background_image, block_image, clip

ALLOW = allow_image()
BLOCK = block_image()


# --- pure -----------------------------------------------------------------------------------


def _frames(scoring: Any, images: list[Any]) -> list[Verdict]:
    moderator = scoring.moderator
    from moderation.testmodel.samples import encoded

    prepared = [moderator.prepare(encoded(image)) for image in images]
    return moderator.moderate(prepared)


@pytest.fixture(scope="module")
def photo_verdicts(scoring: Any) -> dict[str, Verdict]:
    allow, block = _frames(scoring, [ALLOW, BLOCK])
    assert (allow.decision, block.decision) == (Decision.ALLOW, Decision.BLOCK)
    return {"allow": allow, "block": block}


def _timeline(pattern: str, step: float = 1.0) -> tuple[list[str], Timeline]:
    kinds = ["block" if c == "B" else "allow" for c in pattern]
    times = tuple(i * step for i in range(len(pattern)))
    return kinds, Timeline("video", len(pattern) * step, times)


def test_segments_cover_where_a_category_was_reached(photo_verdicts: dict[str, Verdict]) -> None:
    kinds, timeline = _timeline("AAABBBAAAB")
    verdict = video_verdict([photo_verdicts[k] for k in kinds], timeline, {})
    assert verdict.decision is Decision.BLOCK and verdict.video is not None
    blocked = [s for s in verdict.video.segments if s.decision is Decision.BLOCK]
    assert [(s.start_s, s.end_s, s.frames) for s in blocked] == [(3.0, 6.0, 3), (9.0, 10.0, 1)]
    assert {s.category for s in blocked} == {"testworld/contraband_symbol"}
    assert verdict.video.top_frame_s in {3.0, 4.0, 5.0, 9.0}
    assert verdict.video.frames_scored == 10 and verdict.video.duration_s == 10.0
    assert verdict.category_id == "contraband_symbol"


def test_all_allowed_frames_give_an_allowed_video_with_no_segments(
    photo_verdicts: dict[str, Verdict],
) -> None:
    kinds, timeline = _timeline("AAAA")
    verdict = video_verdict([photo_verdicts[k] for k in kinds], timeline, {})
    assert verdict.decision is Decision.ALLOW and verdict.video is not None
    assert verdict.video.segments == []


@pytest.mark.parametrize(
    ("rule", "pattern", "expected"),
    [
        (VideoRule(min_block_seconds=2.0), "AAABAAA", Decision.REVIEW),
        (VideoRule(min_block_seconds=2.0), "AAABBAA", Decision.BLOCK),
        (VideoRule(min_block_frames=3), "ABBAAAA", Decision.REVIEW),
        (VideoRule(min_block_frames=3), "ABABABA", Decision.BLOCK),  # frames need not touch
        (None, "AAABAAA", Decision.BLOCK),
    ],
)
def test_a_policy_minimum_holds_a_short_block_to_review(
    photo_verdicts: dict[str, Verdict], rule: VideoRule | None, pattern: str, expected: Decision
) -> None:
    kinds, timeline = _timeline(pattern)
    verdict = video_verdict([photo_verdicts[k] for k in kinds], timeline, {"testworld": rule})
    assert verdict.decision is expected
    assert verdict.video is not None
    held = expected is Decision.REVIEW
    assert verdict.video.held_to_review == (["testworld/contraband_symbol"] if held else [])
    if held:
        assert verdict.deciding is not None and verdict.deciding.action.value == "human_review"


def test_verdicts_with_findings_round_trip_as_json(photo_verdicts: dict[str, Verdict]) -> None:
    kinds, timeline = _timeline("ABBA")
    verdict = video_verdict([photo_verdicts[k] for k in kinds], timeline, {})
    again = Verdict.from_dict(verdict.to_dict())
    assert again == verdict and again.video is not None
    assert photo_verdicts["block"].to_dict()["video"] is None


def test_frames_and_timeline_must_agree(photo_verdicts: dict[str, Verdict]) -> None:
    with pytest.raises(ValueError, match="2 frame verdicts for 3"):
        video_verdict([photo_verdicts["allow"]] * 2, Timeline("video", 3, (0, 1, 2)), {})


def test_the_policy_field_is_validated_and_absent_keeps_the_hash() -> None:
    doc = yaml.safe_load(POLICY_PATH.read_text())
    before = policy_hash(Policy.model_validate(doc))
    assert policy_hash(Policy.model_validate({**doc, "video": None})) == before
    with_rule = Policy.model_validate({**doc, "video": {"min_block_seconds": 2}})
    assert with_rule.video == VideoRule(min_block_seconds=2.0)
    assert policy_hash(with_rule) != before
    for bad in ({"min_block_seconds": -1}, {"min_block_frames": 0}, {"min_frames": 2}):
        with pytest.raises(ValidationError):
            Policy.model_validate({**doc, "video": bad})


def test_a_bad_video_rule_in_a_policy_file_names_the_line(tmp_path: Path) -> None:
    from moderation.adapters.policy_files import load_policies
    from moderation.exceptions import PolicyValidationError

    path = tmp_path / "testworld.yaml"
    path.write_text(POLICY_PATH.read_text() + "video:\n  min_block_seconds: -2\n")
    with pytest.raises(PolicyValidationError) as caught:
        load_policies([path])
    assert "video" in str(caught.value) and "min_block_seconds" in str(caught.value)


# --- through the real scoring path ------------------------------------------------------------


def test_a_red_star_from_12_to_15_s_of_a_30_s_clip_blocks_with_its_segment(scoring: Any) -> None:
    data = clip([Shot(12, ALLOW), Shot(3, BLOCK), Shot(15, ALLOW)], fps=10)
    moderator = scoring.moderator
    verdict = moderator.moderate([moderator.prepare(data)])[0]
    assert verdict.decision is Decision.BLOCK and verdict.video is not None
    blocked = [s for s in verdict.video.segments if s.decision is Decision.BLOCK]
    assert len(blocked) == 1
    segment = blocked[0]
    assert segment.category == "testworld/contraband_symbol"
    assert 11.9 <= segment.start_s <= 12.3 and 15.0 <= segment.end_s <= 15.3
    assert segment.start_s <= segment.top_frame_s < segment.end_s
    assert verdict.video.duration_s == pytest.approx(30.0, abs=0.2)
    assert segment.start_s <= verdict.video.top_frame_s < segment.end_s


def _min_seconds_policy(scoring: Any, tmp_path: Path, seconds: float) -> Any:
    path = tmp_path / "testworld.yaml"
    path.write_text(POLICY_PATH.read_text() + f"video:\n  min_block_seconds: {seconds}\n")
    return scoring.compile([path]).current


def test_a_star_in_one_frame_does_not_block_when_the_policy_asks_for_two_seconds(
    scoring: Any, tmp_path: Path
) -> None:
    # the star is one frame (0.1 s) between two scenes: sampled as a scene cut
    data = clip(
        [Shot(4, background_image()), Shot(0.1, BLOCK), Shot(4, background_image())], fps=10
    )
    moderator = scoring.moderator
    prepared = moderator.prepare(data)
    plain = moderator.moderate([prepared])[0]
    assert plain.decision is Decision.BLOCK  # the default: any block frame blocks
    strict = moderator.moderate([prepared], compiled=_min_seconds_policy(scoring, tmp_path, 2))[0]
    assert strict.decision is Decision.REVIEW and strict.video is not None
    assert strict.video.held_to_review == ["testworld/contraband_symbol"]
    # three seconds of the star meet the same policy
    long = clip([Shot(4, ALLOW), Shot(3, BLOCK), Shot(4, ALLOW)], fps=10)
    compiled = _min_seconds_policy(scoring, tmp_path, 2)
    assert moderator.moderate([moderator.prepare(long)], compiled=compiled)[0].decision is (
        Decision.BLOCK
    )
