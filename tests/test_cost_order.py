"""Cost order: signals run cheapest first; a costly one runs only where the decision could still
change, and the verdict says where it did not run and why.

Unit tests over classifier signals whose in-memory twins return their input row (exact scores,
every batch recorded), then the real thing: a PDQ hash bank that blocks an image before the
open_nsfw ONNX model would run on it.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from moderation import testmodel
from moderation.adapters.images import SafeDecoder
from moderation.adapters.memory import MemoryBankStore, MemoryClassifier
from moderation.adapters.policy_files import load_policy_text
from moderation.core.audit import record_for_verdict
from moderation.core.banks import EntryData
from moderation.core.compiled import compile_policy
from moderation.core.decision import Decision, SkippedSignal, verdict_at, verdicts
from moderation.core.policy import PolicySet
from moderation.core.scoring import SKIP_COST, FeatureBatch, ScoreBatch, Scorer
from moderation.pipeline.bank_sync import BankSync
from moderation.pipeline.banks import BankService, image_feature
from moderation.pipeline.moderator import Moderator
from moderation.pipeline.policies import ActivePolicies
from moderation.settings import ImageLimits
from moderation.signals import ClassifierSignal, HashBankSignal, LoadedBanks, PromptSignal, Signals
from tests.test_combine import _Encoder

DECODER = SafeDecoder(ImageLimits())


def _twin(name: str, cost: float, built: list[str]) -> tuple[ClassifierSignal, MemoryClassifier]:
    model = MemoryClassifier(lambda x: x)

    def factory() -> MemoryClassifier:
        built.append(name)
        return model

    signal = ClassifierSignal(
        name=name,
        labels=["ok", "bad"],
        preprocessing=lambda image: np.asarray(image, np.float32),
        model=factory,
        cost=cost,
    )
    return signal, model


POLICY = textwrap.dedent(
    """\
    id: p
    version: 1
    description: a cheap signal and a costly one
    categories:
      - id: cheap
        description: the cheap signal says so
        severity: critical
        signal: cheap
        labels: [bad]
        thresholds: {review: 0.5, block: 0.8}
      - id: costly
        description: the costly signal says so
        severity: high
        signal: costly
        labels: [bad]
        thresholds: {review: 0.5, block: 0.8}
    """
)


class _World:
    def __init__(self, text: str = POLICY) -> None:
        self.built: list[str] = []
        cheap, self.cheap_model = _twin("cheap", 1.0, self.built)
        costly, self.costly_model = _twin("costly", 10.0, self.built)
        self.signals = Signals([PromptSignal(), cheap, costly])
        policy = load_policy_text(text, signals=self.signals)
        self.scorer = Scorer(
            [compile_policy(policy, _Encoder())],
            self.signals.scorer_factories,
            costs=self.signals.costs,
        )

    def score(self, pairs: Sequence[tuple[float, float]], *, complete: bool = False) -> ScoreBatch:
        batch = FeatureBatch(
            embeddings=np.zeros((len(pairs), 8), np.float32),
            features={
                "cheap": [np.array([1 - a, a], np.float32) for a, _ in pairs],
                "costly": [np.array([1 - b, b], np.float32) for _, b in pairs],
            },
        )
        return self.scorer.score(batch, complete=complete)


def test_a_costly_signal_skips_the_rows_a_cheaper_one_already_blocked() -> None:
    world = _World()
    batch = world.score([(0.9, 0.9), (0.1, 0.9), (0.6, 0.2)])
    assert world.cheap_model.batches == [3] and world.costly_model.batches == [2]
    found = verdicts(batch)
    assert found == [verdict_at(batch, row) for row in range(3)]
    first = found[0]
    assert first.decision is Decision.BLOCK and first.category_id == "cheap"
    assert first.skipped == [
        SkippedSignal(
            signal="costly", reason="settled", categories=["p/costly"], settled_by="p/cheap"
        )
    ]
    assert "p/costly" not in first.scores and first.scores["p/cheap"] == pytest.approx(0.9)
    assert "not run (decision settled): costly (by p/cheap)" in first.explain()
    # the rows it ran on are scored and decided as always
    assert found[1].decision is Decision.BLOCK and found[1].category_id == "costly"
    assert found[1].scores["p/costly"] == pytest.approx(0.9) and found[1].skipped == []
    assert found[2].decision is Decision.REVIEW and found[2].scores["p/costly"] == pytest.approx(
        0.2
    )
    # the verdict travels (job results, audit records) with what was skipped
    assert type(first).from_dict(first.to_dict()) == first
    record = record_for_verdict(job_id="j", verdict=first, content_sha256=None, content_ref=None)
    assert record.details["skipped"] == [s.to_dict() for s in first.skipped]
    assert "p/costly" not in record.scores
    plain = record_for_verdict(job_id="k", verdict=found[1], content_sha256=None, content_ref=None)
    assert "skipped" not in plain.details


def test_complete_scoring_runs_every_signal_on_every_row() -> None:
    world = _World()
    found = verdicts(world.score([(0.9, 0.9), (0.1, 0.9)], complete=True))
    assert world.costly_model.batches == [2]
    assert all(v.skipped == [] and "p/costly" in v.scores for v in found)


def test_when_every_row_is_settled_the_costly_model_is_never_built() -> None:
    world = _World()
    found = verdicts(world.score([(0.95, 0.1), (0.85, 0.99)]))
    assert world.built == ["cheap"] and world.costly_model.batches == []
    assert [v.decision for v in found] == [Decision.BLOCK, Decision.BLOCK]
    assert all(v.category_id == "cheap" for v in found)


@pytest.mark.parametrize(
    ("cheap_severity", "skipped"),
    [("critical", True), ("high", True), ("medium", False)],
)
def test_only_a_block_as_severe_as_the_costly_categories_settles(
    cheap_severity: str, skipped: bool
) -> None:
    """A costly category of higher severity would take the verdict over: it runs."""
    world = _World(POLICY.replace("severity: critical", f"severity: {cheap_severity}", 1))
    (verdict,) = verdicts(world.score([(0.9, 0.95)]))
    assert bool(verdict.skipped) is skipped
    assert verdict.decision is Decision.BLOCK
    assert verdict.category_id == ("cheap" if skipped else "costly")


def test_a_review_from_a_cheap_signal_settles_nothing() -> None:
    world = _World()
    (verdict,) = verdicts(world.score([(0.6, 0.9)]))
    assert verdict.skipped == [] and verdict.category_id == "costly"
    assert verdict.decision is Decision.BLOCK


def test_a_member_of_a_combined_category_runs_while_the_rule_could_still_block() -> None:
    """The costly signal feeds a critical combined category: a high block elsewhere does not
    settle it, a critical one does."""
    text = POLICY.replace("severity: critical", "severity: high", 1) + textwrap.indent(
        textwrap.dedent(
            """\
            - id: agree
              description: the costly signal and prompts-free twin agree
              severity: critical
              signal: combine
              combine: {of: [costly, alone], block: any}
            - id: alone
              description: a second cheap opinion
              severity: low
              signal: cheap
              labels: [bad]
              thresholds: {review: 0.5, block: 0.99}
            """
        ),
        "  ",
    )
    world = _World(text)
    (verdict,) = verdicts(world.score([(0.9, 0.95)]))
    assert verdict.skipped == [] and verdict.category_id == "agree"
    (blocked,) = verdicts(world.score([(0.995, 0.95)]))  # the rule blocks on the cheap member
    assert blocked.category_id == "agree" and blocked.skipped[0].settled_by == "p/agree"
    assert blocked.deciding is not None
    contributions = {e.label: e.details["band"] for e in blocked.deciding.evidence}
    assert contributions == {"costly": "not run", "alone": "block"}


def test_cheap_signals_are_never_skipped() -> None:
    assert PromptSignal.cost < SKIP_COST and HashBankSignal.cost < SKIP_COST
    world = _World(POLICY.replace("signal: costly", "signal: cheap"))
    (verdict,) = verdicts(world.score([(0.9, 0.9)]))
    assert verdict.skipped == [] and world.cheap_model.batches == [1]


# --- the real thing: a hash bank settles, open_nsfw does not run ------------------------------

BANK_AND_NSFW = textwrap.dedent(
    """\
    id: known
    version: 1
    description: known-bad images by hash, and nudity by open_nsfw
    categories:
      - id: banked
        description: images in the known-bad bank
        severity: critical
        signal: hash_bank
        bank: {name: known-bad, max_distance: 31}
        thresholds: {review: 0.5, block: 0.85}
      - id: explicit
        description: open_nsfw very confident
        severity: critical
        signal: nsfw
        labels: [nsfw]
        thresholds: {review: 0.8, block: 0.97}
    """
)


def _png(image: Any) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_hash_bank_block_skips_the_onnx_classifier(scoring: Any) -> None:
    from moderation.compose.registries import classifier_signals
    from moderation.settings import SignalSettings

    (nsfw,) = classifier_signals(SignalSettings(onnx_device="cpu"))
    store = MemoryBankStore()
    service = BankService(store)
    service.create("known-bad")
    loaded = LoadedBanks()
    signals = Signals([PromptSignal(), HashBankSignal(loaded), nsfw])
    policy = load_policy_text(BANK_AND_NSFW, signals=signals)
    encoder = scoring.model.encoder
    policies = ActivePolicies(
        load=lambda: PolicySet([(policy, "known.yaml")]),
        compile=lambda ps: [compile_policy(ps[pid], encoder) for pid in ps],
        fingerprint=lambda: "fixed",
        signals=signals,
    )
    moderator = Moderator(encoder=encoder, decoder=DECODER, policies=policies)
    images = [testmodel.render("red", "star", seed=s).resize((384, 384)) for s in (1, 2)]
    feature = image_feature(DECODER, _png(images[0]))
    service.add("known-bad", [EntryData(pdq=feature.hex, label="known", quality=feature.quality)])
    BankSync(store, loaded, background=False).load()

    banked = moderator.moderate([moderator.prepare(_png(images[0]))])[0]
    assert banked.decision is Decision.BLOCK and banked.category_id == "banked"
    assert [s.signal for s in banked.skipped] == ["nsfw"]
    assert "known/explicit" not in banked.scores
    assert nsfw._model is None  # the ONNX session was never even loaded
    both = moderator.moderate([moderator.prepare(_png(image)) for image in images])
    assert [bool(v.skipped) for v in both] == [True, False]
    assert "known/explicit" in both[1].scores and nsfw._model is not None
    # evaluation scores every signal on every image
    full = moderator.moderate_frames([moderator.prepare(_png(images[0]))], complete=True)
    assert full[0][0].skipped == [] and "known/explicit" in full[0][0].scores
