"""A worker process (``workers/tasks.py``): model, policies, micro-batcher, processor,
maintenance thread, callback delivery (the outbox's dispatcher, on its own threads), bank sync,
audit log.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from moderation.adapters.compile_cache import CompileCache
from moderation.adapters.images import FrameStill, SafeDecoder
from moderation.adapters.policy_files import load_policy_text
from moderation.adapters.postgres.jobs import PostgresJobStore
from moderation.adapters.support.prepare_pool import PreparePool
from moderation.adapters.support.slots import claim_slot
from moderation.adapters.support.spool import sweep_stale
from moderation.compose.access import enforce_security
from moderation.compose.appeals import build_appeals, build_enforcement
from moderation.compose.banks import build_bank_sync, build_banks, open_bank_guard
from moderation.compose.callbacks import (
    CallbackSending,
    build_callback_sending,
    sends_callbacks,
)
from moderation.compose.database import (
    database_configured,
    open_database,
    warn_local_blobs,
    warn_redis_only,
)
from moderation.compose.model import ModelChoice, load_model, policy_paths_for
from moderation.compose.policies import build_policies, stored_policies
from moderation.compose.registries import (
    build_signals,
    build_sources,
    image_check,
    media_decoder,
)
from moderation.compose.stores import (
    open_audit,
    open_bank_store,
    open_blob_store,
    open_callbacks,
    open_delivery_log,
    open_history,
    open_job_store,
    open_notice_store,
    open_queue,
    open_review_queue,
    open_worker_registry,
)
from moderation.core.compiled import CompiledPolicy
from moderation.exceptions import ConfigurationError
from moderation.metrics import metrics
from moderation.pipeline.appeals import route_final
from moderation.pipeline.backtest_tasks import WorkerBacktests
from moderation.pipeline.bank_sync import BankSync
from moderation.pipeline.batching import BatchStats, MicroBatcher
from moderation.pipeline.compile import compile_cached
from moderation.pipeline.history import EmbeddingHistory
from moderation.pipeline.history_shards import HistoryShards
from moderation.pipeline.maintenance import WorkerMaintenance
from moderation.pipeline.moderator import Moderator
from moderation.pipeline.outcomes import Outcomes
from moderation.pipeline.policies import ActivePolicies
from moderation.pipeline.process import Processor
from moderation.pipeline.review_evidence import ReviewEvidence
from moderation.pipeline.review_outbox import OnFinal, ReviewOutbox
from moderation.pipeline.spill import SpillSweep
from moderation.pipeline.tenant_gate import TenantGate
from moderation.ports import (
    AuditSink,
    BlobStore,
    CallbackOutbox,
    JobStore,
    ReviewQueue,
    TaskPublisher,
    WorkerRegistry,
)
from moderation.settings import Settings
from moderation.signals import LoadedBanks

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

__all__ = ["WorkerProcess", "build_worker"]

log = logging.getLogger(__name__)


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
    #: Callback delivery from the outbox (None: ``queue.callback_senders`` is ``api``).
    callbacks: CallbackSending | None
    outbox: CallbackOutbox
    audit: AuditSink
    publisher: TaskPublisher
    backtests: WorkerBacktests
    banks: BankSync | None = None
    history: EmbeddingHistory | None = None
    #: The PostgreSQL pool (None: no database configured; records stay in Redis).
    database: ConnectionPool | None = None
    closers: list[Callable[[], object]] = field(default_factory=list)

    def start(self) -> None:
        if self.model.note:
            log.warning("%s", self.model.note)
        for warning in self.settings.embeddings.deprecations():
            log.warning("%s", warning)
        if self.banks is not None:
            self.banks.load()  # every bank in memory before the first job is scored
        if self.history is not None:
            self.history.start()
        self.maintenance.beat()
        self.maintenance.start()
        if self.callbacks is not None:
            self.callbacks.start()

    def close(self) -> None:
        if self.callbacks is not None:
            self.callbacks.close()
        self.maintenance.stop()
        if self.banks is not None:
            self.banks.close()
        self.batcher.close()
        if self.history is not None:
            self.history.close()  # SIGTERM: what the buffer holds becomes a shard
        for close in self.closers:
            close()
        self.audit.close()
        if self.database is not None:
            self.database.close()


def build_worker(settings: Settings, *, name: str | None = None) -> WorkerProcess:
    """A worker process: model, policies, micro-batcher, processor, maintenance, audit.

    Raises:
        InsecureSettingsError: production with weak secrets or keys.
        QueueUnavailable: no Redis URL configured.
        ModelUnavailableError, PolicyError: the model or the policies cannot be loaded.
        AuditError: the audit log cannot be opened.
        DatabaseUnavailable, MigrationError: a configured database cannot be reached or
            brought to the current schema.
    """
    enforce_security(settings)
    database = (
        open_database(settings, application="moderation-worker")
        if database_configured(settings)
        else None
    )
    if database is None:
        warn_redis_only(settings, process="worker")
    warn_local_blobs(settings, process="worker")
    q = settings.queue
    store = open_job_store(settings, database=database)
    deliveries = open_delivery_log(settings, database=database)
    queue = open_queue(settings)
    audit = open_audit(settings)
    slot = settings.worker_slot
    if slot is None:
        slot = claim_slot(settings.worker_slots_dir)
    model = load_model(settings.model, limits=settings.images, slot=slot)
    banks = LoadedBanks()
    bank_store = open_bank_store(settings, database=database)
    sync = build_bank_sync(settings, bank_store, banks)
    signals = build_signals(settings, banks, text_encoder=model.encoder)
    stored = None
    if settings.policy_source == "database":
        if database is None:
            raise ConfigurationError(
                "policy_source is database but no database is configured (MODERATION_DATABASE__URL)"
            )
        stored = stored_policies(settings, database, open_blob_store(settings), signals)
    policies = build_policies(
        settings, model.encoder, signals, policy_paths_for(settings, model), stored=stored
    )
    moderator = Moderator(
        encoder=model.encoder,
        decoder=media_decoder(settings),
        policies=policies,
        fingerprint_all=settings.banks.hash_every_image,
        still=FrameStill(),  # a video's sampled frames, kept for its reviewer
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
    worker_name = name or f"{socket.gethostname()}-{os.getpid()}"
    shards = open_history(settings)
    history = (
        EmbeddingHistory(shards, writer=worker_name, settings=settings.embeddings)
        if settings.embeddings.store
        else None
    )
    preparer = PreparePool(q.prepare_processes) if q.prepare_processes else None
    blobs = open_blob_store(settings)
    sources = build_sources(settings, store, blobs=blobs)
    outbox = open_callbacks(settings)
    evidence = ReviewEvidence(
        blobs,
        retention_s=settings.review.evidence_retention_s,
        appeal_window_s=settings.appeals.window_s if database is not None else 0.0,
    )
    review_queue = open_review_queue(settings, database=database)
    guard = open_bank_guard(settings, database, loaded=banks, audit=audit)
    enforcement = build_enforcement(
        store=store,
        audit=audit,
        callbacks=outbox,
        policies=lambda: policies.current.policies,
        database=database,
    )
    outcomes = Outcomes(
        store,
        deliveries=deliveries,
        audit=audit,
        callbacks=outbox,
        review=review_queue,
        banks=build_banks(settings, bank_store),  # reviewers' "add to bank" on redelivery
        policies=lambda: policies.current.policies,
        weights_sha256=model.encoder.identity.weights_sha256,
        keep_inline_s=q.result_ttl_s,
        evidence=evidence,
        notices=open_notice_store(database),
        bank_guard=guard,
        keep_block_evidence=database is not None and settings.appeals.keep_block_evidence,
        enforcement=enforcement,
    )
    appeals = build_appeals(
        settings,
        store=store,
        review=review_queue,
        audit=audit,
        callbacks=outbox,
        policies=lambda: policies.current.policies,
        database=database,
        enforcement=enforcement,
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
        history=history,
        prepare_many=preparer.prepare_many if preparer is not None else None,
        # One tenant alone needs no gate: everything it has is its own turn.
        gate=(
            TenantGate(q.tenant_max_in_flight)
            if q.tenant_max_in_flight is not None and len(settings.tenant_names()) > 1
            else None
        ),
        videos_elsewhere=q.worker_lanes == "photos" and q.video_queue_name is not None,
    )
    registry = open_worker_registry(settings)
    maintenance = WorkerMaintenance(
        name=worker_name,
        store=store,
        deliveries=deliveries,
        registry=registry,
        publisher=queue,
        policies=policies,
        settings=q,
        info=lambda: {
            "model": model.encoder.identity.id,
            "model_note": model.note,
            "banks": banks.describe(),
        },
        tasks=[
            (settings.banks.reload_s, sync.refresh, "bank reload check"),
            *([(settings.banks.reload_s, guard.refresh, "bank entry states")] if guard else []),
            *_partition_maintenance(settings, store),
            *_history_sweep(settings, shards, registry),
            *_evidence_sweep(settings, evidence, registry),
            *_spill_sweep(settings, blobs, registry),
            *_spool_sweep(settings),
            *_outbox_delivery(
                settings,
                review_queue,
                route_final(appeals, outcomes.record_human_decision),
                evidence,
            ),
        ],
    )
    compile_candidate = _candidate_compiler(settings, model, SafeDecoder(settings.images))
    return WorkerProcess(
        settings=settings,
        name=worker_name,
        model=model,
        store=store,
        policies=policies,
        processor=processor,
        maintenance=maintenance,
        batcher=batcher,
        outbox=outbox,
        callbacks=(
            build_callback_sending(settings, outbox)
            if sends_callbacks(settings, "workers")
            else None
        ),
        audit=audit,
        publisher=queue,
        backtests=WorkerBacktests(
            shards, live=lambda: policies.current, compile_candidate=compile_candidate
        ),
        banks=sync,
        history=history,
        database=database,
        closers=[
            lambda: pool.shutdown(wait=False),
            *([preparer.close] if preparer is not None else []),
        ],
    )


def _partition_maintenance(
    settings: Settings, store: JobStore
) -> list[tuple[float, Callable[[], object], str]]:
    """Job records in PostgreSQL: make the coming days' partitions and drop those past
    ``database.job_retention_days`` (hourly; one worker at a time, under an advisory lock)."""
    if not isinstance(store, PostgresJobStore):
        return []
    return [(settings.database.partition_maintenance_s, store.maintain, "job partitions")]


def _history_sweep(
    settings: Settings, shards: HistoryShards, registry: WorkerRegistry
) -> list[tuple[float, Callable[[], object], str]]:
    """The retention sweep of the embedding history as a maintenance task (one worker at a
    time, under a lock), unless ``embeddings.retention_sweep_s`` is 0."""
    e = settings.embeddings
    if not e.retention_sweep_s:
        return []

    def sweep() -> None:
        if registry.try_lock("history-retention", max(60.0, e.retention_sweep_s / 2)):
            shards.sweep(lookback_days=e.retention_sweep_days)

    return [(e.retention_sweep_s, sweep, "history retention sweep")]


def _evidence_sweep(
    settings: Settings, evidence: ReviewEvidence, registry: WorkerRegistry
) -> list[tuple[float, Callable[[], object], str]]:
    """Deleting the scored bytes of review items decided more than
    ``review.evidence_retention_s`` ago, as a maintenance task (one worker at a time), unless
    ``review.evidence_sweep_s`` is 0."""
    every = settings.review.evidence_sweep_s
    if not every:
        return []

    def sweep() -> None:
        if registry.try_lock("review-evidence-retention", max(60.0, every / 2)):
            evidence.sweep()

    return [(every, sweep, "review evidence retention sweep")]


def _spill_sweep(
    settings: Settings, blobs: BlobStore, registry: WorkerRegistry
) -> list[tuple[float, Callable[[], object], str]]:
    """Dropping the days of spilled inline images, and of videos the API streamed to the object
    store (``video.stream_above_bytes``: always on), no job can need any more (one worker at a
    time, hourly)."""
    q = settings.queue
    sweep = SpillSweep(blobs, keep_s=max(q.inline_ttl_s, q.result_ttl_s))

    def run() -> None:
        if registry.try_lock("inline-spill-retention", 1800.0):
            sweep.sweep()

    return [(3600.0, run, "spilled inline image retention sweep")]


def _spool_sweep(settings: Settings) -> list[tuple[float, Callable[[], object], str]]:
    """Removing the temporary files of large downloads a killed worker left behind (every
    process of the host sweeps the shared temporary folder; only files far older than any live
    job's are removed)."""
    stale_s = max(
        3600.0,
        2 * (settings.images.fetch_deadline_s + settings.video.max_decode_s),
        2.0 * settings.queue.visibility_timeout_s,
    )

    def run() -> None:
        removed = sweep_stale(stale_s)
        if removed:
            log.info("removed %d stale temporary download file(s)", removed)

    return [(3600.0, run, "stale temporary download sweep")]


def _outbox_delivery(
    settings: Settings, queue: ReviewQueue, on_final: OnFinal, evidence: ReviewEvidence
) -> list[tuple[float, Callable[[], object], str]]:
    """The review outbox's automatic redelivery as a maintenance task (every worker takes its
    share of what is due), unless ``review.outbox_retry_s`` is 0."""
    r = settings.review
    if not r.outbox_retry_s:
        return []
    outbox = ReviewOutbox(
        queue,
        on_final,
        evidence=evidence,
        backoff_s=r.outbox_backoff_s,
        backoff_max_s=r.outbox_backoff_max_s,
    )
    return [(r.outbox_retry_s, outbox.deliver_due, "review outbox delivery")]


def _candidate_compiler(
    settings: Settings, model: ModelChoice, decoder: SafeDecoder
) -> Callable[[str], CompiledPolicy]:
    """Loads a backtest candidate's policy text and compiles it for this worker's model
    through the compile cache (a candidate seen before is never encoded again)."""
    cache = CompileCache(settings.cache_dir)
    names = build_signals(settings)

    def compile_candidate(text: str) -> CompiledPolicy:
        policy = load_policy_text(
            text, source="backtest candidate", signals=names, check_image=image_check(decoder)
        )
        compiled, _ = compile_cached(policy, cache=cache, encoder=model.encoder)
        return compiled

    return compile_candidate
