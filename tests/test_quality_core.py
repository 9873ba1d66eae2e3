"""The pure halves of the policy-quality tools: metrics, intervals, threshold search, the bulk
decision rule, labelled-data reading, policy versions (shadow mode, hashes, text edits)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from moderation import testmodel
from moderation.adapters.datasets import load_dataset
from moderation.adapters.policy_files import edit_policy_text, load_policy_text
from moderation.core.calibration import examples_needed, propose_thresholds
from moderation.core.evaluation import (
    average_precision,
    category_metrics,
    pr_curve,
    roc_auc,
    wilson,
    z_for,
)
from moderation.core.policy import PolicyMode, PolicySet, policy_hash
from moderation.exceptions import DatasetError, DuplicatePolicyError, PolicyVersionConflict

TESTWORLD = testmodel.POLICY_PATH.read_text()


# --- intervals and metrics ---------------------------------------------------------------------


def test_normal_quantiles_and_wilson_intervals_match_published_values() -> None:
    assert z_for(0.95) == pytest.approx(1.959964, abs=1e-6)
    assert z_for(0.99) == pytest.approx(2.575829, abs=1e-6)
    assert z_for(0.0) == 0.0
    # Wilson 95% for 8/10 and 0/20 (Brown, Cai & DasGupta 2001 style check values)
    interval = wilson(8, 10)
    assert interval is not None
    assert (interval.low, interval.high) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    empty = wilson(0, 20)
    assert empty is not None and empty.low == 0.0
    assert empty.high == pytest.approx(0.1611, abs=1e-4)
    assert wilson(3, 0) is None
    point = wilson(7, 10, confidence=0.0)
    assert point is not None and point.low == point.high == pytest.approx(0.7)


def _pairwise_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = scores[labels], scores[~labels]
    wins = sum((p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg))
    return float(wins / (len(pos) * len(neg)))


def _brute_ap(scores: np.ndarray, labels: np.ndarray) -> float:
    total, previous = 0.0, 0.0
    for t in sorted(set(scores.tolist()), reverse=True):
        called = scores >= t
        recall = (called & labels).sum() / labels.sum()
        precision = (called & labels).sum() / called.sum()
        total += (recall - previous) * precision
        previous = recall
    return float(total)


def test_auc_and_average_precision_agree_with_brute_force_including_ties() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        n = int(rng.integers(5, 40))
        scores = np.round(rng.random(n), 1)  # many ties
        labels = rng.random(n) < 0.4
        if labels.all() or not labels.any():
            continue
        assert roc_auc(scores, labels) == pytest.approx(_pairwise_auc(scores, labels))
        assert average_precision(scores, labels) == pytest.approx(_brute_ap(scores, labels))
    assert roc_auc(np.array([0.1, 0.2]), np.array([True, True])) is None
    assert average_precision(np.array([0.1]), np.array([False])) is None
    precision, recall, thresholds = pr_curve(
        np.array([0.9, 0.8, 0.8, 0.1]), np.array([True, False, True, False])
    )
    assert thresholds.tolist() == [0.9, 0.8, 0.1]
    assert recall.tolist() == [0.5, 1.0, 1.0]
    assert precision.tolist() == pytest.approx([1.0, 2 / 3, 0.5])


def test_category_metrics_at_the_thresholds() -> None:
    scores = np.array([0.95, 0.9, 0.6, 0.5, 0.3, 0.2, 0.1, 0.05])
    labels = np.array([True, True, True, False, True, False, False, False])
    m = category_metrics(
        key="p/c", scores=scores, labels=labels, review=0.25, block=0.85, resamples=50
    )
    assert (m.block.tp, m.block.fp, m.block.fn) == (2, 0, 2)
    assert m.block.precision == 1.0 and m.block.recall == 0.5
    assert m.block.f1 == pytest.approx(2 / 3)
    assert (m.flagged.tp, m.flagged.fp) == (4, 1) and m.flagged.recall == 1.0
    assert m.review_load == pytest.approx(3 / 8)
    assert m.confusion == {
        "violating": {"allow": 0, "review": 2, "block": 2},
        "benign": {"allow": 3, "review": 1, "block": 0},
    }
    assert m.small_sample and m.roc_auc == pytest.approx(_pairwise_auc(scores, labels))
    assert m.roc_auc_ci is not None and m.roc_auc_ci.low <= m.roc_auc <= m.roc_auc_ci.high
    assert m.block.precision_ci is not None and m.block.precision_ci.low < 1.0
    json.dumps(m.to_dict())


# --- threshold search --------------------------------------------------------------------------


def test_calibration_meets_the_lower_bound_and_rounds_without_moving_anything() -> None:
    rng = np.random.default_rng(0)
    positives = rng.uniform(0.4, 1.0, 300)
    negatives = rng.uniform(0.0, 0.6, 3000)
    scores = np.r_[positives, negatives]
    labels = np.r_[np.ones(300, bool), np.zeros(3000, bool)]
    p = propose_thresholds(
        key="p/c",
        scores=scores,
        labels=labels,
        current=(0.5, 0.9),
        target_precision=0.95,
        target_recall=0.9,
    )
    assert p.supported and p.review < p.block
    blocked = scores >= p.block
    low = wilson(int((blocked & labels).sum()), int(blocked.sum()))
    assert low is not None and low.low >= 0.95
    # the next lower violating image would break the bound: the block threshold is as low as it
    # can be, and it sits on a violating image (lower would only add benign ones)
    assert p.block in np.round(np.floor(positives * 1e4) / 1e4, 4) or p.block in positives
    below = positives[positives < p.block].max()
    more = scores >= below
    worse = wilson(int((more & labels).sum()), int(more.sum()))
    assert worse is not None and worse.low < 0.95
    flagged = scores >= p.review
    recall_low = wilson(int((flagged & labels).sum()), 300)
    assert recall_low is not None and recall_low.low >= 0.9
    assert p.review_load == pytest.approx(float((flagged & ~blocked).mean()))
    assert round(p.block, 6) == p.block and round(p.review, 6) == p.review


def test_calibration_says_when_the_data_cannot_support_the_target() -> None:
    scores = np.array([0.99, 0.98, 0.97, 0.2, 0.1])
    labels = np.array([True, True, True, False, False])
    p = propose_thresholds(
        key="p/c",
        scores=scores,
        labels=labels,
        current=(0.3, 0.8),
        target_precision=0.99,
        target_recall=0.99,
    )
    assert not p.block_supported and not p.review_supported
    assert (p.review, p.block) == (0.3, 0.8)  # unsupported bands keep their thresholds
    assert "cannot support 99.0% precision" in p.problems[0]
    assert f"at least {examples_needed(0.99, 0.95)} blocked violating" in p.problems[0]
    assert examples_needed(0.99, 0.95) == 381  # n / (n + z²) >= 0.99
    none = propose_thresholds(
        key="p/c",
        scores=np.array([0.1, 0.2]),
        labels=np.array([False, False]),
        current=(0.3, 0.8),
        target_precision=0.9,
        target_recall=0.9,
    )
    assert not none.supported and "no violating examples" in none.problems[0]


# --- labelled data -----------------------------------------------------------------------------


def test_labels_files_in_csv_and_json_lines(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "labels.csv").write_text(
        "image,labels\na.png,contraband_symbol;testworld/restricted_logo\nb.png,\n"
        "s3://bucket/c.png,hate_symbol_analogue\n"
    )
    data = load_dataset(tmp_path)
    assert data.kind == "labels" and len(data.items) == 3
    first, second, third = data.items
    assert first.image == (tmp_path / "a.png").resolve().as_uri()
    assert first.truth("testworld/contraband_symbol") is True
    assert first.truth("testworld/restricted_logo") is True
    assert first.truth("testworld/hate_symbol_analogue") is False
    assert second.truth("testworld/contraband_symbol") is False
    assert third.image == "s3://bucket/c.png"
    jsonl = tmp_path / "other.jsonl"
    jsonl.write_text('{"image": "a.png", "labels": ["x"]}\n\n{"image": "b.png"}\n')
    assert [sorted(i.positive) for i in load_dataset(jsonl).items] == [["x"], []]


def test_a_review_export_labels_only_the_reviewed_category(tmp_path: Path) -> None:
    rows = [
        {
            "image": "inline:j1",
            "policy_id": "testworld",
            "category": "contraband_symbol",
            "human_label": "remove",
            "review_id": "r1",
        },
        {
            "image": "inline:j2",
            "policy_id": "testworld",
            "category": "contraband_symbol",
            "human_label": "allow",
            "review_id": "r2",
        },
        {
            "image": "inline:j3",
            "policy_id": "testworld",
            "category": "restricted_logo",
            "human_label": "escalate",
            "review_id": "r3",
        },
    ]
    path = tmp_path / "export.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = load_dataset(path)
    assert data.from_review and data.skipped == {"human_label escalate (no ground truth)": 1}
    removed, allowed = data.items
    assert removed.image == "inline:j1" and removed.name == "r1"
    assert removed.truth("testworld/contraband_symbol") is True
    assert removed.truth("testworld/restricted_logo") is None  # not reviewed: unknown
    assert allowed.truth("testworld/contraband_symbol") is False


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        (
            "path,labels\na.png,x\n",
            "labels.csv",
            "labels.csv:1: a CSV labels file needs an 'image'",
        ),
        ('{"image": "a.png"}\nnot json\n', "labels.jsonl", "labels.jsonl:2: not JSON"),
        ('{"labels": ["x"]}\n', "labels.jsonl", "labels.jsonl:1: missing 'image'"),
        ('{"image": "a.png", "labels": 3}\n', "labels.jsonl", "labels.jsonl:1: 'labels' must"),
        ("image,labels\n", "labels.csv", "no labelled images"),
    ],
)
def test_bad_labels_files_name_file_and_line(
    tmp_path: Path, content: str, name: str, message: str
) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(DatasetError, match=message.replace("(", r"\(")):
        load_dataset(tmp_path)


def test_a_dataset_folder_needs_exactly_one_labels_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no labels file"):
        load_dataset(tmp_path)
    (tmp_path / "labels.csv").write_text("image\n")
    (tmp_path / "labels.jsonl").write_text("")
    with pytest.raises(DatasetError, match="several labels files"):
        load_dataset(tmp_path)


# --- policy versions ---------------------------------------------------------------------------


def test_mode_and_absent_exemplars_are_not_policy_content() -> None:
    live = load_policy_text(TESTWORLD)
    shadow = load_policy_text(TESTWORLD.replace("active: true", "active: true\nmode: shadow"))
    assert shadow.shadow and not live.shadow
    assert policy_hash(live) == policy_hash(shadow)
    content = json.loads(live.canonical_json())
    assert "mode" not in content
    assert not any("exemplars" in c for c in content["categories"])


def test_shadow_versions_live_beside_the_live_one() -> None:
    live = load_policy_text(TESTWORLD)
    v2 = load_policy_text(
        edit_policy_text(TESTWORLD, version=2, mode=PolicyMode.SHADOW, thresholds={})
    )
    policies = PolicySet([(live, "a.yaml"), (v2, "a.v2.yaml")])
    assert list(policies) == ["testworld"] and policies["testworld"].version == 1
    assert policies.shadow("testworld") == v2 and policies.shadow_source("testworld") == "a.v2.yaml"
    with pytest.raises(DuplicatePolicyError, match="more than one shadow"):
        PolicySet([(live, "a.yaml"), (v2, "b.yaml"), (v2, "c.yaml")])
    same_number = load_policy_text(
        edit_policy_text(
            TESTWORLD, mode=PolicyMode.SHADOW, thresholds={"restricted_logo": (0.3, 0.9)}
        )
    )
    with pytest.raises(PolicyVersionConflict, match="give the shadow a new version"):
        PolicySet([(live, "a.yaml"), (same_number, "b.yaml")])
    # a promotion half done: the live file already holds the shadow's content
    promoted = v2.model_copy(update={"mode": PolicyMode.LIVE})
    done = PolicySet([(promoted, "a.yaml"), (v2, "a.v2.yaml")])
    assert done["testworld"].version == 2 and done.shadows() == []


def test_new_versions_are_written_by_editing_the_text_in_place() -> None:
    edited = edit_policy_text(
        TESTWORLD,
        version=7,
        mode=PolicyMode.SHADOW,
        thresholds={"contraband_symbol": (0.25, 0.6125), "restricted_logo": (0.3, 0.9)},
    )
    old_lines, new_lines = TESTWORLD.splitlines(), edited.splitlines()
    changed = [(a, b) for a, b in zip(old_lines, new_lines[:1] + new_lines[2:], strict=False)]
    assert "# every other object of the world" in edited  # comments survive
    assert new_lines[1:3] == ["version: 7", "mode: shadow"]
    assert "    thresholds: {review: 0.25, block: 0.6125}" in new_lines
    assert "    thresholds: {review: 0.3, block: 0.9}" in new_lines
    assert "    thresholds: {review: 0.3, block: 0.7}" in new_lines  # untouched category
    assert sum(a != b for a, b in changed) == 3  # version + two threshold lines
    policy = load_policy_text(edited)
    assert policy.version == 7 and policy.shadow
    assert policy.category("contraband_symbol").thresholds.block == 0.6125
    back = edit_policy_text(edited, mode=PolicyMode.LIVE)
    assert "mode: live" in back and back.count("mode:") == 1
    with pytest.raises(Exception, match="categories not found: nope"):
        edit_policy_text(TESTWORLD, thresholds={"nope": (0.1, 0.2)})
