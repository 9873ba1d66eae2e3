"""Held-out evaluation of the test model: ``moderation testmodel eval`` (and
``python -m moderation.testmodel.evaluate``).

The same code path as ``moderation eval``: the images go through
:func:`moderation.pipeline.evaluate.score_dataset` (safe decode, the model's preprocessing, the
image tower, the prompts signal) and the metrics through :func:`moderation.pipeline.evaluate.
evaluate`. Zero-shot accuracy is the evaluation of a generated policy with one category per object
class of the world, each contrasting its phrase with every other phrase: a category's score is
then the softmax probability of its class, so the highest-scoring category is the zero-shot
prediction, and the report's top-1 accuracy is the zero-shot accuracy. Images are FRESH: drawn
with a seed the training stream never uses.

``--policy`` also evaluates the test-world policy (``assets/testworld.yaml``) at its hand-set
thresholds on a fresh labelled set (:func:`~moderation.testmodel.world.labelled_images`).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from moderation.testmodel import CHECKPOINT_PATH, POLICY_PATH, world
from moderation.testmodel.samples import encoded

__all__ = [
    "DEFAULT_SEED",
    "evaluate",
    "evaluate_policy",
    "main",
    "write_dataset",
    "zero_shot_policy",
]

DEFAULT_SEED = 777_001  # training draws images from seeds (0, step, i); these never collide
ZERO_SHOT_ID = "zero-shot"


def _category_id(phrase: str) -> str:
    return "_".join(phrase.split()[1:])  # "an orange star" -> "orange_star"


def zero_shot_policy() -> Any:
    """A policy with one category per object class of the world; every class phrase (and the
    empty backgrounds) is the contrast set of every other class."""
    from moderation.core.policy import Policy

    return Policy.model_validate(
        {
            "id": ZERO_SHOT_ID,
            "version": 1,
            "description": "Zero-shot classification of the test world's object classes.",
            "defaults": {"templates": list(world.TEMPLATES), "benign_prompts": list(world.PHRASES)},
            "categories": [
                {
                    "id": _category_id(phrase),
                    "description": f"The class {phrase!r}.",
                    "severity": "low",
                    "prompts": [phrase],
                    "thresholds": {"review": 0.5, "block": 0.9},
                }
                for phrase in world.OBJECT_PHRASES
            ],
        }
    )


def _scoring(checkpoint: Path, policy: Any) -> tuple[Any, Any]:
    """The scoring path (moderator, policies in service) of the test model and one policy."""
    from moderation import testmodel
    from moderation.adapters.images import SafeDecoder
    from moderation.compose.model import load_model
    from moderation.compose.registries import build_signals
    from moderation.core.compiled import compile_policy
    from moderation.core.policy import PolicySet
    from moderation.pipeline.moderator import Moderator
    from moderation.pipeline.policies import ActivePolicies
    from moderation.settings import ImageLimits, Settings

    model = testmodel.model_settings().model_copy(update={"checkpoint": checkpoint})
    settings = Settings(model=model)
    encoder = load_model(settings.model).encoder
    policies = ActivePolicies(
        load=lambda: PolicySet([(policy, "<generated>")]),
        compile=lambda found: [compile_policy(p, encoder) for p in found.values()],
        fingerprint=lambda: policy.id,
        signals=build_signals(settings),
    )
    moderator = Moderator(encoder=encoder, decoder=SafeDecoder(ImageLimits()), policies=policies)
    return moderator, policies


def _run(
    images: Sequence[tuple[bytes, list[str]]],
    moderator: Any,
    policies: Any,
    *,
    on_done: Callable[[int], None] | None = None,
    resamples: int = 0,
) -> Any:
    """Score ``(bytes, labels)`` images and evaluate them (the ``moderation eval`` use cases)."""
    from moderation.core.evaluation import Dataset, LabelledItem
    from moderation.pipeline.evaluate import evaluate as evaluate_use_case
    from moderation.pipeline.evaluate import score_dataset

    items = [
        LabelledItem(image=f"mem://{i}", positive=frozenset(labels), name=str(i))
        for i, (_, labels) in enumerate(images)
    ]
    by_ref = {item.image: data for item, (data, _) in zip(items, images, strict=True)}
    dataset = Dataset(items=items, source="<fresh test-world images>", kind="labels")
    scored = score_dataset(dataset, moderator, by_ref.__getitem__, on_done=on_done)
    return evaluate_use_case(scored, policies.current, dataset=dataset, resamples=resamples)


def evaluate(
    n_per_class: int = 16,
    seed: int = DEFAULT_SEED,
    *,
    checkpoint: Path = CHECKPOINT_PATH,
    on_done: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Zero-shot accuracy over the object classes on fresh images.

    Args:
        n_per_class: images per class (64 classes: 16 gives 1,024 images).
        seed: image seed; differs from anything the training stream draws.
        checkpoint: the fp16 checkpoint to load through open_clip.
        on_done: progress callback (images finished).

    Returns:
        ``{"accuracy", "n_images", "n_classes", "per_class", "confusions", "seed"}``.

    Raises:
        ModelUnavailableError: the checkpoint is missing.
    """
    policy = zero_shot_policy()
    moderator, policies = _scoring(checkpoint, policy)
    images: list[tuple[bytes, list[str]]] = []
    for k, phrase in enumerate(world.OBJECT_PHRASES):
        colour, shape = phrase.split()[1:]
        for i in range(n_per_class):
            sub = int(np.random.default_rng([seed, k, i]).integers(2**31))
            images.append((encoded(world.render(colour, shape, seed=sub)), [_category_id(phrase)]))
    report = _run(images, moderator, policies, on_done=on_done)
    accuracy = report.accuracy
    phrases = {f"{ZERO_SHOT_ID}/{_category_id(p)}": p for p in world.OBJECT_PHRASES}
    return {
        "accuracy": accuracy.top1 if accuracy else 0.0,
        "n_images": len(images),
        "n_classes": len(world.OBJECT_PHRASES),
        "per_class": {phrases[k]: v for k, v in (accuracy.per_class if accuracy else {}).items()},
        "confusions": {
            " -> ".join(phrases[part] for part in k.split(" -> ")): v
            for k, v in (accuracy.confusions if accuracy else {}).items()
        },
        "seed": seed,
    }


