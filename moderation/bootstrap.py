"""Building the runtime from Settings: model (with the loud test-model fallback), policies,
compiled policies from the cache. Used by every entry point (CLI, API, workers)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from moderation.adapters.clip import ClipEncoder, load_clip
from moderation.adapters.compile_cache import CompileCache
from moderation.compiled import CompiledPolicy
from moderation.exceptions import ModelUnavailableError
from moderation.policy import PolicySet
from moderation.policy_files import load_policies
from moderation.service import Moderator
from moderation.settings import ModelSettings, Settings

__all__ = ["Runtime", "build_runtime", "bundled_model_settings", "load_model"]

log = logging.getLogger(__name__)


def bundled_model_settings(base: ModelSettings | None = None) -> ModelSettings:
    """Model settings of the bundled synthetic test model (same device/precision choice)."""
    from moderation import testmodel

    base = base or ModelSettings()
    return base.model_copy(
        update={
            "architecture": testmodel.MODEL_NAME,
            "pretrained": None,
            "checkpoint": testmodel.CHECKPOINT_PATH,
            "fallback_to_test_model": False,
        }
    )


def _config_path_for(settings: ModelSettings) -> Path | None:
    from moderation import testmodel

    return testmodel.CONFIG_PATH if settings.architecture == testmodel.MODEL_NAME else None


@dataclass
class ModelChoice:
    encoder: ClipEncoder
    is_test_model: bool
    note: str | None  # why the fallback happened, for the operator


def load_model(settings: ModelSettings) -> ModelChoice:
    """Load the configured model; fall back to the test model when allowed.

    Raises:
        ModelUnavailableError: the configured weights are unavailable and fallback is off.
    """
    from moderation import testmodel

    try:
        encoder = load_clip(settings, config_path=_config_path_for(settings))
        return ModelChoice(
            encoder=encoder,
            is_test_model=settings.architecture == testmodel.MODEL_NAME,
            note=None,
        )
    except ModelUnavailableError as exc:
        if not settings.fallback_to_test_model:
            raise
        note = (
            f"{exc}\nFalling back to the bundled synthetic TEST model ({testmodel.MODEL_NAME}): "
            "its world is coloured shapes, so it runs the test-world policy "
            f"({testmodel.POLICY_PATH.name}), not policies/. Verdicts are NOT meaningful for real "
            "content."
        )
        encoder = load_clip(bundled_model_settings(settings), config_path=testmodel.CONFIG_PATH)
        return ModelChoice(encoder=encoder, is_test_model=True, note=note)


@dataclass
class Runtime:
    settings: Settings
    model: ModelChoice
    policies: PolicySet
    moderator: Moderator
    cache_hits: int

    @property
    def compiled(self) -> list[CompiledPolicy]:
        return list(self.moderator.compiled.values())


def policy_paths_for(settings: Settings, model: ModelChoice) -> Sequence[Path]:
    from moderation import testmodel

    if model.is_test_model and model.note is not None:
        return [testmodel.POLICY_PATH]
    return settings.policy_paths


def compile_all(
    policies: PolicySet, encoder: ClipEncoder, cache: CompileCache
) -> tuple[list[CompiledPolicy], int]:
    compiled: list[CompiledPolicy] = []
    hits = 0
    for policy_id in policies:
        item, hit = cache.get_or_compile(policies[policy_id], encoder)
        compiled.append(item)
        hits += int(hit)
    return compiled, hits


def build_runtime(settings: Settings, *, policy_paths: Sequence[Path] | None = None) -> Runtime:
    """Model, policies and compiled policies, ready to score.

    Raises:
        ModelUnavailableError, PolicyValidationError, DuplicatePolicyError.
    """
    model = load_model(settings.model)
    paths = policy_paths if policy_paths is not None else policy_paths_for(settings, model)
    policies = load_policies(paths)
    compiled, hits = compile_all(policies, model.encoder, CompileCache(settings.cache_dir))
    return Runtime(
        settings=settings,
        model=model,
        policies=policies,
        moderator=Moderator(encoder=model.encoder, compiled=compiled),
        cache_hits=hits,
    )
