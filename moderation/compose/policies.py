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
from moderation.adapters.policy_files import (
    PolicyFolder,
    StoredPolicyFolder,
    exemplar_key,
    exemplar_path,
    load_policies,
    policy_files_hash,
)
from moderation.adapters.postgres.policies import PostgresPolicyStore
from moderation.adapters.postgres.pool import ConnectionPool
from moderation.compose.registries import build_signals, image_check
from moderation.compose.stores import command_database, open_audit, open_blob_store
from moderation.core.compiled import CompiledPolicy
from moderation.core.policy import Policy, PolicySet
from moderation.exceptions import ConfigurationError
from moderation.pipeline.compile import ExemplarEncoder, compile_policy_set
from moderation.pipeline.exemplars import ExemplarImages
from moderation.pipeline.policies import ActivePolicies
from moderation.pipeline.policy_publish import Published, publish_policies
from moderation.ports import (
    BlobStore,
    Encoder,
    ImageDecoder,
    PolicyFiles,
)
from moderation.settings import Settings
from moderation.signals import Signals

__all__ = [
    "bank_names",
    "build_policies",
    "exemplar_encoders",
    "open_policy_files",
    "publish_policy_files",
    "stored_policies",
]

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
    stored: StoredPolicyFolder | None = None,
) -> ActivePolicies:
    """The policies under ``paths`` (live and shadow), compiled through the on-disk cache,
    hot-reloadable. ``lone_shadows_live``: a shadow version without a live one is served as
    live (the policy tools evaluate a candidate file whatever its mode). ``stored``: serve the
    policy store's documents instead of ``paths`` (``policy_source: database``), reloaded
    when the store's version moves.

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

    if stored is not None:
        return ActivePolicies(
            load=stored.load,
            compile=compile_all,
            fingerprint=stored.fingerprint,
            signals=signals,
            lone_shadows_live=lone_shadows_live,
        )
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


def stored_policies(
    settings: Settings,
    database: ConnectionPool,
    blobs: BlobStore,
    signals: Signals,
    *,
    actor: str = "promotion",
) -> StoredPolicyFolder:
    """The policy store (``policy_source: database``) as policy files: documents in
    PostgreSQL, exemplar images in the object store, written under the cache folder."""
    return StoredPolicyFolder(
        PostgresPolicyStore(database),
        blobs,
        settings.cache_dir / "policy-store",
        signals=signals,
        check_image=image_check(SafeDecoder(settings.images)),
        actor=actor,
    )


def _store_database(settings: Settings) -> ConnectionPool:
    database = command_database(settings)
    if database is None:
        raise ConfigurationError(
            "policy_source is database but no database is configured (MODERATION_DATABASE__URL)"
        )
    return database


def open_policy_files(settings: Settings, *, actor: str = "promotion") -> PolicyFiles:
    """The policies ``moderation policy promote`` changes: the files under
    ``settings.policy_paths``, or the policy store (``policy_source: database``).

    Raises:
        ConfigurationError: the policy store is selected without a database.
        DatabaseUnavailable, MigrationError: the database cannot be reached or migrated.
    """
    signals = build_signals(settings)
    if settings.policy_source == "database":
        return stored_policies(
            settings, _store_database(settings), open_blob_store(settings), signals, actor=actor
        )
    return PolicyFolder(
        settings.policy_paths,
        signals=signals,
        check_image=image_check(SafeDecoder(settings.images)),
    )


def publish_policy_files(
    settings: Settings, paths: Sequence[Path], *, actor: str
) -> list[Published]:
    """Publish the policy files under ``paths`` to the policy store (``moderation policy
    publish``): validated as ``policy check`` does, exemplar images to the object store.

    Raises:
        ConfigurationError: no database is configured.
        PolicyValidationError, DuplicatePolicyError, QualityError: see
            :func:`~moderation.pipeline.policy_publish.publish_policies`.
    """
    policies = load_policies(
        paths,
        signals=build_signals(settings),
        check_image=image_check(SafeDecoder(settings.images)),
    )
    blobs = open_blob_store(settings)
    audit = open_audit(settings)
    try:
        return publish_policies(
            policies,
            read_text=lambda source: Path(source).read_text(encoding="utf-8"),
            read_exemplar=lambda source, path: read_file(exemplar_path(Path(source).parent, path)),
            exemplar_key=exemplar_key,
            store=PostgresPolicyStore(_store_database(settings)),
            blobs=blobs,
            actor=actor,
            audit=audit,
        )
    finally:
        audit.close()
