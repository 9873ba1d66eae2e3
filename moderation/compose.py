"""Composition roots: one per process kind, built from :class:`~moderation.settings.Settings`.

::

    build_scoring(settings)   model + policies + moderator           (CLI: score, policy tools)
    build_api(settings)       job store, queue, submit use case,      (moderation api, demo)
                              outcomes, review queue, audit log
    build_worker(settings)    the above + micro-batcher, processor,   (workers/tasks.py)
                              maintenance thread, callback delivery

This is the only module that knows which adapter implements which port. Every process that
decides anything, or records a human decision, has an audit log; one that cannot open its audit
log refuses to start (:class:`~moderation.exceptions.AuditError`). Outside development mode, the
API and the workers refuse to start with empty, short or development-default secrets or API keys
(:class:`~moderation.exceptions.InsecureSettingsError`, :meth:`Settings.enforce_security`).

To add an image source: write ``adapters/<name>_source.py`` and register it in
:func:`build_sources`. To add a signal: write ``signals/<name>.py`` and register it in
:func:`build_signals`.

Hash banks: workers load every bank before their first job and keep them current
(:class:`~moderation.pipeline.bank_sync.BankSync` on the maintenance thread); the API carries out
reviewers' "add to bank" requests; local scoring loads the banks once when Redis is configured.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from moderation.adapters.audit_log import AuditLog
from moderation.adapters.celery_queue import CeleryQueue
from moderation.adapters.clip import ClipEncoder, load_clip
from moderation.adapters.compile_cache import CompileCache
from moderation.adapters.file_source import FileSource, read_file
from moderation.adapters.http_callbacks import CallbackDelivery
from moderation.adapters.http_source import HttpSource
from moderation.adapters.images import SafeDecoder
from moderation.adapters.local_audit import LocalSegmentStore
from moderation.adapters.local_blobs import LocalBlobStore
from moderation.adapters.passwords import verify_password
from moderation.adapters.policy_files import exemplar_path, load_policies, policy_files_hash
from moderation.adapters.redis_banks import RedisBankStore
from moderation.adapters.redis_deliveries import RedisDeliveryLog
from moderation.adapters.redis_embeddings import RedisEmbeddingStore
from moderation.adapters.redis_jobs import RedisJobStore
from moderation.adapters.redis_limits import RedisRateLimiter
from moderation.adapters.redis_review import RedisReviewQueue
from moderation.adapters.redis_reviewers import RedisReviewerStore
from moderation.adapters.redis_sessions import RedisLoginThrottle, RedisReviewerSessions
from moderation.adapters.redis_workers import RedisWorkerRegistry
from moderation.adapters.s3_audit import S3SegmentStore
from moderation.adapters.s3_blobs import S3BlobStore
from moderation.adapters.s3_source import S3Source
from moderation.adapters.support.prepare_pool import PreparePool
from moderation.adapters.support.slots import claim_slot
from moderation.adapters.support.ssrf import ANY_ADDRESS, check_url
from moderation.core.admission import Tenant
from moderation.core.compiled import CompiledPolicy
from moderation.core.policy import Policy, PolicySet
from moderation.core.review import pseudonym
from moderation.core.reviewers import LoginPolicy
from moderation.exceptions import ModelUnavailableError, QueueUnavailable
from moderation.metrics import metrics
from moderation.pipeline.bank_sync import BankSync
from moderation.pipeline.banks import BankService
from moderation.pipeline.batching import BatchStats, MicroBatcher
from moderation.pipeline.exemplars import ExemplarImages
from moderation.pipeline.history import EmbeddingHistory
from moderation.pipeline.maintenance import WorkerMaintenance
from moderation.pipeline.moderator import Moderator
from moderation.pipeline.outcomes import Outcomes
from moderation.pipeline.policies import ActivePolicies
from moderation.pipeline.process import Processor
from moderation.pipeline.publishing import CoalescingPublisher
from moderation.pipeline.signin import ReviewerAuth
from moderation.pipeline.sources import ImageSources, InlineSource
from moderation.pipeline.submit import PolicyCatalog, Submitter
from moderation.ports import (
    AuditSink,
    BlobStore,
    CallbackSender,
    DeliveryLog,
    EmbeddingStore,
    ImageDecoder,
    JobStore,
    LoginThrottle,
    RateLimiter,
    ReviewerSessions,
    ReviewerStore,
    ReviewQueue,
    SegmentStore,
    TaskPublisher,
    WorkerRegistry,
)
from moderation.settings import ImageLimits, ModelSettings, ReviewSettings, Settings
from moderation.signals import LoadedBanks, Signals, builtin_signals

__all__ = [
    "ApiProcess",
    "ModelChoice",
    "Scoring",
    "WorkerProcess",
    "bank_names",
    "build_api",
    "build_banks",
    "build_policies",
    "build_reviewer_auth",
    "build_scoring",
    "build_signals",
    "build_sources",
    "build_tenants",
    "build_worker",
    "compile_policies",
    "load_model",
    "open_audit",
    "open_bank_store",
    "open_blob_store",
    "open_delivery_log",
    "open_embedding_store",
    "open_job_store",
    "open_queue",
    "open_review_queue",
    "open_reviewer_sessions",
    "open_reviewers",
    "open_segment_store",
    "open_worker_registry",
]

log = logging.getLogger(__name__)


# --- the model ---------------------------------------------------------------------------------


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
        if custom_policies:
            named = (
                ""
                if custom_policies is True
                else " (" + ", ".join(str(p) for p in custom_policies) + ")"
            )
            scored = f"the policies you named{named}, although it knows nothing but coloured shapes"
        else:
            scored = (
                f"the test-world policy ({testmodel.POLICY_PATH.name}) instead of the "
                "configured policies"
            )
        note = (
            f"{exc}\nFalling back to the bundled synthetic TEST model ({testmodel.MODEL_NAME}): "
            f"its world is coloured shapes, and it scores {scored}. Verdicts are NOT meaningful "
            "for real content."
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

    if model.is_test_model and model.note is not None:
        return [testmodel.POLICY_PATH]
    return list(settings.policy_paths)


# --- registries --------------------------------------------------------------------------------


def build_signals(settings: Settings, banks: LoadedBanks | None = None) -> Signals:
    """Every signal this process knows (the policy files may name any of them); hash-bank
    categories match against ``banks`` (none: they match nothing)."""
    return builtin_signals(banks)


def build_sources(
    settings: Settings, store: JobStore | None, *, local_files: bool = False
) -> ImageSources:
    """Every image source, by scheme (inline bytes need the job store). ``local_files`` adds
    ``file://`` (never public: only the policy tools of the CLI read local datasets)."""
    sources: list[Any] = [HttpSource(settings), S3Source(settings)]
    if store is not None:
        sources.append(InlineSource(store))
    if local_files:
        sources.append(FileSource(max_bytes=settings.images.max_bytes))
    return ImageSources(sources)


