"""Loading the configured model, with the fallback policy of
:mod:`moderation.pipeline.model_fallback` (the bundled test model, loudly, when allowed).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from moderation.adapters.clip import ClipEncoder, load_clip
from moderation.exceptions import ModelUnavailableError
from moderation.pipeline.model_fallback import fallback_note, served_policy_paths
from moderation.settings import ImageLimits, ModelSettings, Settings

__all__ = ["ModelChoice", "load_model", "policy_paths_for"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelChoice:
    encoder: ClipEncoder
    is_test_model: bool
    note: str | None  # why the fallback happened, for the operator


def load_model(
    settings: ModelSettings,
    *,
    custom_policies: bool | Sequence[Path] = False,
    limits: ImageLimits | None = None,
    slot: int = 0,
) -> ModelChoice:
    """Load the configured model; fall back (loudly) to the bundled test model when allowed.

    Args:
        settings: which model, where its weights are, device and precision.
        custom_policies: the policy files the caller named (or just True): the fallback note
            then says that the test model scores those, not the test-world policy.
        limits: the image limits (device-decoded JPEGs are held to them too).
        slot: this worker's position on its host (which GPU it takes).

    Raises:
        ModelUnavailableError: the configured weights are unavailable and fallback is off.
    """
    from moderation import testmodel

    try:
        encoder = load_clip(
            settings,
            config_path=testmodel.config_path_for(settings.architecture),
            limits=limits,
            slot=slot,
        )
        return ModelChoice(
            encoder=encoder, note=None, is_test_model=settings.architecture == testmodel.MODEL_NAME
        )
    except ModelUnavailableError as exc:
        if not settings.fallback_to_test_model:
            raise
        note = fallback_note(
            str(exc),
            custom_policies=custom_policies,
            test_model=testmodel.MODEL_NAME,
            test_policy=testmodel.POLICY_PATH,
        )
        encoder = load_clip(
            testmodel.model_settings(settings),
            config_path=testmodel.CONFIG_PATH,
            limits=limits,
            slot=slot,
        )
        return ModelChoice(encoder=encoder, is_test_model=True, note=note)


def policy_paths_for(settings: Settings, model: ModelChoice) -> list[Path]:
    """The policy files a process serves: ``settings.policy_paths``, or the test-world policy
    when the real model was unavailable and the test model stands in."""
    from moderation import testmodel

    return served_policy_paths(
        settings.policy_paths,
        fell_back=model.is_test_model and model.note is not None,
        test_policy=testmodel.POLICY_PATH,
    )
