"""The open_clip adapter on the bundled test model: real forward passes, real decisions."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from moderation import testmodel
from moderation.adapters.clip import file_sha256, load_clip
from moderation.adapters.compile_cache import CompileCache
from moderation.adapters.policy_files import load_policy_file, load_policy_text
from moderation.compose.model import load_model
from moderation.compose.scoring import build_scoring
from moderation.core.decision import Decision
from moderation.exceptions import ModelUnavailableError
from moderation.pipeline.compile import compile_cached
from moderation.settings import ModelSettings, Settings
from moderation.testmodel.samples import encoded


def test_checkpoint_is_small_and_loads_through_open_clip() -> None:
    assert testmodel.CHECKPOINT_PATH.stat().st_size <= 20 * 1024 * 1024
    encoder = load_clip(testmodel.model_settings(), config_path=testmodel.CONFIG_PATH)
    assert encoder.identity.architecture == testmodel.MODEL_NAME
    assert encoder.identity.weights_sha256 == file_sha256(testmodel.CHECKPOINT_PATH)
    assert encoder.device.type == "cpu" and encoder.precision == "fp32"
    images = [img for img, _ in testmodel.sample_images("block", 3, seed=7)]
    embeddings = encoder.encode_images(images)
    assert embeddings.shape == (3, encoder.model.visual.output_dim)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-4)
    texts = encoder.encode_texts(["a red star", "a yellow star"])
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-4)
    # the model separates what it was trained on: a red star is closer to "a red star"
    sims = embeddings @ texts.T
    assert 1.0 < encoder.logit_scale <= 100.0
    assert sims.shape == (3, 2)


@pytest.mark.parametrize(
    ("band", "expected"),
    [("block", Decision.BLOCK), ("allow", Decision.ALLOW), ("review", Decision.REVIEW)],
)
def test_test_world_policy_decisions_on_real_forward_passes(scoring, band, expected) -> None:  # type: ignore[no-untyped-def]
    samples = testmodel.sample_images(band, 12, seed=2024)
    moderator = scoring.moderator
    found = moderator.moderate([moderator.prepare(encoded(img)) for img, _ in samples])
    decisions = Counter(v.decision for v in found)
    wrong = [
        (label, v.decision.value, round(v.score, 3))
        for (_, label), v in zip(samples, found, strict=True)
        if v.decision != expected
    ]
    assert decisions[expected] == len(samples), wrong
    for verdict in found:
        assert verdict.model == scoring.model.encoder.identity.id
        assert verdict.policies[0].id == "testworld"
        if expected is not Decision.ALLOW:
            top = verdict.categories[0]
            assert top.decision is expected
            assert top.signal == "prompts"
            assert top.evidence and top.evidence[0].score > 0
            assert top.evidence[0].details["kind"] in ("positive", "benign")
            assert verdict.reason_code


def test_compile_twice_encodes_no_text_the_second_time(tmp_path: Path, scoring) -> None:  # type: ignore[no-untyped-def]
    encoder = scoring.model.encoder
    policy = load_policy_file(testmodel.POLICY_PATH)
    cache = CompileCache(tmp_path)
    before = encoder.texts_encoded
    first, hit1 = compile_cached(policy, cache=cache, encoder=encoder)
    encoded_first = encoder.texts_encoded - before
    second, hit2 = compile_cached(policy, cache=cache, encoder=encoder)
    assert (hit1, hit2) == (False, True)
    assert encoded_first > 0 and encoder.texts_encoded - before == encoded_first
    assert second.compiled_hash == first.compiled_hash
    for a, b in zip(first.categories, second.categories, strict=True):
        np.testing.assert_array_equal(a.positive, b.positive)
        np.testing.assert_array_equal(a.benign, b.benign)
    # an edited policy is a different artifact; a comment-only edit is not
    text = testmodel.POLICY_PATH.read_text()
    commented = load_policy_text("# reviewed 2026-11\n" + text)
    assert compile_cached(commented, cache=cache, encoder=encoder)[1] is True
    edited = load_policy_text(text.replace("version: 1", "version: 2", 1))
    _, hit3 = compile_cached(edited, cache=cache, encoder=encoder)
    assert hit3 is False and len(list(tmp_path.glob("*.npz"))) == 2


def test_corrupt_cache_file_is_recompiled(tmp_path: Path, scoring) -> None:  # type: ignore[no-untyped-def]
    encoder = scoring.model.encoder
    policy = load_policy_file(testmodel.POLICY_PATH)
    cache = CompileCache(tmp_path)
    compile_cached(policy, cache=cache, encoder=encoder)
    cache.path_for(policy, encoder.identity).write_bytes(b"garbage")
    compiled, hit = compile_cached(policy, cache=cache, encoder=encoder)
    assert hit is False and compiled.categories


def test_missing_real_weights_fall_back_loudly_or_fail(tmp_path: Path) -> None:
    missing = ModelSettings(
        architecture="ViT-B-32", pretrained=None, checkpoint=tmp_path / "nope.pt"
    )
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        load_model(missing.model_copy(update={"fallback_to_test_model": False}))
    choice = load_model(missing)
    assert choice.is_test_model and choice.note and "TEST model" in choice.note
    fallback = build_scoring(Settings(model=missing, cache_dir=tmp_path / "c"))
    # not policies/: meaningless to this model
    assert list(fallback.policies.current.by_id) == ["testworld"]
    assert "test-world policy" in (fallback.model.note or "")
    named = load_model(missing, custom_policies=True)
    assert "the policies you named" in (named.note or "")


def test_corrupt_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    settings = testmodel.model_settings().model_copy(update={"checkpoint": bad})
    with pytest.raises(ModelUnavailableError, match="cannot load open_clip"):
        load_clip(settings, config_path=testmodel.CONFIG_PATH)
