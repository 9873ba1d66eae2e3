"""The sampling plan of videos and animations (pure core): cells, budgets, scene cuts, and the
open-ended plan of a video whose duration is unknown."""

from __future__ import annotations

import numpy as np
import pytest

from moderation.core.sampling import (
    FrameSampler,
    SampleReason,
    SamplingRules,
    grid_signature,
    plan_samples,
)

RULES = SamplingRules(sample_fps=1.0, max_samples=20, scene_cuts=True, max_scene_cuts=5)


def _feed(sampler: FrameSampler, times: list[float]) -> list[float]:
    kept: list[float] = []
    for t in times:
        if sampler.offer(t, None) is not None:
            kept.append(t)
        for gone in sampler.evicted:
            kept.remove(gone)
        sampler.evicted.clear()
    return kept


def test_one_sample_per_second_by_default() -> None:
    plan = plan_samples(10.0, RULES)
    assert (plan.interval_s, plan.cells, plan.scene_cut_budget) == (1.0, 10, 5)
    kept = _feed(FrameSampler(plan), [k / 30 for k in range(300)])
    assert kept == pytest.approx([float(s) for s in range(10)])


def test_a_long_video_gets_a_longer_interval_that_still_covers_it() -> None:
    plan = plan_samples(600.0, RULES)  # 15 regular samples for 600 s: one every 40 s
    assert plan.cells == 15 and plan.interval_s == pytest.approx(40.0)
    kept = _feed(FrameSampler(plan), [k * 0.5 for k in range(1200)])
    assert len(kept) == 15 and kept[-1] >= 560.0


def test_frames_past_the_planned_cells_are_not_sampled() -> None:
    sampler = FrameSampler(plan_samples(3.0, RULES))
    assert sampler.needs(2.5) and not sampler.needs(3.5)


def test_needs_is_false_once_a_cell_has_its_sample() -> None:
    sampler = FrameSampler(plan_samples(5.0, RULES))
    assert sampler.offer(1.2, None) is SampleReason.INTERVAL
    assert not sampler.needs(1.9) and sampler.needs(2.0)
    assert sampler.offer(1.5, None) is None


def test_open_ended_plan_doubles_its_interval_and_keeps_covering() -> None:
    rules = SamplingRules(sample_fps=1.0, max_samples=10, scene_cuts=False)
    plan = plan_samples(None, rules)
    assert plan.open_ended and plan.interval_s == 1.0
    sampler = FrameSampler(plan)
    kept = _feed(sampler, [k * 0.25 for k in range(4 * 100)])  # 100 s
    assert len(kept) <= 10
    assert kept[0] == 0.0 and kept[-1] >= 100 - sampler.interval_s
    gaps = np.diff(kept)
    assert gaps.max() <= 2 * sampler.interval_s


def test_scene_cuts_are_sampled_within_their_budget() -> None:
    rules = SamplingRules(sample_fps=0.1, max_samples=4, scene_cuts=True, max_scene_cuts=2)
    sampler = FrameSampler(plan_samples(30.0, rules))
    dark = np.zeros((8, 8, 3), np.float32)
    light = np.ones((8, 8, 3), np.float32)
    reasons = [
        sampler.offer(t, light if int(t) % 2 else dark) for t in (0.0, 1.0, 2.0, 3.0, 4.0, 5.0)
    ]
    assert reasons == [
        SampleReason.INTERVAL,
        SampleReason.SCENE_CUT,
        SampleReason.SCENE_CUT,
        None,  # the scene-cut budget is spent
        None,
        None,
    ]


def test_grid_signature_is_the_mean_colour_of_each_cell() -> None:
    image = np.zeros((16, 32, 3), np.uint8)
    image[:, 16:] = 255
    signature = grid_signature(image)
    assert signature.shape == (8, 8, 3)
    assert signature[:, :4].max() == 0.0 and signature[:, 4:].min() == 1.0
    assert grid_signature(np.full((3, 3, 3), 51, np.uint8)) == pytest.approx(0.2)


def test_rules_validation_in_settings() -> None:
    from pydantic import ValidationError

    from moderation.settings import VideoSettings

    with pytest.raises(ValidationError, match="max_scene_cuts"):
        VideoSettings(max_samples=10, max_scene_cuts=10)
    with pytest.raises(ValidationError):
        VideoSettings(sample_fps=0)
