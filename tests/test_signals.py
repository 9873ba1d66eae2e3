"""The Signal interface, proven with a tiny second signal next to CLIP prompts.

``RedPixelSignal`` scores how much of an image is saturated red. It reads the decoded image on the
decode side (``features``) and needs no policy field beyond ``signal: red_pixels``. Its
categories meet the prompt categories in the same bands, the same most-severe rule, the same
verdict explanation, audit record and review item.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

from moderation import testmodel
from moderation.adapters.images import SafeDecoder
from moderation.adapters.policy_files import load_policy_text
from moderation.core.audit import record_for_verdict
from moderation.core.compiled import compile_policy
from moderation.core.decision import Decision
from moderation.core.image_ref import ImageRef
from moderation.core.policy import PolicySet
from moderation.core.review import item_from_verdict
from moderation.core.scoring import CategorySlot, Evidence, FeatureBatch, UnknownSignalError
from moderation.exceptions import PolicyValidationError
from moderation.pipeline.moderator import Moderator
from moderation.pipeline.policies import ActivePolicies, CompiledSet
from moderation.settings import ImageLimits
from moderation.signals import PromptSignal, Signals, builtin_signals
from moderation.signals.hash_bank import HashBankSignal
from moderation.testmodel.samples import encoded


class RedPixelSignal:
    """Score = 4 x the fraction of saturated red pixels, capped at 1."""

    name = "red_pixels"
    needs_image = True
    min_side = 0

    def fingerprint(self, feature: float) -> dict[str, Any]:
        return {}

    def features(self, image: Image.Image) -> float:
        rgb = np.asarray(image.convert("RGB").resize((64, 64)), dtype=np.int16)
        red = (rgb[..., 0] > 150) & (rgb[..., 1] < 90) & (rgb[..., 2] < 90)
        return float(red.mean())

    def scorer(self, slots: Sequence[CategorySlot]) -> RedScorer:
        return RedScorer(len(slots))


@dataclass(frozen=True)
class RedScores:
    fractions: NDArray[np.float64]
    scores: NDArray[np.float32]

    def evidence(self, rows: NDArray[np.intp], cols: NDArray[np.intp]) -> list[list[Evidence]]:
        return [
            [
                Evidence(
                    "red_pixels",
                    "saturated red pixels",
                    float(self.scores[r, 0]),
                    {"fraction": round(float(self.fractions[r]), 4)},
                )
            ]
            for r in rows
        ]


@dataclass(frozen=True)
class RedScorer:
    n_categories: int

    def score(self, batch: FeatureBatch) -> RedScores:
        fractions = np.asarray(batch.features["red_pixels"], dtype=np.float64)
        one = np.clip(4.0 * fractions, 0.0, 1.0).astype(np.float32)
        return RedScores(fractions, np.repeat(one[:, None], self.n_categories, axis=1))


POLICY = textwrap.dedent(
    """\
    id: mixed
    version: 1
    description: prompts and red pixels side by side
    defaults:
      templates: ["a photo of {}"]
    categories:
      - id: stars
        description: red stars (CLIP prompts)
        severity: medium
        prompts: [a red star]
        benign_prompts: [a yellow star, a plain background]
        thresholds: {review: 0.5, block: 0.8}
      - id: mostly_red
        description: images that are mostly saturated red
        severity: high
        signal: red_pixels
        thresholds: {review: 0.3, block: 0.9}
        actions:
          review: {action: human_review, reason_code: RED_SUSPECTED}
          block: {action: remove, reason_code: RED}
    """
)


def _signals() -> Signals:
    return Signals([PromptSignal(), RedPixelSignal()])


@pytest.fixture
def moderator(scoring: Any) -> Moderator:
    encoder = scoring.model.encoder
    signals = _signals()
    policy = load_policy_text(POLICY, signals=set(signals))
    policies = ActivePolicies(
        load=lambda: PolicySet([(policy, "mixed.yaml")]),
        compile=lambda ps: [compile_policy(ps[pid], encoder) for pid in ps],
        fingerprint=lambda: "fixed",
        signals=signals,
    )
    return Moderator(encoder=encoder, decoder=SafeDecoder(ImageLimits()), policies=policies)


def _solid(colour: tuple[int, int, int]) -> bytes:
    return encoded(Image.new("RGB", (96, 96), colour))


def test_a_category_names_its_signal_and_an_unknown_one_is_refused_with_its_line() -> None:
    policy = load_policy_text(POLICY, signals=set(_signals()))
    assert [c.signal for c in policy.categories] == ["prompts", "red_pixels"]
    with pytest.raises(PolicyValidationError) as info:
        load_policy_text(POLICY, source="mixed.yaml", signals=set(builtin_signals()))
    assert str(info.value).startswith(
        "mixed.yaml:16: categories[1].signal: unknown signal 'red_pixels'; known: hash_bank, "
        "prompts"
    )
    bad = POLICY.replace(
        "    signal: red_pixels\n", "    signal: red_pixels\n    prompts: [a red blob]\n"
    )
    assert bad != POLICY
    with pytest.raises(PolicyValidationError, match=r"categories\[1\]\.prompts: only for signal"):
        load_policy_text(bad, signals=set(_signals()))


def test_compiling_skips_prompts_for_other_signals_and_needs_the_signal_registered(
    scoring: Any,
) -> None:
    compiled = compile_policy(load_policy_text(POLICY), scoring.model.encoder)
    assert compiled.categories[1].positive.shape[0] == 0
    assert compiled.dim == compiled.categories[0].positive.shape[1]
    with pytest.raises(UnknownSignalError, match="red_pixels"):
        CompiledSet([compiled], builtin_signals())


def test_signals_meet_in_one_verdict_by_the_most_severe_rule(moderator: Moderator) -> None:
    red = moderator.prepare(_solid((220, 20, 20)))
    white = moderator.prepare(_solid((250, 250, 250)))
    assert red.features["red_pixels"] == (1.0,) and white.features["red_pixels"] == (0.0,)
    red_verdict, white_verdict = moderator.moderate([red, white])
    assert red_verdict.decision is Decision.BLOCK and red_verdict.category_id == "mostly_red"
    assert red_verdict.reason_code == "RED"
    top = red_verdict.deciding
    assert top is not None and top.signal == "red_pixels"
    assert top.evidence[0].details == {"fraction": 1.0}
    assert "blocked: mixed/mostly_red (high)" in red_verdict.explain()
    assert white_verdict.decision is Decision.ALLOW
    assert set(white_verdict.scores) == {"mixed/stars", "mixed/mostly_red"}
    # A test-world red star: both signals may flag it; the verdict lists every flagged category,
    # most severe first, each with its own signal's evidence.
    star = moderator.prepare(encoded(testmodel.render("red", "star", seed=3, clear=True)))
    verdict = moderator.moderate([star])[0]
    signals = {c.category_id: c.signal for c in verdict.categories}
    assert signals.get("stars", "prompts") == "prompts"
    ranks = [(c.decision.rank, c.severity.rank) for c in verdict.categories]
    assert ranks == sorted(ranks, reverse=True)


def test_audit_records_and_review_items_carry_any_signal(moderator: Moderator) -> None:
    image = Image.new("RGB", (100, 100), (250, 250, 250))
    image.paste((220, 20, 20), (0, 0, 100, 10))  # 10% red: score 0.4, the review band
    prepared = moderator.prepare(encoded(image))
    verdict = moderator.moderate([prepared])[0]
    assert verdict.decision is Decision.REVIEW and verdict.category_id == "mostly_red"
    record = record_for_verdict(
        job_id="j-red",
        verdict=verdict,
        content_sha256=prepared.content_sha256,
        content_ref="mem://r",
    )
    assert record.details["signal"] == "red_pixels"
    assert record.details["evidence"][0]["label"] == "saturated red pixels"
    assert record.reason_code == "RED_SUSPECTED"
    policy = moderator.policies.current.policies["mixed"]
    item = item_from_verdict(
        job_id="j-red", image=ImageRef(uri="mem://r"), verdict=verdict, policy=policy
    )
    assert item.category_id == "mostly_red" and item.reason_codes[0] == "RED"
    assert item.policy_text.prompts == []  # nothing to show but the category's description
    deciding = item.verdict.deciding
    assert deciding is not None
    assert deciding.evidence[0].details["fraction"] == pytest.approx(0.1, abs=0.02)


def test_image_signals_run_on_every_image_unless_told_to_run_only_those_in_use(
    scoring: Any,
) -> None:
    """By default each image gets every image signal's features and fingerprints (its PDQ
    hash, though no policy here has a bank category); ``fingerprint_all=False`` runs only the
    signals the policies in service use."""
    encoder = scoring.model.encoder
    signals = Signals([PromptSignal(), RedPixelSignal(), HashBankSignal()])
    policy = load_policy_text(POLICY, signals=set(signals))
    policies = ActivePolicies(
        load=lambda: PolicySet([(policy, "mixed.yaml")]),
        compile=lambda ps: [compile_policy(ps[pid], encoder) for pid in ps],
        fingerprint=lambda: "fixed",
        signals=signals,
    )
    assert policies.current.used_signals == {"prompts", "red_pixels"}
    data = encoded(testmodel.world.sample_images("block", 1, 5)[0][0])
    every = Moderator(encoder=encoder, decoder=SafeDecoder(ImageLimits()), policies=policies)
    used = Moderator(
        encoder=encoder,
        decoder=SafeDecoder(ImageLimits()),
        policies=policies,
        fingerprint_all=False,
    )
    full, lean = every.prepare(data), used.prepare(data)
    assert set(full.features) == {"red_pixels", "hash_bank"}
    assert len(full.fingerprints["pdq"]) == 64 and full.fingerprints["pdq_quality"] >= 0
    assert set(lean.features) == {"red_pixels"} and lean.fingerprints == {}
    # Both decide the same: the hash bank signal scores no category here.
    assert every.moderate([full])[0].to_dict() == used.moderate([lean])[0].to_dict()
