"""Pure core: compilation, scoring formula, bands and verdicts (in-memory text encoder)."""

from __future__ import annotations

import hashlib
import textwrap
from collections.abc import Sequence

import numpy as np
import pytest

from moderation.adapters.policy_files import load_policy_text
from moderation.core.compiled import CompiledPolicy, ModelIdentity, compile_policy
from moderation.core.decision import Decision, Verdict, bands, verdicts
from moderation.core.scoring import FeatureBatch, ScoreBatch, Scorer
from moderation.signals import builtin_signals

DIM = 64


class HashTextEncoder:
    """Deterministic unit vectors per text: an in-memory twin of the CLIP text tower."""

    identity = ModelIdentity(architecture="fake", pretrained="hash")
    logit_scale = 100.0

    def __init__(self) -> None:
        self.calls: list[str] = []

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.extend(texts)
        out = []
        for text in texts:
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
            v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
            out.append(v / np.linalg.norm(v))
        return np.stack(out)


POLICY = textwrap.dedent(
    """\
    id: shapes
    version: 3
    description: test
    defaults:
      templates: ["a photo of {}", "{}"]
      benign_prompts: [a plain background]
    categories:
      - id: star
        description: red stars
        severity: critical
        prompts: [a red star]
        benign_prompts: [a yellow star]
        thresholds: {review: 0.4, block: 0.8}
        actions:
          review: {action: human_review, reason_code: STAR_SUSPECTED}
          block: {action: remove, reason_code: STAR}
      - id: cross
        description: black crosses
        severity: medium
        prompts: [a black cross, a dark cross]
        thresholds: {review: 0.5, block: 0.9}
    """
)


class _Scorer:
    """The core Scorer with the built-in signals, scoring plain embeddings."""

    def __init__(self, policies: Sequence[CompiledPolicy]) -> None:
        self.scorer = Scorer(policies, builtin_signals().scorer_factories)

    def score(self, x: np.ndarray) -> ScoreBatch:
        return self.scorer.score(FeatureBatch(embeddings=np.asarray(x, np.float32)))


@pytest.fixture
def compiled():  # type: ignore[no-untyped-def]
    return compile_policy(load_policy_text(POLICY), HashTextEncoder())


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def test_compile_ensembles_templates_and_encodes_each_text_once() -> None:
    encoder = HashTextEncoder()
    compiled = compile_policy(load_policy_text(POLICY), encoder)
    # 5 distinct prompts ("a plain background" is shared) x 2 templates
    assert len(encoder.calls) == len(set(encoder.calls)) == 10
    star = compiled.categories[0]
    expected = _unit(
        _unit(encoder.encode_texts(["a photo of a red star"])[0])
        + _unit(encoder.encode_texts(["a red star"])[0])
    )
    np.testing.assert_allclose(star.positive[0], expected, atol=1e-6)
    assert star.benign_prompts == ("a yellow star", "a plain background")
    assert compiled.compiled_hash and compiled.model.id == "fake/hash"


def test_score_is_softmax_mass_on_positive_prompts(compiled) -> None:  # type: ignore[no-untyped-def]
    scorer = _Scorer([compiled])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, DIM)).astype(np.float32)
    batch = scorer.score(x)
    for c, slot in enumerate(batch.slots):
        cat = slot.category
        for i in range(5):
            xi = _unit(x[i])
            logits = 100.0 * np.concatenate([cat.positive @ xi, cat.benign @ xi])
            p = np.exp(logits - logits.max())
            p /= p.sum()
            assert batch.scores[i, c] == pytest.approx(p[: len(cat.positive)].sum(), abs=1e-5)


def test_bands_and_most_severe_verdict(compiled) -> None:  # type: ignore[no-untyped-def]
    scorer = _Scorer([compiled])
    star, cross = compiled.categories
    red_star = star.positive[0]
    yellow_star = star.benign[0]
    black_cross = cross.positive[0]
    plain = star.benign[1]  # "a plain background", a contrast prompt of both categories
    basis, _ = np.linalg.qr(np.stack([red_star, yellow_star]).T)
    plain = _unit(plain - basis @ (basis.T @ plain))  # orthogonal to both stars: keeps symmetry
    between = _unit(red_star + yellow_star)  # equidistant: ~half the mass on each
    images = [red_star, yellow_star, between, black_cross]
    # Every image also shows some plain background, which keeps unrelated categories allowed.
    batch = scorer.score(np.stack([_unit(v + 0.5 * plain) for v in images]))
    b = bands(batch)
    assert b[0, 0] == 2 and b[1, 0] == 0 and b[2, 0] == 1
    found = verdicts(batch)
    assert [v.decision for v in found] == [
        Decision.BLOCK,
        Decision.ALLOW,
        Decision.REVIEW,
        Decision.BLOCK,
    ]
    assert found[0].category_id == "star" and found[0].reason_code == "STAR"
    assert found[2].reason_code == "STAR_SUSPECTED"
    assert found[3].category_id == "cross" and found[3].reason_code is None
    top = found[0].categories[0]
    assert top.signal == "prompts"
    assert top.evidence[0].label == "a red star"
    assert top.evidence[0].details["kind"] == "positive"
    assert top.margin_block == pytest.approx(top.score - 0.8)
    assert found[0].policies[0].version == 3
    assert "blocked: shapes/star (critical)" in found[0].explain()
    assert set(found[1].scores) == {"shapes/star", "shapes/cross"}


def test_ties_go_to_higher_severity(compiled) -> None:  # type: ignore[no-untyped-def]
    star, cross = compiled.categories
    both = _unit(star.positive[0] + cross.positive[0])
    verdict = verdicts(_Scorer([compiled]).score(both[None]))[0]
    flagged = [c.category_id for c in verdict.categories]
    if len(flagged) == 2 and verdict.categories[0].decision == verdict.categories[1].decision:
        assert flagged[0] == "star"  # critical before medium
    assert verdict.categories[0].decision.rank >= verdict.categories[-1].decision.rank


def test_scorer_rejects_mixed_models_and_bad_dims(compiled) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="at least one"):
        _Scorer([])
    other = compile_policy(load_policy_text(POLICY), HashTextEncoder())
    object.__setattr__(other, "model", ModelIdentity(architecture="other"))
    with pytest.raises(ValueError, match="different models"):
        _Scorer([compiled, other])
    with pytest.raises(ValueError, match="embedding dim"):
        _Scorer([compiled]).score(np.ones((2, DIM + 1), np.float32))


def test_verdict_json_round_trip(compiled) -> None:  # type: ignore[no-untyped-def]
    from moderation.core.jobs import JobResult, JobStatus

    verdict = verdicts(_Scorer([compiled]).score(compiled.categories[0].positive))[0]
    assert Verdict.from_dict(verdict.to_dict()) == verdict
    result = JobResult(job_id="j", status=JobStatus.DONE, verdict=verdict)
    assert JobResult.model_validate_json(result.model_dump_json()).verdict == verdict
