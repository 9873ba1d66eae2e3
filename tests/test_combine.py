"""Combined categories (``signal: combine``): a decision from several signals, pure core.

Two classifier signals over in-memory twins whose "inputs" are the probabilities themselves,
so every member score is exact and every band of the rule can be reached on purpose.
"""

from __future__ import annotations

import hashlib
import textwrap
from collections.abc import Sequence

import numpy as np
import pytest

from moderation.adapters.memory.classifier import MemoryClassifier
from moderation.adapters.policy_files import load_policy_text
from moderation.core.compiled import CompiledPolicy, ModelIdentity, compile_policy
from moderation.core.decision import Decision, bands, decisions, verdict_at, verdicts
from moderation.core.policy import COMBINE_SIGNAL, Policy, policy_hash
from moderation.core.scoring import FeatureBatch, ScoreBatch, Scorer
from moderation.exceptions import PolicyValidationError
from moderation.signals import ClassifierSignal, Signals, builtin_signals

DIM = 8


class _Encoder:
    identity = ModelIdentity(architecture="fake", pretrained="hash")
    logit_scale = 100.0

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        out = []
        for text in texts:
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
            v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
            out.append(v / np.linalg.norm(v))
        return np.stack(out)


def _twin(name: str) -> ClassifierSignal:
    """A classifier whose input row is its output: [p(ok), p(bad)]."""
    return ClassifierSignal(
        name=name,
        labels=["ok", "bad"],
        preprocessing=lambda image: np.asarray(image, np.float32),
        model=lambda: MemoryClassifier(lambda x: x),
    )


SIGNALS: Signals = builtin_signals(classifiers=[_twin("alpha"), _twin("beta")])

MEMBERS = textwrap.dedent(
    """\
    id: nudity
    version: 1
    description: two opinions
    categories:
      - id: by_alpha
        description: alpha says so
        severity: high
        signal: alpha
        labels: [bad]
        thresholds: {review: 0.5, block: 0.8}
      - id: by_beta
        description: beta says so
        severity: high
        signal: beta
        labels: [bad]
        thresholds: {review: 0.4, block: 0.7}
      - id: other
        description: an unrelated category
        severity: low
        signal: alpha
        labels: [bad]
        thresholds: {review: 0.95, block: 0.99}
    """
)

COMBINED = MEMBERS + textwrap.indent(
    textwrap.dedent(
        """\
        - id: nudity
          description: both agree to block, either to review, review when they disagree
          severity: critical
          signal: combine
          combine: {of: [by_alpha, by_beta], block: all, review: any, disagree_review: 0.3}
          actions:
            block: {action: remove, reason_code: NUDITY}
        """
    ),
    "  ",
)


def _compiled(text: str) -> CompiledPolicy:
    return compile_policy(load_policy_text(text, signals=SIGNALS), _Encoder())


def _score(text: str, pairs: Sequence[tuple[float, float]]) -> ScoreBatch:
    scorer = Scorer([_compiled(text)], SIGNALS.scorer_factories)
    features = {
        "alpha": [np.array([1 - a, a], np.float32) for a, _ in pairs],
        "beta": [np.array([1 - b, b], np.float32) for _, b in pairs],
    }
    return scorer.score(
        FeatureBatch(embeddings=np.zeros((len(pairs), DIM), np.float32), features=features)
    )


CASES = [
    ((0.9, 0.75), Decision.BLOCK),  # both at block
    ((0.9, 0.65), Decision.REVIEW),  # block needs all: alpha blocks, beta only reviews
    ((0.55, 0.45), Decision.REVIEW),  # both review
    ((0.1, 0.45), Decision.REVIEW),  # any review suffices
    ((0.45, 0.1), Decision.REVIEW),  # neither reaches review, but they differ by 0.35 > 0.3
    ((0.3, 0.1), Decision.ALLOW),  # below both, differ by 0.2
    ((0.0, 0.0), Decision.ALLOW),
]


def test_the_rule_decides_from_each_members_band() -> None:
    batch = _score(COMBINED, [pair for pair, _ in CASES])
    found = verdicts(batch)
    assert [v.decision for v in found] == [expected for _, expected in CASES]
    column = next(s.column for s in batch.slots if s.category.id == "nudity")
    members = [s.column for s in batch.slots if s.category.id.startswith("by_")]
    b = bands(batch)
    assert (b[:, members] == 0).all()  # members are inputs only
    for i, (pair, _) in enumerate(CASES):
        assert batch.scores[i, column] == pytest.approx(max(pair))
        assert verdict_at(batch, i) == found[i]
    rank, deciding, _ = decisions(batch)
    assert rank.tolist() == [v.decision.rank for v in found]
    assert all(
        batch.slots[c].category.id == "nudity" for c, r in zip(deciding, rank, strict=True) if r > 0
    )


