"""Compiled policies: per category, normalized prompt embeddings ready for a dot product.

Only categories of the prompts signal have prompt embeddings, and text categories with text
prompts (``text.prompts``, encoded as written, without templates); a category of another signal
is compiled with empty ones (its signal brings its own data). A prompt's embedding is the
L2-normalized mean over the category's templates of the normalized
text embeddings of ``template.format(prompt)`` (prompt ensembling, CLIP paper §3.1.4).

A category's exemplar images (``exemplars.positive`` / ``exemplars.benign``) are compiled to
their L2-normalized image embeddings (encoded by the caller: the core does no image work) and
scored next to the prompts (:mod:`moderation.signals.prompts`).

A compiled policy is identified by ``compiled_hash = sha256(policy_hash + model identity)`` so it
can be cached on disk and reused as long as neither the policy nor the model changes; the policy
hash covers each exemplar's sha256, so a changed image recompiles the policy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from moderation.core.policy import DEFAULT_SIGNAL, TEXT_SIGNAL, Category, Policy, policy_hash
from moderation.exceptions import PolicyError

__all__ = [
    "CompiledCategory",
    "CompiledPolicy",
    "ModelIdentity",
    "TextEncoder",
    "compile_policy",
    "compiled_hash",
    "exemplar_keys",
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
    #: Exemplar image paths (as written in the policy) and their image embeddings.
    exemplars: tuple[str, ...] = ()
    benign_exemplars: tuple[str, ...] = ()
    exemplar_positive: Embeddings = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    exemplar_benign: Embeddings = field(default_factory=lambda: np.zeros((0, 0), np.float32))

    @property
    def exemplar_radius(self) -> float:
        block = self.category.exemplars
        return block.radius if block is not None else 0.0

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


def exemplar_keys(policy: Policy) -> dict[str, str]:
    """Every exemplar image of ``policy``: sha256 -> path as written (the first one, for a
    duplicate).

    Raises:
        PolicyError: an exemplar's sha256 is missing (the policy was not read by the loader).
    """
    out: dict[str, str] = {}
    for category in policy.categories:
        for exemplar in category.exemplars.all if category.exemplars else []:
            if exemplar.sha256 is None:
                raise PolicyError(
                    f"policy {policy.id}: exemplar {exemplar.path} has no sha256 (load policies "
                    "with the policy loader, which reads the images)",
                    code="policy_exemplar_unresolved",
                )
            out.setdefault(exemplar.sha256, exemplar.path)
    return out


def compile_policy(
    policy: Policy,
    encoder: TextEncoder,
    exemplar_embeddings: Mapping[str, Embeddings] | None = None,
) -> CompiledPolicy:
    """Encode every (prompt, template) pair of ``policy`` once and build the compiled form.

    Args:
        policy: the policy.
        encoder: the text tower of the model.
        exemplar_embeddings: sha256 -> L2-normalized image embedding of every exemplar image of
            the policy (see :func:`exemplar_keys`).

    Raises:
        PolicyError: an exemplar's embedding is missing.
    """
    images = exemplar_embeddings or {}
    wanted: dict[tuple[str, tuple[str, ...]], None] = {}
    plans: list[tuple[Category, tuple[str, ...], list[str], list[str]]] = []
    for category in policy.categories:
        if category.signal == TEXT_SIGNAL and category.text is not None and category.text.prompts:
            # Text rules' prompts describe text, not images: encoded as written, no templates.
            text = category.text
            plans.append((category, ("{}",), list(text.prompts), list(text.benign_prompts)))
            for prompt in [*text.prompts, *text.benign_prompts]:
                wanted[(prompt, ("{}",))] = None
            continue
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

    def exemplar_rows(category: Category, kind: str) -> tuple[tuple[str, ...], Embeddings]:
        block = category.exemplars
        items = list(getattr(block, kind)) if block is not None else []
        if not items:
            return (), np.zeros((0, width), np.float32)
        rows = []
        for item in items:
            found = images.get(item.sha256 or "")
            if found is None:
                raise PolicyError(
                    f"policy {policy.id}: no image embedding for exemplar {item.path}",
                    code="policy_exemplar_unresolved",
                )
            rows.append(np.asarray(found, np.float32).reshape(-1))
        return tuple(item.path for item in items), _normalize(np.stack(rows))

    categories = []
    for category, templates, prompts, benign in plans:
        names, positive_images = exemplar_rows(category, "positive")
        benign_names, benign_images = exemplar_rows(category, "benign")
        categories.append(
            CompiledCategory(
                category=category,
                prompts=tuple(prompts),
                benign_prompts=tuple(benign),
                positive=stacked(prompts, templates),
                benign=stacked(benign, templates),
                exemplars=names,
                benign_exemplars=benign_names,
                exemplar_positive=positive_images,
                exemplar_benign=benign_images,
            )
        )
    return CompiledPolicy(
        policy=policy,
        policy_hash=policy_hash(policy),
        model=encoder.identity,
        logit_scale=float(encoder.logit_scale),
        categories=tuple(categories),
        compiled_hash=compiled_hash(policy, encoder.identity),
    )
