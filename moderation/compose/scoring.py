"""Local scoring (``moderation score``, the policy tools): model, policies and the scoring path,
and ``moderation policy compile``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from moderation.adapters.compile_cache import CompileCache
from moderation.adapters.images import SafeDecoder
from moderation.adapters.policy_files import load_policies
from moderation.compose.banks import build_bank_sync
from moderation.compose.database import database_configured
from moderation.compose.model import ModelChoice, load_model, policy_paths_for
from moderation.compose.policies import (
    bank_names,
    build_policies,
    exemplar_encoders,
    open_policy_files,
)
from moderation.compose.registries import (
    build_signals,
    build_sources,
    image_check,
    media_decoder,
)
from moderation.compose.stores import (
    command_database,
    open_bank_store,
    open_blob_store,
    open_job_store,
)
from moderation.core.compiled import CompiledPolicy
from moderation.pipeline.compile import compile_policy_set
from moderation.pipeline.moderator import Moderator
from moderation.pipeline.policies import ActivePolicies
from moderation.pipeline.sources import ImageSources
from moderation.settings import Settings
from moderation.signals import LoadedBanks

__all__ = ["CompileReport", "Scoring", "build_scoring", "compile_policies"]

log = logging.getLogger(__name__)


@dataclass
class Scoring:
    """What local scoring needs: the model, the policies and the scoring path."""

    settings: Settings
    model: ModelChoice
    policies: ActivePolicies
    moderator: Moderator
    policy_paths: list[Path]

    def compile(self, paths: Sequence[Path]) -> ActivePolicies:
        """Other policy files (a draft, live or shadow) compiled for the same model, to score
        against."""
        return build_policies(
            self.settings, self.model.encoder, self.policies.signals, paths, lone_shadows_live=True
        )

    def sources(self) -> ImageSources:
        """The image sources of the policy tools: local files, S3, HTTP(S) and, with a Redis
        URL configured, the inline images of jobs; and the review evidence kept in the object
        store (a review export names those)."""
        store = open_job_store(self.settings) if self.settings.redis_url else None
        return build_sources(
            self.settings, store, local_files=True, blobs=open_blob_store(self.settings)
        )


@dataclass(frozen=True)
class CompileReport:
    compiled: list[CompiledPolicy]
    cache_hits: int
    texts_encoded: int
    files: list[Path]
    model: ModelChoice


def compile_policies(settings: Settings, paths: Sequence[Path] | None = None) -> CompileReport:
    """Compile policies into the on-disk cache (reused when unchanged), for ``policy compile``.

    Raises:
        ModelUnavailableError, PolicyValidationError, DuplicatePolicyError.
    """
    model = load_model(settings.model, custom_policies=list(paths) if paths is not None else False)
    files = list(paths) if paths is not None else policy_paths_for(settings, model)
    decoder = SafeDecoder(settings.images)
    if paths is None and settings.policy_source == "database":
        policies = open_policy_files(settings).load()  # the policy store's documents
    else:
        policies = load_policies(
            files, signals=build_signals(settings), check_image=image_check(decoder)
        )
    cache = CompileCache(settings.cache_dir)
    before = model.encoder.texts_encoded
    found = compile_policy_set(
        policies,
        cache=cache,
        encoder=model.encoder,
        exemplars_for=exemplar_encoders(model.encoder, decoder),
    )
    return CompileReport(
        compiled=[item.policy for item in found],
        cache_hits=sum(item.cache_hit for item in found),
        files=[item.path for item in found],
        model=model,
        texts_encoded=model.encoder.texts_encoded - before,
    )


def build_scoring(settings: Settings, *, policy_paths: Sequence[Path] | None = None) -> Scoring:
    """Model, policies and the scoring path, for the CLI and the policy tools.

    Raises:
        ModelUnavailableError, PolicyValidationError, DuplicatePolicyError.
    """
    model = load_model(
        settings.model, custom_policies=list(policy_paths) if policy_paths is not None else False
    )
    paths = list(policy_paths) if policy_paths is not None else policy_paths_for(settings, model)
    banks = LoadedBanks()
    policies = build_policies(
        settings,
        model.encoder,
        build_signals(settings, banks, text_encoder=model.encoder),
        paths,
        lone_shadows_live=policy_paths is not None,
    )
    named = bank_names(policies.current.policies.values())
    if named and (settings.redis_url or database_configured(settings)):
        database = command_database(settings)  # banks are read once, into memory
        build_bank_sync(settings, open_bank_store(settings, database=database), banks).load(named)
        if database is not None:
            database.close()
    elif named:
        log.warning(
            "policies use hash banks (%s) but no database or Redis is configured: those "
            "categories match nothing (set MODERATION_DATABASE__URL)",
            ", ".join(sorted(named)),
        )
    moderator = Moderator(
        encoder=model.encoder,
        decoder=media_decoder(settings),
        policies=policies,
        fingerprint_all=settings.banks.hash_every_image,
    )
    return Scoring(
        settings=settings, model=model, policies=policies, moderator=moderator, policy_paths=paths
    )