def evaluate_policy(
    n: int = 600,
    seed: int = DEFAULT_SEED + 1,
    *,
    checkpoint: Path = CHECKPOINT_PATH,
    policy_path: Path = POLICY_PATH,
    on_done: Callable[[int], None] | None = None,
) -> Any:
    """The test-world policy at its thresholds on ``n`` fresh labelled images: an
    :class:`~moderation.pipeline.evaluate.EvaluationReport`."""
    from moderation.adapters.policy_files import load_policy_file

    moderator, policies = _scoring(checkpoint, load_policy_file(policy_path))
    images = [(encoded(item.image), list(item.labels)) for item in world.labelled_images(n, seed)]
    return _run(images, moderator, policies, on_done=on_done, resamples=400)


def write_dataset(folder: Path, n: int, seed: int) -> Path:
    """Write ``n`` fresh labelled test-world images as PNG files plus ``labels.csv`` (columns
    ``image``, ``labels``, ``description``) into ``folder``: a dataset for ``moderation eval``
    and ``moderation calibrate``. Returns the labels file."""
    import csv

    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    labels = folder / "labels.csv"
    with labels.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "labels", "description"])
        for i, item in enumerate(world.labelled_images(n, seed)):
            name = f"images/{i:05d}.png"
            (folder / name).write_bytes(encoded(item.image))
            writer.writerow([name, ";".join(item.labels), item.description])
    return labels


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; prints the evaluation as JSON."""
    parser = argparse.ArgumentParser(prog="python -m moderation.testmodel.evaluate")
    parser.add_argument("--n-per-class", type=int, default=16)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT_PATH)
    args = parser.parse_args(argv)
    result = evaluate(args.n_per_class, args.seed, checkpoint=args.checkpoint)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
