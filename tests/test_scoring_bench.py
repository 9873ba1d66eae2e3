"""The batch verdict builder (``decision.verdicts``) against the per-image reference
(``decision.verdict_at``), and the scoring benchmark's output shape (not its speed)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from bench.scoring import RandomTextEncoder, measure_scoring, random_unit
from moderation.compiled import compile_policy
from moderation.decision import (
    CategoryResult,
    Decision,
    PromptMatch,
    Verdict,
    _construct,
    verdict_at,
    verdicts,
)
from moderation.policy_files import load_policies, load_policy_text
from moderation.scoring import Scorer

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
    return Scorer(policies)


@pytest.mark.parametrize("seed", [0, 1])
def test_batch_verdicts_equal_the_per_image_reference(seed: int) -> None:
    scorer = _scorer()
    embeddings = random_unit(300, seed=seed)
    # Mix in images close to one category's prompts, so all three bands occur.
    embeddings[:50] = scorer.matrix.T[np.arange(50) % scorer.matrix.shape[1]]
    batch = scorer.score(embeddings)
    fast = verdicts(batch)
    reference = [verdict_at(batch, i) for i in range(len(batch))]
    assert fast == reference
    assert [v.model_dump_json() for v in fast] == [v.model_dump_json() for v in reference]
    assert {v.decision for v in fast} == set(Decision)
    assert any(len(c.top_prompts) == 2 for v in fast for c in v.categories)  # the tiny policy
    for verdict in fast[:20]:
        assert Verdict.model_validate_json(verdict.model_dump_json()) == verdict


def test_empty_batch() -> None:
    assert verdicts(_scorer().score(np.zeros((0, 512), np.float32))) == []


def test_fast_construct_matches_model_construct() -> None:
    values = {"prompt": "a dot", "kind": "positive", "probability": 0.25, "similarity": 0.1}
    fast, slow = _construct(PromptMatch, dict(values)), PromptMatch.model_construct(**values)
    assert fast == slow and fast.model_fields_set == slow.model_fields_set
    assert fast.model_dump_json() == slow.model_dump_json()
    assert PromptMatch.model_validate(fast.model_dump()) == fast
    with pytest.raises(Exception, match="frozen"):
        fast.prompt = "x"
    assert CategoryResult.model_fields.keys() >= {"top_prompts", "margin_block"}


def test_scoring_benchmark_reports_every_field() -> None:
    result = measure_scoring(500, policy_paths=[ROOT / "policies"], repeats=1)
    assert result["n_images"] == 500 and result["dim"] == 512
    assert sum(result["decisions"].values()) == 500
    assert result["categories"] >= 6 and len(result["policies"]) >= 6
    assert result["score_s"] > 0 and result["verdicts_s"] > 0
