"""Compiling policies: each live and shadow policy into its prompt (and exemplar image)
embeddings for one model, through a :class:`~moderation.ports.CompileCache` so that an unchanged
policy is never encoded again (``moderation policy compile``, and every process that loads
policies).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moderation.core.compiled import CompiledPolicy, TextEncoder, compile_policy
from moderation.core.policy import Policy, PolicySet
from moderation.ports import CompileCache

__all__ = ["Compiled", "ExemplarEncoder", "compile_cached", "compile_policy_set"]

#: Encodes a policy's exemplar images on a cache miss: sha256 -> image embedding.
ExemplarEncoder = Callable[[Policy], Mapping[str, np.ndarray]]


@dataclass(frozen=True, slots=True)
class Compiled:
    """One compiled policy, whether it came from the cache, and where the cache keeps it."""

    policy: CompiledPolicy
    cache_hit: bool
    path: Path


def compile_cached(
    policy: Policy,
    *,
    cache: CompileCache,
    encoder: TextEncoder,
    exemplars: ExemplarEncoder | None = None,
) -> tuple[CompiledPolicy, bool]:
    """The compiled ``policy`` and whether it came from ``cache`` (nothing encoded); on a miss
    it is compiled (``exemplars`` encodes its exemplar images, required when it has any) and
    kept.

    Raises:
        PolicyError: an exemplar image cannot be read or decoded.
    """
    cached = cache.load(policy, encoder.identity)
    if cached is not None:
        return cached, True
    images = exemplars(policy) if exemplars is not None else None
    compiled = compile_policy(policy, encoder, images)
    cache.save(compiled)
    return compiled, False


def compile_policy_set(
    policies: PolicySet,
    *,
    cache: CompileCache,
    encoder: TextEncoder,
    exemplars_for: Callable[[str], ExemplarEncoder],
) -> list[Compiled]:
    """Every live and shadow policy of ``policies`` compiled through ``cache``.
    ``exemplars_for(source)`` encodes the exemplar images of the policy file ``source``.

    Raises:
        PolicyError: an exemplar image cannot be read or decoded.
    """
    out = []
    for policy, source in policies.every():
        compiled, hit = compile_cached(
            policy, cache=cache, encoder=encoder, exemplars=exemplars_for(source)
        )
        out.append(Compiled(compiled, hit, cache.path_for(policy, encoder.identity)))
    return out
