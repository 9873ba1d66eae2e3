"""Scoring + verdict throughput: 10,000 image embeddings against every starter policy.

The embeddings are random unit vectors of ViT-B-32's dimension (512). The policies in
``policies/`` are compiled either with random unit prompt embeddings of the right shape (default;
speed does not depend on the values) or, with ``--text-tower``, with a randomly initialised
ViT-B-32 text tower (architecture ViT-B-32, pretrained None). Prints JSON::

    python bench/scoring.py [--n 10000] [--policies policies] [--text-tower] [--repeats 3]

Random embeddings against random prompts flag many categories per image, so verdict building is
measured close to its worst case; ``flagged_categories_per_image`` says how heavy it was.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from moderation.adapters.policy_files import load_policies
from moderation.core.compiled import CompiledPolicy, ModelIdentity, compile_policy
from moderation.core.decision import verdicts
from moderation.core.scoring import FeatureBatch, Scorer
from moderation.signals import builtin_signals

DIM = 512  # ViT-B-32 embedding width


class RandomTextEncoder:
    """A text encoder with ViT-B-32's output shape whose embedding of a text is a fixed random
    unit vector (seeded by the text), so compiling is instant and reproducible."""

    def __init__(self, dim: int = DIM) -> None:
        self.dim = dim

    @property
    def identity(self) -> ModelIdentity:
        return ModelIdentity(architecture="ViT-B-32", pretrained=None)

    @property
    def logit_scale(self) -> float:
        return 100.0

    def encode_texts(self, texts: Sequence[str]) -> NDArray[np.float32]:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
            v = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
            out[i] = v / np.linalg.norm(v)
        return out


class RandomInitTextTower:
    """ViT-B-32's real text tower with random weights (open_clip, pretrained None)."""

    def __init__(self) -> None:
        import open_clip
        import torch

        torch.manual_seed(0)
        self._torch = torch
        self.model = open_clip.create_model("ViT-B-32", pretrained=None).eval()
        self.tokenizer = open_clip.get_tokenizer("ViT-B-32")

    @property
    def identity(self) -> ModelIdentity:
        return ModelIdentity(architecture="ViT-B-32", pretrained=None)

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp().clamp(max=100).item())

    def encode_texts(self, texts: Sequence[str]) -> NDArray[np.float32]:
        with self._torch.inference_mode():
            features = self.model.encode_text(self.tokenizer(list(texts)), normalize=True)
        return np.asarray(features.float().numpy(), dtype=np.float32)


def random_unit(n: int, dim: int = DIM, seed: int = 0) -> NDArray[np.float32]:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    out: NDArray[np.float32] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def _best(fn: Any, repeats: int) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


def measure_scoring(
    n: int = 10_000,
    *,
    policy_paths: Sequence[str | Path] = ("policies",),
    text_tower: bool = False,
    repeats: int = 3,
) -> dict[str, Any]:
    """Seconds for ``Scorer.score`` and for building the ``Verdict`` list of ``n`` images."""
    policy_set = load_policies(policy_paths)
    policies = policy_set.active()
    started = time.perf_counter()
    encoder: Any = RandomInitTextTower() if text_tower else RandomTextEncoder()
    compiled: list[CompiledPolicy] = [compile_policy(p, encoder) for p in policies]
    compile_s = time.perf_counter() - started
    scorer = Scorer(compiled, builtin_signals().scorer_factories)
    features = FeatureBatch(embeddings=random_unit(n))
    score_s, batch = _best(lambda: scorer.score(features), repeats)
    verdict_s, result = _best(lambda: verdicts(batch), repeats)
    decisions = Counter(v.decision.value for v in result)
    flagged = sum(len(v.categories) for v in result if v.decision.value != "allow")
    return {
        "n_images": n,
        "dim": DIM,
        "policies": [p.id for p in policies],
        "categories": len(scorer.slots),
        "prompts": sum(len(c.positive) + len(c.benign) for p in compiled for c in p.categories),
        "compile_s": round(compile_s, 3),
        "compiled_with": "random-init ViT-B-32 text tower" if text_tower else "random unit",
        "score_s": round(score_s, 4),
        "verdicts_s": round(verdict_s, 4),
        "total_s": round(score_s + verdict_s, 4),
        "images_per_s": round(n / (score_s + verdict_s)),
        "decisions": dict(decisions),
        "flagged_categories_per_image": round(flagged / n, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--policies", nargs="+", default=["policies"])
    parser.add_argument("--text-tower", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(
        json.dumps(
            measure_scoring(
                args.n, policy_paths=args.policies, text_tower=args.text_tower, repeats=args.repeats
            ),
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
