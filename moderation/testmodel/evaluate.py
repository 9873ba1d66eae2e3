"""Held-out evaluation of the test model: ``python -m moderation.testmodel.evaluate``.

Loads the checkpoint the standard way (``open_clip.create_model_and_transforms(MODEL_NAME,
pretrained=...)``), draws FRESH images with a seed the training stream never uses, and reports
zero-shot accuracy over the world's object classes with the policy template ensemble. ``--policy``
also scores the :func:`~moderation.testmodel.world.sample_images` bands against
``assets/testworld.yaml`` with the project's scoring formula (numpy), to check the thresholds.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from numpy.typing import NDArray
from PIL import Image

from moderation.testmodel import (
    CHECKPOINT_PATH,
    MODEL_NAME,
    POLICY_PATH,
    register_config,
    world,
)

__all__ = [
    "benign_for",
    "category_scores",
    "decide",
    "encode_images",
    "encode_phrases",
    "evaluate",
    "load_model",
    "main",
    "measure_policy",
]

FloatArray = NDArray[np.float64]
Preprocess = Callable[[Image.Image], torch.Tensor]
Tokenizer = Callable[[list[str]], torch.Tensor]
DEFAULT_SEED = 777_001  # training draws images from seeds (0, step, i); these never collide
_DECISION_RANK = {"allow": 0, "review": 1, "block": 2}


def load_model(
    checkpoint: Path = CHECKPOINT_PATH,
) -> tuple[torch.nn.Module, Preprocess, Tokenizer]:
    """Model (eval mode, CPU), eval preprocess and tokenizer, built through open_clip.

    Raises:
        FileNotFoundError: if the checkpoint does not exist (run ``moderation.testmodel.train``).
    """
    import open_clip

    if not checkpoint.is_file():
        raise FileNotFoundError(f"test-model checkpoint not found: {checkpoint}")
    register_config()
    model, _, preprocess = open_clip.create_model_and_transforms(
        MODEL_NAME, pretrained=str(checkpoint)
    )
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(MODEL_NAME)


@torch.no_grad()
def encode_images(
    model: torch.nn.Module, preprocess: Preprocess, images: Sequence[Image.Image]
) -> FloatArray:
    """L2-normalised image embeddings, shape (N, D)."""
    out = []
    for start in range(0, len(images), 256):
        batch = torch.stack([preprocess(im) for im in images[start : start + 256]])
        out.append(model.encode_image(batch, normalize=True).double().numpy())  # type: ignore[operator]
    return np.concatenate(out) if out else np.zeros((0, 0))


@torch.no_grad()
def encode_phrases(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    phrases: Sequence[str],
    templates: Sequence[str] = world.TEMPLATES,
) -> FloatArray:
    """Per phrase: L2-normalised mean of the L2-normalised template embeddings, shape (P, D)."""
    captions = [t.format(p) for p in phrases for t in templates]
    emb = model.encode_text(tokenizer(captions), normalize=True).double().numpy()  # type: ignore[operator]
    emb = emb.reshape(len(phrases), len(templates), -1).mean(axis=1)
    result: FloatArray = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    return result


def category_scores(
    images: FloatArray, positives: FloatArray, benign: FloatArray, logit_scale: float
) -> FloatArray:
    """The project's category score: softmax mass on the positive prompts, shape (N,)."""
    logits = logit_scale * np.concatenate([images @ positives.T, images @ benign.T], axis=1)
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    result: FloatArray = p[:, : len(positives)].sum(axis=1)
    return result


def benign_for(policy: dict[str, Any], category: dict[str, Any]) -> list[str]:
    """A category's contrast prompts: its own, then the defaults; deduplicated, minus positives."""
    positives = {p.casefold() for p in category["prompts"]}
    seen: set[str] = set()
    out: list[str] = []
    for prompt in [*category.get("benign_prompts", []), *policy["defaults"]["benign_prompts"]]:
        key = prompt.casefold()
        if key not in seen and key not in positives:
            seen.add(key)
            out.append(prompt)
    return out


def decide(score: float, review: float, block: float) -> str:
    """allow below ``review``, block at or above ``block``, review in between."""
    return "block" if score >= block else "review" if score >= review else "allow"


