"""The API process (``moderation api``, the demo): job store, queue, submit use case, outcomes,
review queue, reviewer sign-in, audit log. Imports no torch: an API image can leave it out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from moderation.adapters.images import safe_png
from moderation.adapters.policy_files import load_policies
from moderation.adapters.postgres.image_history import PostgresImageHistory
from moderation.adapters.postgres.policies import PostgresPolicyStore
from moderation.adapters.redis_limits import RedisRateLimiter
from moderation.compose.access import build_reviewer_auth, build_tenants, enforce_security
from moderation.compose.appeals import build_appeals, build_enforcement
from moderation.compose.banks import build_banks, open_bank_guard, open_exchange_health
from moderation.compose.callbacks import CallbackSending, build_callback_sending, sends_callbacks
from moderation.compose.database import (
    database_configured,
    open_database,
    warn_local_blobs,
    warn_redis_only,
)
from moderation.compose.registries import build_sources, check_callback_url
from moderation.compose.stores import (
    open_audit,
    open_bank_store,
    open_blob_store,
    open_callbacks,
    open_delivery_log,
    open_job_store,
    open_notice_store,
    open_queue,
    open_review_queue,
    open_reviewers,
    open_wellbeing_store,
    open_worker_registry,
    require_redis_url,
)
from moderation.core.admission import Tenant
from moderation.pipeline.appeals import Appeals, route_final
from moderation.pipeline.bank_guard import BankGuard
from moderation.pipeline.banks import BankService
from moderation.pipeline.notices import NoticeDesk, Rescoring
from moderation.pipeline.outcomes import Outcomes
from moderation.pipeline.publishing import CoalescingPublisher
from moderation.pipeline.review_admin import ReviewAdmin
from moderation.pipeline.review_desk import ReviewDesk
from moderation.pipeline.review_evidence import ReviewEvidence
from moderation.pipeline.signin import ReviewerAuth
from moderation.pipeline.sources import ImageSources
from moderation.pipeline.submit import PolicyCatalog, Submitter
from moderation.pipeline.uploads import Uploads
from moderation.pipeline.wellbeing import Wellbeing
from moderation.ports import (
    AppealStore,
    AuditSink,
    BacklogReader,
    BlobStore,
    CallbackSender,
    DeliveryLog,
    ExchangeHealth,
    JobRescorer,
    JobStore,
    NoticeStore,
    RateLimiter,
    ReviewerStore,
    ReviewQueue,
    TaskPublisher,
    WellbeingStore,
    WorkerRegistry,
)
from moderation.settings import Settings

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

__all__ = ["ApiProcess", "build_api"]

log = logging.getLogger(__name__)


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
    review_desk: ReviewDesk
    appeals: Appeals
    reviewers: ReviewerStore
    reviewer_auth: ReviewerAuth
    tenants: dict[str, Tenant]
    #: Reviewers' "add to bank" (None: not offered).
    banks: BankService | None = None
    #: Per-tenant backlog for the metrics (None: the job store cannot tell).
    backlog: BacklogReader | None = None
    #: The PostgreSQL pool (None: no database configured; records stay in Redis).
    database: ConnectionPool | None = None
    #: Notices from outside (None: no database, so no notice store).
    notice_desk: NoticeDesk | None = None
    #: Callback delivery from the outbox (``queue.callback_senders`` ``api`` or ``both``).
    callbacks: CallbackSending | None = None
    #: Bank entries' states: confirm, disable, quarantine (None: no database).
    bank_guard: BankGuard | None = None
    #: Reviewer wellbeing: settings, exposure, break prompts (None: not kept).
    wellbeing: Wellbeing | None = None
    #: The synced banks' health for /metrics (None: no database or no ``banks.exchanges``).
    exchange_health: Callable[[Iterable[str]], list[ExchangeHealth]] | None = None
    #: The review admin's audited actions (requeue, reassign, release, redeliver).
    review_admin: ReviewAdmin | None = None
    #: Large parts of multipart uploads, streamed to the object store (None: kept in memory,
    #: within ``queue.max_inline_bytes``).
    uploads: Uploads | None = None

    def close(self) -> None:
        if self.callbacks is not None:
            self.callbacks.close()
        close = getattr(self.publisher, "close", None)
        if close is not None:
            close()
        self.audit.close()
        if self.database is not None:
            self.database.close()


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
    blobs: BlobStore | None = None,
    database: ConnectionPool | None = None,
    notices: NoticeStore | None = None,
    appeal_store: AppealStore | None = None,
    wellbeing_store: WellbeingStore | None = None,
) -> ApiProcess:
    """The API process. Each collaborator can be replaced (tests pass in-memory twins).

    Raises:
        InsecureSettingsError: production with weak secrets or keys.
        QueueUnavailable: no Redis URL configured (and no store given).
        AuditError: the audit log cannot be opened.
        DatabaseUnavailable, MigrationError: a configured database cannot be reached or
            brought to the current schema.
    """
    enforce_security(settings)
    if database is None and database_configured(settings):
        database = open_database(settings, application="moderation-api")
    if database is None and store is None:
        warn_redis_only(settings, process="API")
    warn_local_blobs(settings, process="API")
    queue = open_queue(settings) if publisher is None else None
    store = store or open_job_store(settings, database=database)
    deliveries = deliveries or open_delivery_log(settings, database=database)
    workers = workers or open_worker_registry(settings)
    q = settings.queue
    if publisher is None and queue is not None and q.publish_wait_ms > 0:
        publisher = CoalescingPublisher(
            queue, max_jobs=q.jobs_per_message, max_wait_s=q.publish_wait_ms / 1000.0
        )
    publisher = publisher or queue
    outbox = open_callbacks(settings) if callbacks is None else None
    callbacks = callbacks or outbox
    assert publisher is not None and callbacks is not None
    blobs = blobs or open_blob_store(settings)
    if settings.queue.inline_spill_bytes is not None and not settings.blobs.bucket:
        log.warning(
            "queue.inline_spill_bytes is set but blobs.bucket is not: large inline images go to "
            "the folder %s, which the workers must share (set MODERATION_BLOBS__BUCKET when "
            "they run on other hosts)",
            settings.blobs.local_dir,
        )
    sources = build_sources(settings, store, blobs=blobs)
    paths = list(settings.policy_paths)

    def policy_ids() -> set[str]:
        if settings.policy_source == "database" and database is not None:
            return {
                d.policy_id for d in PostgresPolicyStore(database).serving() if d.slot == "live"
            }
        return set(load_policies(paths))

    submitter = Submitter(
        store=store,
        publisher=publisher,
        sources=sources,
        catalog=PolicyCatalog(workers, policy_ids),
        settings=settings.queue,
        check_callback_url=check_callback_url,
        limiter=limiter
        or RedisRateLimiter.from_url(require_redis_url(settings), prefix=settings.queue.key_prefix),
        blobs=blobs,
    )
    audit = audit or open_audit(settings)
    if banks is None and (database is not None or settings.redis_url):
        banks = build_banks(settings, open_bank_store(settings, database=database))
    notices = notices or open_notice_store(database)
    enforcement = build_enforcement(
        store=store,
        audit=audit,
        callbacks=callbacks,
        policies=lambda: load_policies(paths),
        database=database,
    )
    outcomes = Outcomes(
        store,
        deliveries=deliveries,
        audit=audit,
        callbacks=callbacks,
        keep_inline_s=settings.queue.result_ttl_s,
        banks=banks,
        notices=notices,
        enforcement=enforcement,
    )
    reviewers = reviewers or open_reviewers(settings, database=database)
    review_queue = review_queue or open_review_queue(settings, database=database)
    notice_desk = (
        NoticeDesk(
            store=store,
            notices=notices,
            review=review_queue,
            callbacks=callbacks,
            policies=lambda: load_policies(paths),
            check_callback_url=check_callback_url,
            limiter=submitter.limiter,
            rescoring=(
                Rescoring(store, deliveries, publisher) if isinstance(store, JobRescorer) else None
            ),
            blobs=blobs,
        )
        if notices is not None
        else None
    )
    appeals = build_appeals(
        settings,
        store=store,
        review=review_queue,
        audit=audit,
        callbacks=callbacks,
        policies=lambda: load_policies(paths),
        database=database,
        appeals=appeal_store,
        enforcement=enforcement,
    )
    limits = settings.images
    if wellbeing_store is None and (database is not None or settings.redis_url):
        wellbeing_store = open_wellbeing_store(settings, database=database)
    wellbeing = Wellbeing(wellbeing_store) if wellbeing_store is not None else None
    desk = ReviewDesk(
        review_queue,
        on_final=route_final(appeals, outcomes.record_human_decision),
        evidence=ReviewEvidence(
            blobs,
            retention_s=settings.review.evidence_retention_s,
            appeal_window_s=settings.appeals.window_s if appeals.appeals is not None else 0.0,
        ),
        render_image=lambda data: safe_png(data, limits),
        banks=banks,
        backoff_s=settings.review.outbox_backoff_s,
        backoff_max_s=settings.review.outbox_backoff_max_s,
        undo_window_s=(
            settings.review.undo_window_s if settings.review.outbox_retry_s > 0 else 0.0
        ),
        skip_away_s=settings.review.skip_away_s,
        uploader_context=enforcement.context if enforcement is not None else None,
        image_history=PostgresImageHistory(database) if database is not None else None,
        wellbeing=wellbeing,
    )
    reviewer_auth = build_reviewer_auth(settings, reviewers, audit=audit)
    review_admin = ReviewAdmin(
        desk, users=reviewers, pseudonym=reviewer_auth.pseudonym, audit=audit
    )
    sending = None
    if sends_callbacks(settings, "api") and outbox is not None:
        sending = build_callback_sending(settings, outbox)
        sending.start()
    return ApiProcess(
        uploads=Uploads(
            blobs,
            memory_bytes=min(settings.video.stream_above_bytes, settings.queue.max_inline_bytes),
            max_bytes=(
                settings.video.max_upload_bytes
                if settings.video.max_upload_bytes is not None
                else settings.video.max_bytes
            ),
        ),
        callbacks=sending,
        settings=settings,
        store=store,
        deliveries=deliveries,
        workers=workers,
        publisher=publisher,
        submitter=submitter,
        sources=sources,
        outcomes=outcomes,
        audit=audit,
        review_queue=review_queue,
        review_desk=desk,
        appeals=appeals,
        reviewers=reviewers,
        reviewer_auth=reviewer_auth,
        review_admin=review_admin,
        tenants=build_tenants(settings),
        banks=banks,
        backlog=store if isinstance(store, BacklogReader) else None,
        database=database,
        notice_desk=notice_desk,
        bank_guard=open_bank_guard(settings, database, banks=banks, audit=audit),
        wellbeing=wellbeing,
        exchange_health=open_exchange_health(settings, database),
    )
