"""The batch verdict builder (``decision.verdicts``) against the per-image reference
(``decision.verdict_at``), and the scoring benchmark's output shape (not its speed)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from bench.scoring import RandomTextEncoder, measure_scoring, random_unit
from moderation.adapters.policy_files import load_policies, load_policy_text
from moderation.core.compiled import compile_policy
from moderation.core.decision import Decision, Verdict, verdict_at, verdicts
from moderation.core.scoring import FeatureBatch, Scorer
from moderation.signals import builtin_signals

ROOT = Path(__file__).resolve().parent.parent

# One category with only two prompts in all (fewer than the three "top prompts" shown).
SMALL = textwrap.dedent(
    """\
    id: tiny
    version: 2
    description: two prompts only
    defaults:
      templates: ["{}"]
      benign_prompts: []
    categories:
      - id: dot
        description: dots
        severity: low
        prompts: [a dot]
        benign_prompts: [a line]
        thresholds: {review: 0.3, block: 0.6}
    """
)


def _scorer() -> Scorer:
    encoder = RandomTextEncoder(dim=512)
    policies = [compile_policy(p, encoder) for p in load_policies([ROOT / "policies"]).active()]
    policies.append(compile_policy(load_policy_text(SMALL), encoder))
    return Scorer(policies, builtin_signals().scorer_factories)


def _prompt_rows(scorer: Scorer) -> np.ndarray:
    """Every prompt embedding of every category, as rows."""
    return np.concatenate(
        [np.concatenate([s.category.positive, s.category.benign]) for s in scorer.slots]
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_batch_verdicts_equal_the_per_image_reference(seed: int) -> None:
    scorer = _scorer()
    embeddings = random_unit(300, seed=seed)
    # Mix in images close to one category's prompts, so all three bands occur.
    prompts = _prompt_rows(scorer)
    embeddings[:50] = prompts[np.arange(50) % len(prompts)]
    batch = scorer.score(FeatureBatch(embeddings=embeddings))
    fast = verdicts(batch)
    reference = [verdict_at(batch, i) for i in range(len(batch))]
    assert fast == reference
    assert [v.to_dict() for v in fast] == [v.to_dict() for v in reference]
    assert {v.decision for v in fast} == set(Decision)
    assert any(len(c.evidence) == 2 for v in fast for c in v.categories)  # the tiny policy
    for verdict in fast[:20]:
        assert Verdict.from_dict(verdict.to_dict()) == verdict


def test_empty_batch() -> None:
    assert verdicts(_scorer().score(FeatureBatch(embeddings=np.zeros((0, 512), np.float32)))) == []


def test_results_are_frozen_slotted_values() -> None:
    batch = _scorer().score(FeatureBatch(embeddings=random_unit(2)))
    verdict = verdicts(batch)[0]
    with pytest.raises(AttributeError):
        verdict.score = 1.0  # type: ignore[misc]
    assert not hasattr(verdict, "__dict__")
    assert not hasattr(verdict.categories[0].evidence[0], "__dict__")


def test_scoring_benchmark_reports_every_field() -> None:
    result = measure_scoring(500, policy_paths=[ROOT / "policies"], repeats=1)
    assert result["n_images"] == 500 and result["dim"] == 512
    assert sum(result["decisions"].values()) == 500
    assert result["categories"] >= 6 and len(result["policies"]) >= 6
    assert result["score_s"] > 0 and result["verdicts_s"] > 0