def evaluate(
    n_per_class: int = 16, seed: int = DEFAULT_SEED, *, checkpoint: Path = CHECKPOINT_PATH
) -> dict[str, Any]:
    """Zero-shot accuracy over the object classes on fresh images.

    Args:
        n_per_class: images per class (64 classes: 16 gives 1,024 images).
        seed: image seed; differs from anything the training stream draws.
        checkpoint: the fp16 checkpoint to load through open_clip.

    Returns:
        ``{"accuracy", "n_images", "n_classes", "per_class", "confusions", "seed"}``.

    Raises:
        FileNotFoundError: if the checkpoint is missing.
    """
    model, preprocess, tokenizer = load_model(checkpoint)
    classes = [(c, s) for c in world.COLOURS for s in world.SHAPES]
    images: list[Image.Image] = []
    labels: list[int] = []
    for k, (colour, shape) in enumerate(classes):
        for i in range(n_per_class):
            sub = int(np.random.default_rng([seed, k, i]).integers(2**31))
            images.append(world.render(colour, shape, seed=sub))
            labels.append(k)
    text = encode_phrases(model, tokenizer, world.OBJECT_PHRASES)
    predicted = (encode_images(model, preprocess, images) @ text.T).argmax(axis=1)
    truth = np.asarray(labels)
    correct = predicted == truth
    per_class = {
        world.OBJECT_PHRASES[k]: float(correct[truth == k].mean()) for k in range(len(classes))
    }
    confusions = Counter(
        f"{world.OBJECT_PHRASES[t]} -> {world.OBJECT_PHRASES[p]}"
        for t, p in zip(truth, predicted, strict=True)
        if t != p
    )
    return {
        "accuracy": float(correct.mean()) if len(correct) else 0.0,
        "n_images": len(images),
        "n_classes": len(classes),
        "per_class": per_class,
        "confusions": dict(confusions.most_common(10)),
        "seed": seed,
    }


def measure_policy(
    n_per_band: int = 60,
    seed: int = DEFAULT_SEED + 1,
    *,
    checkpoint: Path = CHECKPOINT_PATH,
    policy_path: Path = POLICY_PATH,
) -> dict[str, Any]:
    """Score fresh ``sample_images`` bands against the test-world policy.

    Returns, per band, the decision counts and the min/max score of each category, and the
    images whose decision differs from their band.
    """
    model, preprocess, tokenizer = load_model(checkpoint)
    policy = yaml.safe_load(policy_path.read_text())
    templates = policy["defaults"]["templates"]
    scale = float(model.logit_scale.detach().exp())  # type: ignore[operator]
    report: dict[str, Any] = {"logit_scale": scale, "bands": {}}
    bands: tuple[world.Band, ...] = ("block", "allow", "review")
    for band in bands:
        samples = world.sample_images(band, n_per_band, seed)
        emb = encode_images(model, preprocess, [im for im, _ in samples])
        worst = np.zeros(len(samples), dtype=int)
        per_category: dict[str, dict[str, float]] = {}
        for cat in policy["categories"]:
            pos = encode_phrases(model, tokenizer, cat["prompts"], templates)
            ben = encode_phrases(model, tokenizer, benign_for(policy, cat), templates)
            scores = category_scores(emb, pos, ben, scale)
            th = cat["thresholds"]
            ranks = [_DECISION_RANK[decide(float(s), th["review"], th["block"])] for s in scores]
            worst = np.maximum(worst, ranks)
            per_category[cat["id"]] = {"min": float(scores.min()), "max": float(scores.max())}
        names = {v: k for k, v in _DECISION_RANK.items()}
        decisions = [names[int(r)] for r in worst]
        report["bands"][band] = {
            "decisions": dict(Counter(decisions)),
            "scores": per_category,
            "mismatches": [
                lab for (_, lab), d in zip(samples, decisions, strict=True) if d != band
            ],
        }
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; prints the evaluation as JSON."""
    parser = argparse.ArgumentParser(prog="python -m moderation.testmodel.evaluate")
    parser.add_argument("--n-per-class", type=int, default=16)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT_PATH)
    parser.add_argument("--policy", action="store_true", help="also score the policy bands")
    parser.add_argument("--n-per-band", type=int, default=60)
    args = parser.parse_args(argv)
    result = evaluate(args.n_per_class, args.seed, checkpoint=args.checkpoint)
    if args.policy:
        result["policy"] = measure_policy(
            args.n_per_band, args.seed + 1, checkpoint=args.checkpoint
        )
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
