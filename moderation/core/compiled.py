"""Compiled policies: per category, normalized prompt embeddings ready for a dot product.

Only categories of the prompts signal have prompt embeddings; a category of another signal is
compiled with empty ones (its signal brings its own data). A prompt's embedding is the
L2-normalized mean over the category's templates of the normalized
text embeddings of ``template.format(prompt)`` (prompt ensembling, CLIP paper §3.1.4).

A compiled policy is identified by ``compiled_hash = sha256(policy_hash + model identity)`` so it
can be cached on disk and reused as long as neither the policy nor the model changes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from moderation.core.policy import DEFAULT_SIGNAL, Category, Policy, policy_hash

__all__ = [
    "CompiledCategory",
    "CompiledPolicy",
    "ModelIdentity",
    "TextEncoder",
    "compile_policy",
    "compiled_hash",
]

Embeddings = NDArray[np.float32]


@dataclass(frozen=True, kw_only=True)
class ModelIdentity:
    """What produced an embedding space. Two identities with the same ``id`` are interchangeable."""

    architecture: str
    pretrained: str | None = None
    weights_sha256: str | None = None
    #: What the embeddings were computed in: "fp32" / "bf16" / "fp16" on "cpu" / "cuda". Not part
    #: of :attr:`id` (same weights, same space) but part of a compiled policy's hash: text
    #: embeddings compiled in fp32 on a CPU are not reused by a bf16 GPU worker.
    precision: str | None = None
    device: str | None = None

    @property
    def id(self) -> str:
        if self.weights_sha256:
            return f"{self.architecture}@sha256:{self.weights_sha256[:16]}"
        return f"{self.architecture}/{self.pretrained or 'random'}"

    @property
    def compute(self) -> str:
        """Precision and device, e.g. ``bf16/cuda`` (``unknown`` when not recorded)."""
        return f"{self.precision or 'unknown'}/{self.device or 'unknown'}"

    def to_dict(self) -> dict[str, str | None]:
        return {
            "id": self.id,
            "architecture": self.architecture,
            "pretrained": self.pretrained,
            "weights_sha256": self.weights_sha256,
            "precision": self.precision,
            "device": self.device,
        }


class TextEncoder(Protocol):
    """Anything that turns text into L2-normalized embeddings of one model."""

    @property
    def identity(self) -> ModelIdentity: ...

    @property
    def logit_scale(self) -> float: ...

    def encode_texts(self, texts: Sequence[str]) -> Embeddings: ...


@dataclass(frozen=True, kw_only=True)
class CompiledCategory:
    category: Category
    prompts: tuple[str, ...]
    benign_prompts: tuple[str, ...]
    positive: Embeddings  # (len(prompts), dim), rows L2-normalized; empty for other signals
    benign: Embeddings  # (len(benign_prompts), dim)

    @property
    def id(self) -> str:
        return self.category.id

    @property
    def signal(self) -> str:
        return self.category.signal


@dataclass(frozen=True, kw_only=True)
class CompiledPolicy:
    policy: Policy
    policy_hash: str
    model: ModelIdentity
    logit_scale: float
    categories: tuple[CompiledCategory, ...]
    compiled_hash: str = field(default="")

    @property
    def id(self) -> str:
        return self.policy.id

    @property
    def version(self) -> int:
        return self.policy.version

    @property
    def dim(self) -> int:
        """Width of the prompt embeddings (0 when no category uses the prompts signal)."""
        return max(
            (int(c.positive.shape[1]) for c in self.categories if len(c.positive)), default=0
        )


def compiled_hash(policy: Policy, model: ModelIdentity) -> str:
    """The compiled policy's key: the policy's content, the model and where it computed."""
    return hashlib.sha256(
        f"{policy_hash(policy)}\n{model.id}\n{model.compute}".encode()
    ).hexdigest()


def _normalize(x: Embeddings) -> Embeddings:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    out: Embeddings = (x / np.maximum(norms, 1e-12)).astype(np.float32)
    return out


def compile_policy(policy: Policy, encoder: TextEncoder) -> CompiledPolicy:
    """Encode every (prompt, template) pair of ``policy`` once and build the compiled form."""
    wanted: dict[tuple[str, tuple[str, ...]], None] = {}
    plans: list[tuple[Category, tuple[str, ...], list[str], list[str]]] = []
    for category in policy.categories:
        if category.signal != DEFAULT_SIGNAL:
            plans.append((category, (), [], []))
            continue
        templates = tuple(policy.templates_for(category))
        benign = policy.benign_for(category)
        plans.append((category, templates, list(category.prompts), benign))
        for prompt in [*category.prompts, *benign]:
            wanted[(prompt, templates)] = None

    texts: list[str] = []
    for prompt, templates in wanted:
        texts.extend(t.format(prompt) for t in templates)
    encoded = (
        _normalize(np.asarray(encoder.encode_texts(texts), dtype=np.float32))
        if texts
        else np.zeros((0, 0), np.float32)
    )
    width = encoded.shape[1]

    table: dict[tuple[str, tuple[str, ...]], Embeddings] = {}
    offset = 0
    for prompt, templates in wanted:
        block = encoded[offset : offset + len(templates)]
        offset += len(templates)
        table[(prompt, templates)] = _normalize(block.mean(axis=0, keepdims=True))[0]

    def stacked(prompts: list[str], templates: tuple[str, ...]) -> Embeddings:
        if not prompts:
            return np.zeros((0, width), np.float32)
        return np.stack([table[(p, templates)] for p in prompts])

    categories = tuple(
        CompiledCategory(
            category=category,
            prompts=tuple(prompts),
            benign_prompts=tuple(benign),
            positive=stacked(prompts, templates),
            benign=stacked(benign, templates),
        )
        for category, templates, prompts, benign in plans
    )
    return CompiledPolicy(
        policy=policy,
        policy_hash=policy_hash(policy),
        model=encoder.identity,
        logit_scale=float(encoder.logit_scale),
        categories=categories,
        compiled_hash=compiled_hash(policy, encoder.identity),
    )