def image_check(decoder: ImageDecoder) -> Callable[[bytes], None]:
    """Checks that bytes decode (policy files' exemplar images)."""

    def check(data: bytes) -> None:
        decoder.decode(data)

    return check


def compile_policy_set(
    policies: PolicySet,
    *,
    cache: CompileCache,
    encoder: ClipEncoder,
    decoder: ImageDecoder,
) -> list[tuple[CompiledPolicy, bool, Path]]:
    """Every live and shadow policy of ``policies`` compiled through ``cache`` (exemplar images
    encoded on a miss): (compiled, from cache, cache file)."""
    out = []
    for policy, source in policies.every():
        images = ExemplarImages(
            encoder=encoder, decoder=decoder, read=_exemplar_reader(Path(source).parent)
        )
        compiled, hit = cache.get_or_compile(policy, encoder, images)
        out.append((compiled, hit, cache.path_for(policy, encoder.identity)))
    return out


def _exemplar_reader(base: Path) -> Callable[[str], bytes]:
    def read(path: str) -> bytes:
        return read_file(exemplar_path(base, path))

    return read


def build_policies(
    settings: Settings,
    encoder: ClipEncoder,
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
    names = set(signals)
    decoder = SafeDecoder(settings.images)

    def compile_all(policies: PolicySet) -> list[CompiledPolicy]:
        found = compile_policy_set(policies, cache=cache, encoder=encoder, decoder=decoder)
        return [compiled for compiled, _, _ in found]

    return ActivePolicies(
        load=lambda: load_policies(paths, signals=names, check_image=image_check(decoder)),
        compile=compile_all,
        fingerprint=lambda: policy_files_hash(paths),
        signals=signals,
        lone_shadows_live=lone_shadows_live,
    )


def open_segment_store(settings: Settings) -> SegmentStore:
    """The configured audit store: S3 when ``settings.audit.bucket`` is set, else a folder."""
    if settings.audit.bucket:
        return S3SegmentStore(settings.s3, settings.audit)
    return LocalSegmentStore(settings.audit.local_dir, prefix=settings.audit.prefix)


def open_blob_store(settings: Settings) -> BlobStore:
    """The object store for bytes: S3 when ``settings.blobs.bucket`` is set, else a folder."""
    if settings.blobs.bucket:
        return S3BlobStore(settings.s3, settings.blobs)
    return LocalBlobStore(settings.blobs.local_dir)


def open_audit(settings: Settings, *, store: SegmentStore | None = None) -> AuditLog:
    """This process's audit log (its own chain, spool and uploader).

    Raises:
        AuditError: the spool cannot be opened: the process must not start.
    """
    return AuditLog.open(store or open_segment_store(settings), settings.audit)


def check_callback_url(url: str) -> None:
    """Scheme and syntax of a callback URL (addresses are vetted when it is called).

    Raises:
        UrlRefusedError: not an http(s) URL.
    """
    check_url(url, ANY_ADDRESS)


def _redis_url(settings: Settings) -> str:
    if not settings.redis_url:
        raise QueueUnavailable(
            "no Redis URL configured: set MODERATION_REDIS_URL (or run "
            "`moderation demo`, which starts an embedded server)"
        )
    return settings.redis_url


def open_job_store(settings: Settings) -> RedisJobStore:
    """The job store at ``settings.redis_url``.

    Raises:
        QueueUnavailable: no Redis URL configured.
    """
    return RedisJobStore.from_url(_redis_url(settings), settings.queue)


def open_delivery_log(settings: Settings) -> RedisDeliveryLog:
    """Delivery counts, the pending index and the dead letters at ``settings.redis_url``.

    Raises:
        QueueUnavailable: no Redis URL configured.
    """
    return RedisDeliveryLog.from_url(_redis_url(settings), settings.queue)


def open_worker_registry(settings: Settings) -> RedisWorkerRegistry:
    """Worker heartbeats and named locks at ``settings.redis_url``.

    Raises:
        QueueUnavailable: no Redis URL configured.
    """
    return RedisWorkerRegistry.from_url(_redis_url(settings), settings.queue)


def open_queue(settings: Settings) -> CeleryQueue:
    """The broker (publisher of job and callback messages).

    Raises:
        QueueUnavailable: no Redis URL configured.
    """
    return CeleryQueue(settings)


def open_embedding_store(settings: Settings) -> EmbeddingStore:
    """The stored-embeddings history (``embeddings.redis_url``, else ``redis_url``).

    Raises:
        QueueUnavailable: no Redis URL configured.
    """
    url = settings.embeddings.redis_url or _redis_url(settings)
    return RedisEmbeddingStore.from_url(url, settings.embeddings)


def open_bank_store(settings: Settings) -> RedisBankStore:
    """The hash banks at ``settings.redis_url``.

    Raises:
        QueueUnavailable: no Redis URL configured.
    """
    return RedisBankStore.from_url(_redis_url(settings), prefix=settings.banks.key_prefix)


def build_banks(settings: Settings, store: RedisBankStore | None = None) -> BankService:
    """The bank use cases (``moderation bank``, reviewers' additions).

    Raises:
        QueueUnavailable: no Redis URL configured (and no store given).
    """
    b = settings.banks
    return BankService(
        store or open_bank_store(settings),
        flat_max=b.flat_max,
        review_banks=b.review_banks,
        request_ttl_s=b.request_ttl_s,
    )


def _bank_sync(settings: Settings, store: RedisBankStore, banks: LoadedBanks) -> BankSync:
    b = settings.banks
    return BankSync(
        store,
        banks,
        flat_max=b.flat_max,
        rebuild_after=b.rebuild_after,
        cache_size=b.metadata_cache,
    )


def bank_names(policies: Iterable[Policy]) -> set[str]:
    """The banks that categories of ``policies`` name."""
    return {c.bank.name for p in policies for c in p.categories if c.bank is not None}


def open_review_queue(settings: Settings) -> RedisReviewQueue:
    """Raises:
    QueueUnavailable: no Redis URL configured.
    """
    return RedisReviewQueue.from_url(_redis_url(settings), settings.review)


def open_reviewers(settings: Settings) -> RedisReviewerStore:
    """Raises:
    QueueUnavailable: no Redis URL configured.
    """
    return RedisReviewerStore.from_url(_redis_url(settings), prefix=settings.review.key_prefix)


def open_reviewer_sessions(settings: Settings) -> RedisReviewerSessions:
    """Raises:
    QueueUnavailable: no Redis URL configured.
    """
    r = settings.review
    return RedisReviewerSessions.from_url(
        _redis_url(settings), idle_s=r.session_idle_s, max_s=r.session_ttl_s, prefix=r.key_prefix
    )


def build_tenants(settings: Settings) -> dict[str, Tenant]:
    """Every configured tenant, with its policy set and limits (``default`` as well when no API
    keys are configured: the open API of development mode)."""
    base = settings.rate_limits
    out: dict[str, Tenant] = {}
    for name in settings.tenant_names():
        own = settings.tenants.get(name)
        out[name] = Tenant(
            name=name,
            policies=tuple(own.policies) if own and own.policies is not None else None,
            rate_per_s=own.rate_per_s if own and own.rate_per_s is not None else base.rate_per_s,
            burst=own.burst if own and own.burst is not None else base.burst,
            daily_jobs=own.daily_jobs if own and own.daily_jobs is not None else base.daily_jobs,
        )
    return out


def login_policies(review: ReviewSettings) -> tuple[LoginPolicy, LoginPolicy]:
    """Sign-in throttling per account and per client address."""

    def policy(lockout_after: int) -> LoginPolicy:
        return LoginPolicy(
            free_failures=review.login_free_failures,
            delay_s=review.login_delay_s,
            max_delay_s=review.login_max_delay_s,
            lockout_after=lockout_after,
            lockout_s=float(review.login_lockout_s),
            window_s=float(review.login_window_s),
        )

    return policy(review.login_lockout_after), policy(review.login_lockout_after_address)


def build_reviewer_auth(
    settings: Settings,
    users: ReviewerStore,
    *,
    sessions: ReviewerSessions | None = None,
    throttle: LoginThrottle | None = None,
    audit: AuditSink | None = None,
) -> ReviewerAuth:
    """Reviewer sign-in, sessions and throttling (Redis unless given).

    Raises:
        QueueUnavailable: no Redis URL configured (and no sessions or throttle given).
    """
    r = settings.review
    secret = r.pseudonym_secret.get_secret_value()
    account, address = login_policies(r)
    return ReviewerAuth(
        users=users,
        sessions=sessions or open_reviewer_sessions(settings),
        throttle=throttle or RedisLoginThrottle.from_url(_redis_url(settings), prefix=r.key_prefix),
        check_password=verify_password,
        pseudonym=lambda username: pseudonym(secret, username),
        account_policy=account,
        address_policy=address,
        audit=audit,
    )


def enforce_security(settings: Settings) -> None:
    """Refuse an unsafe production configuration; warn loudly in development mode.

    Raises:
        InsecureSettingsError: production with weak secrets or keys.
    """
    for problem in settings.enforce_security():
        log.warning("DEVELOPMENT MODE: %s (refused in production)", problem)


# --- processes ---------------------------------------------------------------------------------


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
        URL configured, the inline images of jobs (a review export names those)."""
        store = open_job_store(self.settings) if self.settings.redis_url else None
        return build_sources(self.settings, store, local_files=True)


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
    policies = load_policies(
        files, signals=set(build_signals(settings)), check_image=image_check(decoder)
    )
    cache = CompileCache(settings.cache_dir)
    before = model.encoder.texts_encoded
    found = compile_policy_set(policies, cache=cache, encoder=model.encoder, decoder=decoder)
    compiled = [item for item, _, _ in found]
    hits = sum(hit for _, hit, _ in found)
    written = [path for _, _, path in found]
    return CompileReport(
        compiled=compiled,
        cache_hits=hits,
        files=written,
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
        build_signals(settings, banks),
        paths,
        lone_shadows_live=policy_paths is not None,
    )
    named = bank_names(policies.current.policies.values())
    if named and settings.redis_url:
        _bank_sync(settings, open_bank_store(settings), banks).load(named)
    elif named:
        log.warning(
            "policies use hash banks (%s) but no Redis is configured: those categories match "
            "nothing (set MODERATION_REDIS_URL)",
            ", ".join(sorted(named)),
        )
    moderator = Moderator(
        encoder=model.encoder,
        decoder=SafeDecoder(settings.images),
        policies=policies,
        fingerprint_all=settings.banks.hash_every_image,
    )
    return Scoring(
        settings=settings, model=model, policies=policies, moderator=moderator, policy_paths=paths
    )


@dataclass
class ApiProcess:
    """The API's collaborators."""

    settings: Settings
    store: JobStore
    deliveries: DeliveryLog
    workers: WorkerRegistry
    publisher: TaskPublisher
    submitter: Submitter
    sources: ImageSources
    outcomes: Outcomes
    audit: AuditSink
    review_queue: ReviewQueue
    reviewers: ReviewerStore
    reviewer_auth: ReviewerAuth
    tenants: dict[str, Tenant]
    #: Reviewers' "add to bank" (None: not offered).
    banks: BankService | None = None

    def close(self) -> None:
        close = getattr(self.publisher, "close", None)
        if close is not None:
            close()
        self.audit.close()


def build_api(
    settings: Settings,
    *,
    store: JobStore | None = None,
    deliveries: DeliveryLog | None = None,
    workers: WorkerRegistry | None = None,
    publisher: TaskPublisher | None = None,
    callbacks: CallbackSender | None = None,
    audit: AuditSink | None = None,
    review_queue: ReviewQueue | None = None,
    reviewers: ReviewerStore | None = None,
    limiter: RateLimiter | None = None,
    banks: BankService | None = None,
) -> ApiProcess:
    """The API process. Each collaborator can be replaced (tests pass in-memory twins).

    Raises:
        InsecureSettingsError: production with weak secrets or keys.
        QueueUnavailable: no Redis URL configured (and no store given).
        AuditError: the audit log cannot be opened.
    """
    enforce_security(settings)
    queue = open_queue(settings) if publisher is None or callbacks is None else None
    store = store or open_job_store(settings)
    deliveries = deliveries or open_delivery_log(settings)
    workers = workers or open_worker_registry(settings)
    q = settings.queue
    if publisher is None and queue is not None and q.publish_wait_ms > 0:
        publisher = CoalescingPublisher(
            queue, max_jobs=q.jobs_per_message, max_wait_s=q.publish_wait_ms / 1000.0
        )
    publisher = publisher or queue
    callbacks = callbacks or queue
    assert publisher is not None and callbacks is not None
    sources = build_sources(settings, store)
    paths = list(settings.policy_paths)

    def policy_ids() -> set[str]:
        return set(load_policies(paths))

    submitter = Submitter(
        store=store,
        publisher=publisher,
        sources=sources,
        catalog=PolicyCatalog(workers, policy_ids),
        settings=settings.queue,
        check_callback_url=check_callback_url,
        limiter=limiter
        or RedisRateLimiter.from_url(_redis_url(settings), prefix=settings.queue.key_prefix),
    )
    audit = audit or open_audit(settings)
    if banks is None and settings.redis_url:
        banks = build_banks(settings)
    outcomes = Outcomes(
        store,
        deliveries=deliveries,
        audit=audit,
        callbacks=callbacks,
        keep_inline_s=settings.queue.result_ttl_s,
        banks=banks,
    )
    reviewers = reviewers or open_reviewers(settings)
    return ApiProcess(
        settings=settings,
        store=store,
        deliveries=deliveries,
        workers=workers,
        publisher=publisher,
        submitter=submitter,
        sources=sources,
        outcomes=outcomes,
        audit=audit,
        review_queue=review_queue or open_review_queue(settings),
        reviewers=reviewers,
        reviewer_auth=build_reviewer_auth(settings, reviewers, audit=audit),
        tenants=build_tenants(settings),
        banks=banks,
    )


@dataclass
class WorkerProcess:
    """A worker process's collaborators. :meth:`start` starts its background threads."""

    settings: Settings
    name: str
    model: ModelChoice
    store: JobStore
    policies: ActivePolicies
    processor: Processor
    maintenance: WorkerMaintenance
    batcher: MicroBatcher[Any, NDArray[np.float32]]
    delivery: CallbackDelivery
    audit: AuditSink
    publisher: TaskPublisher
    banks: BankSync | None = None
    closers: list[Callable[[], object]] = field(default_factory=list)

    def start(self) -> None:
        if self.model.note:
            log.warning("%s", self.model.note)
        if self.banks is not None:
            self.banks.load()  # every bank in memory before the first job is scored
        self.maintenance.beat()
        self.maintenance.start()

    def close(self) -> None:
        self.maintenance.stop()
        if self.banks is not None:
            self.banks.close()
        self.batcher.close()
        for close in self.closers:
            close()
        self.audit.close()


def build_worker(settings: Settings, *, name: str | None = None) -> WorkerProcess:
    """A worker process: model, policies, micro-batcher, processor, maintenance, audit.

    Raises:
        InsecureSettingsError: production with weak secrets or keys.
        QueueUnavailable: no Redis URL configured.
        ModelUnavailableError, PolicyError: the model or the policies cannot be loaded.
        AuditError: the audit log cannot be opened.
    """
    enforce_security(settings)
    q = settings.queue
    store = open_job_store(settings)
    deliveries = open_delivery_log(settings)
    queue = open_queue(settings)
    audit = open_audit(settings)
    slot = settings.worker_slot
    if slot is None:
        slot = claim_slot(settings.worker_slots_dir)
    model = load_model(settings.model, limits=settings.images, slot=slot)
    banks = LoadedBanks()
    sync = _bank_sync(settings, open_bank_store(settings), banks)
    policies = build_policies(
        settings, model.encoder, build_signals(settings, banks), policy_paths_for(settings, model)
    )
    moderator = Moderator(
        encoder=model.encoder,
        decoder=SafeDecoder(settings.images),
        policies=policies,
        fingerprint_all=settings.banks.hash_every_image,
    )
    m = metrics()

    def on_batch(stats: BatchStats) -> None:
        m.batch_size.observe(stats.size)
        m.latency.labels("inference").observe(stats.run_s)

    batcher: MicroBatcher[Any, NDArray[np.float32]] = MicroBatcher(
        start=model.encoder.start,  # two batches in flight on a GPU
        max_batch=q.batch_size,
        max_wait_s=q.batch_wait_ms / 1000.0,
        on_batch=on_batch,
    )
    pool = ThreadPoolExecutor(
        q.decode_threads or max(2, os.cpu_count() or 2), thread_name_prefix="decode"
    )
    preparer = PreparePool(q.prepare_processes) if q.prepare_processes else None
    sources = build_sources(settings, store)
    outcomes = Outcomes(
        store,
        deliveries=deliveries,
        audit=audit,
        callbacks=queue,
        review=open_review_queue(settings),
        policies=lambda: policies.current.policies,
        weights_sha256=model.encoder.identity.weights_sha256,
        keep_inline_s=q.result_ttl_s,
    )
    processor = Processor(
        store=store,
        deliveries=deliveries,
        sources=sources,
        moderator=moderator,
        batcher=batcher,
        outcomes=outcomes,
        settings=q,
        pool=pool,
        history=(
            EmbeddingHistory(open_embedding_store(settings)) if settings.embeddings.store else None
        ),
        prepare_many=preparer.prepare_many if preparer is not None else None,
    )
    worker_name = name or f"{socket.gethostname()}-{os.getpid()}"
    maintenance = WorkerMaintenance(
        name=worker_name,
        store=store,
        deliveries=deliveries,
        registry=open_worker_registry(settings),
        publisher=queue,
        policies=policies,
        settings=q,
        info=lambda: {
            "model": model.encoder.identity.id,
            "model_note": model.note,
            "banks": banks.describe(),
        },
        tasks=[(settings.banks.reload_s, sync.refresh, "bank reload check")],
    )
    return WorkerProcess(
        settings=settings,
        name=worker_name,
        model=model,
        store=store,
        policies=policies,
        processor=processor,
        maintenance=maintenance,
        batcher=batcher,
        delivery=CallbackDelivery(settings),
        audit=audit,
        publisher=queue,
        banks=sync,
        closers=[
            lambda: pool.shutdown(wait=False),
            *([preparer.close] if preparer is not None else []),
        ],
    )
