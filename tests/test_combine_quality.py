"""Combined categories in policy quality: calibration searches the members' thresholds
together, evaluation reports each signal alone and the rule, the JSON Schema describes them.

Scores come from the real scoring path (a :class:`Scorer` over two classifier signals whose
in-memory twins return their input row, so each member score is exact), and the verdicts go
through the same use cases as ``moderation calibrate`` and ``moderation eval``.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import yaml

from moderation.adapters.eval_report import write_report
from moderation.adapters.policy_files import edit_policy_text, load_policy_text
from moderation.core.calibration import propose_thresholds
from moderation.core.combined_calibration import propose_combined, rule_bands
from moderation.core.compiled import compile_policy
from moderation.core.decision import Decision, verdicts
from moderation.core.evaluation import Dataset, LabelledItem
from moderation.core.policy import Combine, Policy, PolicySet
from moderation.core.scoring import FeatureBatch
from moderation.exceptions import PolicyValidationError
from moderation.pipeline.calibrate import calibrate
from moderation.pipeline.evaluate import ScoredItem, evaluate
from moderation.pipeline.policies import CompiledSet
from tests.test_combine import COMBINED, MEMBERS, SIGNALS, _Encoder

REPO = Path(__file__).parent.parent
KEY = "nudity/nudity"


def _world(seed: int = 7, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """(n, 2) member scores and labels where neither signal alone separates the classes but
    their agreement does: a benign image fools one signal at a time, never both."""
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.4
    s = rng.uniform(0.0, 0.45, (n, 2))
    s[y] = rng.uniform(0.55, 1.0, (int(y.sum()), 2))
    fooled = np.flatnonzero(~y)[: int((~y).sum() * 0.5)]
    which = rng.integers(0, 2, len(fooled))
    s[fooled, which] = rng.uniform(0.6, 1.0, len(fooled))
    return s, y


def _compiled(text: str) -> CompiledSet:
    policy = load_policy_text(text, source="nudity.yaml", signals=SIGNALS)
    return CompiledSet([compile_policy(policy, _Encoder())], SIGNALS)


def _scored(compiled: CompiledSet, s: np.ndarray, y: np.ndarray) -> list[ScoredItem]:
    """Each row scored by the live path (both classifier twins, the rule) and labelled for the
    combined category only."""
    batch = FeatureBatch(
        embeddings=np.zeros((len(s), 8), np.float32),
        features={
            "alpha": [np.array([1 - a, a], np.float32) for a in s[:, 0]],
            "beta": [np.array([1 - b, b], np.float32) for b in s[:, 1]],
        },
    )
    found = verdicts(compiled.scorer(None).score(batch, complete=True))
    return [
        ScoredItem(
            item=LabelledItem(
                image=f"mem://{i}",
                positive=frozenset({KEY} if truth else ()),
                negative=frozenset() if truth else frozenset({KEY}),
                name=str(i),
            ),
            verdict=verdict,
        )
        for i, (truth, verdict) in enumerate(zip(y.tolist(), found, strict=True))
    ]


def _decision(entry: ScoredItem) -> Decision:
    """The combined category's own decision in a verdict (the verdict lists every category
    that is not allowed)."""
    assert entry.verdict is not None
    found = [c for c in entry.verdict.categories if c.key == KEY]
    return found[0].decision if found else Decision.ALLOW


DATASET = Dataset(items=[], source="synthetic", kind="labels")


def test_the_joint_search_meets_a_precision_no_member_meets_alone() -> None:
    s, y = _world()
    alone = [
        propose_thresholds(
            key=f"m{i}",
            scores=s[:, i],
            labels=y,
            current=(0.5, 0.8),
            target_precision=0.95,
            target_recall=0.95,
        )
        for i in range(2)
    ]
    rule = Combine(of=["by_alpha", "by_beta"], block="all", review="any")
    joint = propose_combined(
        key=KEY,
        member_keys=["nudity/by_alpha", "nudity/by_beta"],
        scores=s,
        labels=y,
        rule=rule,
        current=[(0.5, 0.8), (0.4, 0.7)],
        target_precision=0.95,
        target_recall=0.95,
    )
    assert joint.supported, joint.problems
    assert joint.block_precision_low is not None and joint.block_precision_low >= 0.95
    assert joint.flagged_recall_low is not None and joint.flagged_recall_low >= 0.95
    # each member alone blocks far less at the same precision (benign images fool it)
    assert all((a.block_recall or 0.0) < (joint.block_recall or 0.0) for a in alone)
    # the proposal's own numbers are what the rule does at those thresholds
    review = np.array([[m.review for m in joint.members]])
    block = np.array([[m.block for m in joint.members]])
    band = rule_bands(s, review, block, rule)[0]
    assert joint.block_recall == pytest.approx(((band == 2) & y).sum() / y.sum())
    assert joint.review_load == pytest.approx((band == 1).mean())
    assert all(m.review < m.block for m in joint.members)


def test_unsupported_targets_keep_the_current_thresholds_and_say_why() -> None:
    s, y = _world(n=20)
    joint = propose_combined(
        key=KEY,
        member_keys=["nudity/by_alpha", "nudity/by_beta"],
        scores=s,
        labels=y,
        rule=Combine(of=["by_alpha", "by_beta"]),
        current=[(0.5, 0.8), (0.4, 0.7)],
        target_precision=0.999,
        target_recall=0.999,
    )
    assert not joint.supported
    assert [(m.review, m.block) for m in joint.members] == [(0.5, 0.8), (0.4, 0.7)]
    assert any("cannot support 99.9% precision" in p for p in joint.problems)


def test_calibrate_writes_the_members_thresholds_the_live_rule_then_meets() -> None:
    compiled = _compiled(COMBINED)
    s, y = _world()
    scored = _scored(compiled, s, y)
    report = calibrate(
        scored,
        compiled,
        "nudity",
        dataset=DATASET,
        target_precision=0.95,
        target_recall=0.95,
    )
    (proposal,) = report.combined
    assert proposal.key == KEY and proposal.supported
    assert [m.key for m in proposal.members] == ["nudity/by_alpha", "nudity/by_beta"]
    assert set(report.thresholds) == {"by_alpha", "by_beta"}
    assert KEY not in report.untouched and report.to_dict()["combined"][0]["key"] == KEY
    # written back the way calibration writes (a new version), the live path meets the target
    text = edit_policy_text(COMBINED, version=2, thresholds=report.thresholds)
    again = _scored(_compiled(text), s, y)
    blocked = np.array([_decision(e) is Decision.BLOCK for e in again])
    flagged = np.array([_decision(e) is not Decision.ALLOW for e in again])
    assert (blocked & y).sum() / blocked.sum() >= 0.95
    assert (flagged & y).sum() / y.sum() >= 0.95
    assert (blocked & y).sum() / y.sum() == pytest.approx(proposal.block_recall)


def test_a_member_with_labels_of_its_own_is_tuned_with_the_rule_not_alone() -> None:
    compiled = _compiled(COMBINED)
    s, y = _world()
    scored = [
        ScoredItem(
            item=LabelledItem(
                image=e.item.image,
                positive=e.item.positive | ({"nudity/by_alpha"} if t else set()),
                negative=e.item.negative,
                name=e.item.name,
            ),
            verdict=e.verdict,
        )
        for e, t in zip(_scored(compiled, s, y), y.tolist(), strict=True)
    ]
    report = calibrate(
        scored, compiled, "nudity", dataset=DATASET, target_precision=0.9, target_recall=0.9
    )
    assert [p.key for p in report.proposals] == []  # by_alpha is an input only
    assert any("nudity/by_alpha is a member of the combined category" in n for n in report.notes)


def test_eval_reports_each_signal_alone_and_the_rule(tmp_path: Path) -> None:
    compiled = _compiled(COMBINED)
    s, y = _world()
    scored = _scored(compiled, s, y)
    report = evaluate(scored, compiled, dataset=DATASET, resamples=20)
    (combined,) = report.combined
    assert combined.key == KEY and combined.n == len(y)
    assert [m.key for m in combined.members] == ["nudity/by_alpha", "nudity/by_beta"]
    # the rule's block band is the live decision's
    live_blocked = np.array([_decision(e) is Decision.BLOCK for e in scored])
    assert combined.block.tp == int((live_blocked & y).sum())
    assert combined.block.fp == int((live_blocked & ~y).sum())
    # each member alone: its score at its own thresholds, against the combined labels
    alpha = combined.members[0]
    assert alpha.block.tp == int(((s[:, 0] >= 0.8) & y).sum())
    assert alpha.block_threshold == 0.8 and alpha.review_threshold == 0.5
    assert combined.block.precision is not None and alpha.block.precision is not None
    assert combined.block.precision > alpha.block.precision  # agreement is the point
    assert KEY not in [c.key for c in report.categories]
    files = write_report(report, tmp_path, title="combined")
    html = files.html.read_text()
    assert 'id="combined"' in html and "nudity/by_alpha alone" in html and "combined rule" in html
    data = json.loads(files.json.read_text())
    assert data["combined"][0]["members"][1]["key"] == "nudity/by_beta"
    assert data["combined"][0]["block"]["tp"] == combined.block.tp


# --- the JSON Schema and validation ------------------------------------------------------------


def test_the_schema_accepts_combined_categories_without_thresholds() -> None:
    schema = Policy.model_json_schema()
    data = yaml.safe_load(COMBINED)
    jsonschema.validate(data, schema)  # the combined category has no thresholds
    for path in [*(REPO / "policies").glob("*.yaml"), *(REPO / "policies/optional").glob("*.yaml")]:
        jsonschema.validate(yaml.safe_load(path.read_text()), schema)
    with_thresholds = yaml.safe_load(COMBINED)
    with_thresholds["categories"][3]["thresholds"] = {"review": 0.2, "block": 0.3}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(with_thresholds, schema)
    without = yaml.safe_load(MEMBERS)
    del without["categories"][0]["thresholds"]
    with pytest.raises(jsonschema.ValidationError, match="thresholds"):
        jsonschema.validate(without, schema)
    no_rule = yaml.safe_load(COMBINED)
    del no_rule["categories"][3]["combine"]
    with pytest.raises(jsonschema.ValidationError, match="combine"):
        jsonschema.validate(no_rule, schema)


def test_thresholds_on_a_combined_category_are_refused_at_their_line() -> None:
    text = COMBINED.replace(
        "signal: combine\n", "signal: combine\n    thresholds: {review: 0.2, block: 0.3}\n", 1
    )
    with pytest.raises(PolicyValidationError) as info:
        load_policy_text(text, source="policies/nudity.yaml", signals=SIGNALS)
    (issue,) = [str(i) for i in info.value.issues]
    line = text.splitlines().index("    thresholds: {review: 0.2, block: 0.3}") + 1
    assert issue.startswith(f"policies/nudity.yaml:{line}: categories[3].thresholds: ")
    assert "takes no thresholds" in issue
    missing = MEMBERS.replace("    thresholds: {review: 0.5, block: 0.8}\n", "", 1)
    with pytest.raises(PolicyValidationError, match=r"categories\[0\]\.thresholds: Field required"):
        load_policy_text(missing, source="policies/nudity.yaml", signals=SIGNALS)
    policy = load_policy_text(COMBINED, source="policies/nudity.yaml", signals=SIGNALS)
    assert PolicySet([(policy, "x")])["nudity"].category("nudity").combine is not None


def test_the_terminal_tables_show_members_and_rule() -> None:
    from rich.console import Console

    from moderation.cli.quality import _calibration_table, _combined_table

    compiled = _compiled(COMBINED)
    s, y = _world()
    scored = _scored(compiled, s, y)
    console = Console(width=250, record=True)
    console.print(_combined_table(evaluate(scored, compiled, dataset=DATASET, resamples=10)))
    console.print(
        _calibration_table(
            calibrate(
                scored,
                compiled,
                "nudity",
                dataset=DATASET,
                target_precision=0.95,
                target_recall=0.95,
            )
        )
    )
    text = console.export_text()
    assert "nudity/by_alpha alone" in text and "nudity/by_beta alone" in text
    assert "the rule" in text and "nudity/nudity (combined)" in text
    assert "by_alpha 0.8000 →" in text and "by_beta 0.4000 →" in text
