"""The policies a process serves: loaded from their files, compiled for its model through the
on-disk cache (:mod:`moderation.pipeline.compile`), hot-reloadable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from moderation.adapters.compile_cache import CompileCache
from moderation.adapters.file_source import read_file
from moderation.adapters.images import SafeDecoder
from moderation.adapters.policy_files import exemplar_path, load_policies, policy_files_hash
from moderation.compose.registries import image_check
from moderation.core.compiled import CompiledPolicy
from moderation.core.policy import Policy, PolicySet
from moderation.pipeline.compile import ExemplarEncoder, compile_policy_set
from moderation.pipeline.exemplars import ExemplarImages
from moderation.pipeline.policies import ActivePolicies
from moderation.ports import (
    Encoder,
    ImageDecoder,
)
from moderation.settings import Settings
from moderation.signals import Signals

__all__ = ["bank_names", "build_policies", "exemplar_encoders"]

log = logging.getLogger(__name__)


def exemplar_encoders(encoder: Encoder, decoder: ImageDecoder) -> Callable[[str], ExemplarEncoder]:
    """Per policy file (its source path), what encodes its exemplar images: read from beside
    the file, decoded with the untrusted-image limits, encoded by ``encoder``."""

    def for_source(source: str) -> ExemplarEncoder:
        base = Path(source).parent

        def read(path: str) -> bytes:
            return read_file(exemplar_path(base, path))

        return ExemplarImages(encoder=encoder, decoder=decoder, read=read)

    return for_source


def build_policies(
    settings: Settings,
    encoder: Encoder,
    signals: Signals,
    paths: Sequence[Path],
    *,
    lone_shadows_live: bool = False,
) -> ActivePolicies:
    """The policies under ``paths`` (live and shadow), compiled through the on-disk cache,
    hot-reloadable. ``lone_shadows_live``: a shadow version without a live one is served as
    live (the policy tools evaluate a candidate file whatever its mode).

    Raises:
        PolicyValidationError, DuplicatePolicyError, PolicyVersionConflict, UnknownSignalError.
    """
    cache = CompileCache(settings.cache_dir)
    names = signals  # names and, for classifiers, their labels
    decoder = SafeDecoder(settings.images)

    exemplars_for = exemplar_encoders(encoder, decoder)

    def compile_all(policies: PolicySet) -> list[CompiledPolicy]:
        found = compile_policy_set(
            policies, cache=cache, encoder=encoder, exemplars_for=exemplars_for
        )
        return [item.policy for item in found]

    return ActivePolicies(
        load=lambda: load_policies(paths, signals=names, check_image=image_check(decoder)),
        compile=compile_all,
        fingerprint=lambda: policy_files_hash(paths),
        signals=signals,
        lone_shadows_live=lone_shadows_live,
    )


def bank_names(policies: Iterable[Policy]) -> set[str]:
    """The banks that categories of ``policies`` name."""
    return {c.bank.name for p in policies for c in p.categories if c.bank is not None}
