"""The bundled test model and its synthetic world: loads through open_clip, generalises to fresh
images, draws deterministic worlds, and lands the policy bands where they belong."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch

from moderation import testmodel
from moderation.pipeline.score import score_local
from moderation.testmodel import evaluate as ev
from moderation.testmodel import world
from moderation.testmodel.samples import encoded


def _pixels(image: object) -> bytes:
    return np.asarray(image).tobytes()


def test_register_config_is_idempotent() -> None:
    import open_clip

    testmodel.register_config()
    testmodel.register_config()
    assert testmodel.MODEL_NAME in open_clip.list_models()
    assert open_clip.get_model_config(testmodel.MODEL_NAME)["embed_dim"] == 128


def test_checkpoint_is_fp16_small_and_loads_through_open_clip() -> None:
    import open_clip

    assert testmodel.CHECKPOINT_PATH.stat().st_size <= 20 * 1024 * 1024
    state = torch.load(testmodel.CHECKPOINT_PATH, map_location="cpu", weights_only=True)
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float16}

    testmodel.register_config()
    model, _, preprocess = open_clip.create_model_and_transforms(
        testmodel.MODEL_NAME, pretrained=str(testmodel.CHECKPOINT_PATH)
    )
    tokenizer = open_clip.get_tokenizer(testmodel.MODEL_NAME)
    assert isinstance(model, open_clip.CLIP)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert tokenizer.vocab_size == 49408 and tokenizer.context_length == 16
    # the fp16 values came through unchanged
    loaded = model.state_dict()
    for key, value in state.items():
        torch.testing.assert_close(loaded[key].to(value.dtype), value, rtol=0, atol=0)
    assert 1.0 < float(model.logit_scale.detach().exp()) <= 100.0
    assert preprocess(world.render("red", "star", seed=1)).shape == (3, 64, 64)


def test_train_report_matches_checkpoint() -> None:
    report = json.loads(testmodel.TRAIN_REPORT_PATH.read_text())
    assert report["model"] == testmodel.MODEL_NAME
    assert report["checkpoint_bytes"] == testmodel.CHECKPOINT_PATH.stat().st_size
    assert report["heldout"]["n_images"] >= 1000 and report["heldout"]["accuracy"] >= 0.95


def test_heldout_zero_shot_accuracy_on_fresh_images() -> None:
    result = ev.evaluate(n_per_class=3, seed=4_242_424)
    assert result["n_classes"] == 64 and result["n_images"] == 192
    assert result["accuracy"] >= 0.95, result["confusions"]


def test_world_is_deterministic() -> None:
    a = world.render("red", "star", seed=11)
    assert _pixels(a) == _pixels(world.render("red", "star", seed=11))
    assert _pixels(a) != _pixels(world.render("red", "star", seed=12))
    assert a.size == (64, 64) and a.mode == "RGB"
    for band in ("block", "allow", "review"):
        first = world.sample_images(band, 4, seed=3)
        again = world.sample_images(band, 4, seed=3)
        assert [lab for _, lab in first] == [lab for _, lab in again]
        assert [_pixels(im) for im, _ in first] == [_pixels(im) for im, _ in again]
    rng1, rng2 = np.random.default_rng(5), np.random.default_rng(5)
    assert world.training_example(rng1, seed=5) == world.training_example(rng2, seed=5)


def test_world_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="unknown colour"):
        world.render("teal", "star", seed=0)
    with pytest.raises(ValueError, match="unknown shape"):
        world.render("red", "hexagon", seed=0)
    with pytest.raises(ValueError, match="unknown band"):
        world.sample_images("maybe", 1, seed=0)  # type: ignore[arg-type]


def test_blend_targets_are_soft() -> None:
    rng = np.random.default_rng(0)
    scene = world.sample_scene(rng, seed=0, colour="red", shape="star", mix_with="orange", mix=0.3)
    assert scene.targets() == pytest.approx({"a red star": 0.7, "an orange star": 0.3})
    assert len(world.PHRASES) == 64 + 4


@pytest.mark.parametrize("band", ["block", "allow", "review"])
def test_policy_bands_land_where_they_belong(band: world.Band, scoring: Any) -> None:
    """The test-world policy, through the live scoring path, decides each band as its name."""
    samples = world.sample_images(band, 9, seed=31_337)
    items = [(label, lambda im=im: encoded(im)) for im, label in samples]
    results = list(score_local(items, scoring.moderator))
    wrong = [(r.name, r.verdict.decision.value) for r in results if r.verdict.decision != band]  # type: ignore[union-attr]
    assert not wrong


def test_labelled_images_are_deterministic_and_labelled_by_their_paint() -> None:
    first = world.labelled_images(60, seed=9)
    again = world.labelled_images(60, seed=9)
    assert [_pixels(i.image) for i in first] == [_pixels(i.image) for i in again]
    assert {label for item in first for label in item.labels} == set(world.CATEGORY_OBJECTS)
    for item in first:
        assert len(item.labels) <= 1
        for category in item.labels:
            colour, shape = world.CATEGORY_OBJECTS[category]
            assert item.description.startswith(colour) and shape in item.description
            assert "toward" not in item.description or f"toward {colour}" not in item.description