def test_every_verdict_lists_each_signals_contribution() -> None:
    blocked, disagreeing = verdicts(_score(COMBINED, [(0.9, 0.75), (0.45, 0.1)]))
    top = blocked.deciding
    assert top is not None and top.signal == COMBINE_SIGNAL and blocked.reason_code == "NUDITY"
    assert [(e.signal, e.label) for e in top.evidence] == [
        ("alpha", "by_alpha"),
        ("beta", "by_beta"),
    ]
    alpha, beta = top.evidence
    assert alpha.score == pytest.approx(0.9) and beta.score == pytest.approx(0.75)
    assert alpha.details["band"] == "block" and beta.details["band"] == "block"
    assert (alpha.details["review_threshold"], alpha.details["block_threshold"]) == (0.5, 0.8)
    assert beta.details["rule"] == {
        "of": ["by_alpha", "by_beta"],
        "block": "all",
        "review": "any",
        "disagree_review": 0.3,
    }
    assert "by_alpha 0.90 block, by_beta 0.75 block" in blocked.explain()
    bands_shown = [e.details["band"] for e in disagreeing.categories[0].evidence]
    assert disagreeing.decision is Decision.REVIEW and bands_shown == ["allow", "allow"]


@pytest.mark.parametrize(
    ("rule", "pair", "expected"),
    [
        ("{of: [by_alpha, by_beta], block: any}", (0.9, 0.0), Decision.BLOCK),
        ("{of: [by_alpha, by_beta], review: all}", (0.6, 0.1), Decision.ALLOW),
        ("{of: [by_alpha, by_beta], review: all}", (0.6, 0.5), Decision.REVIEW),
        ("{of: [by_alpha, by_beta]}", (0.45, 0.0), Decision.ALLOW),  # no disagree rule
    ],
)
def test_quorums_and_defaults(rule: str, pair: tuple[float, float], expected: Decision) -> None:
    text = COMBINED.replace(
        "{of: [by_alpha, by_beta], block: all, review: any, disagree_review: 0.3}", rule
    )
    assert verdicts(_score(text, [pair]))[0].decision is expected


def test_policies_without_combine_decide_exactly_as_before() -> None:
    pairs = [(a, b) for a in (0.0, 0.45, 0.6, 0.97) for b in (0.0, 0.3, 0.5, 0.99)]
    plain = _score(MEMBERS, pairs)
    assert plain.combined == ()
    # Each category alone by its own thresholds, as always.
    for c, slot in enumerate(plain.slots):
        t = slot.category.category.thresholds
        expected = (plain.scores[:, c] >= t.review).astype(int) + (plain.scores[:, c] >= t.block)
        assert bands(plain)[:, c].tolist() == expected.tolist()
    # A combined category changes nothing for the categories that are not its members.
    combined = _score(COMBINED, pairs)
    other = next(s.column for s in plain.slots if s.category.id == "other")
    assert bands(combined)[:, other].tolist() == bands(plain)[:, other].tolist()
    # The hash of a policy without combine does not mention it.
    policy = load_policy_text(MEMBERS, signals=SIGNALS)
    assert "combine" not in policy.canonical_json()
    assert Policy.model_validate(policy.model_dump()) == policy


def test_a_combined_policy_round_trips_and_hashes_stably() -> None:
    policy = load_policy_text(COMBINED, signals=SIGNALS)
    again = Policy.model_validate(policy.model_dump(mode="json"))
    assert again == policy and policy_hash(again) == policy_hash(policy)


def _errors(text: str) -> list[str]:
    with pytest.raises(PolicyValidationError) as info:
        load_policy_text(text, source="policies/nudity.yaml", signals=SIGNALS)
    return [str(issue) for issue in info.value.issues]


RULE = "{of: [by_alpha, by_beta], block: all, review: any, disagree_review: 0.3}"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            RULE,
            "{of: [by_alpha, missing]}",
            "nudity.yaml:27: categories[3].combine.of[1]: unknown category",
        ),
        (RULE, "{of: [by_alpha, nudity]}", "its own member"),
        (RULE, "{of: [by_alpha]}", "combine.of"),
        (RULE, "{of: [by_alpha, by_alpha]}", "listed twice"),
        (RULE, "{of: [by_alpha, by_beta], block: most}", "combine.block"),
        (RULE, "{of: [by_alpha, by_beta], disagree_review: 1.5}", "combine.disagree_review"),
        (
            "signal: combine\n",
            "signal: combine\n    thresholds: {review: 0.2, block: 0.3}\n",
            "nudity.yaml:27: categories[3].thresholds: a combine category takes no thresholds",
        ),
        (
            "    signal: combine\n    combine: " + RULE + "\n",
            "    signal: combine\n",
            "needs combine",
        ),
        ("signal: alpha\n", "signal: alpha\n    combine: " + RULE + "\n", "only for signal"),
    ],
)
def test_bad_rules_are_refused_with_file_and_line(old: str, new: str, expected: str) -> None:
    text = COMBINED.replace(old, new, 1)
    assert text != COMBINED
    errors = _errors(text)
    assert any(expected in e for e in errors), errors


def test_a_member_that_is_itself_combined_is_refused() -> None:
    text = COMBINED + textwrap.indent(
        "- id: twice\n  description: d\n  severity: low\n  signal: combine\n"
        "  combine: {of: [nudity, by_beta]}\n",
        "  ",
    )
    errors = _errors(text)
    assert any("combine.of[0]" in e and "itself combined" in e for e in errors), errors
