"""The stores and queues of every process kind, opened from :class:`~moderation.settings.Settings`
(the only place that knows which adapter implements which store port).

With a database (``settings.database.url``: the process's pool, :mod:`moderation.compose.
database`), the review queue, reviewer accounts and hash banks live in PostgreSQL; without one
they stay in Redis as before.
"""

from __future__ import annotations

import atexit
import logging
from typing import TYPE_CHECKING

from moderation.adapters.audit_log import AuditLog
from moderation.adapters.celery_queue import CeleryQueue
from moderation.adapters.local_audit import LocalSegmentStore
from moderation.adapters.local_blobs import LocalBlobStore
from moderation.adapters.postgres.jobs import PostgresJobStore
from moderation.adapters.postgres.pool import ConnectionPool
from moderation.adapters.redis_banks import RedisBankStore
from moderation.adapters.redis_callbacks import RedisCallbackOutbox
from moderation.adapters.redis_deliveries import RedisDeliveryLog
from moderation.adapters.redis_jobs import RedisJobStore
from moderation.adapters.redis_review import RedisReviewQueue
from moderation.adapters.redis_reviewers import RedisReviewerStore
from moderation.adapters.redis_sessions import RedisReviewerSessions
from moderation.adapters.redis_transients import RedisJobTransients
from moderation.adapters.redis_workers import RedisWorkerRegistry
from moderation.adapters.s3_audit import S3SegmentStore
from moderation.adapters.s3_blobs import S3BlobStore
from moderation.compose.database import database_configured, open_database
from moderation.exceptions import QueueUnavailable
from moderation.pipeline.history_shards import HistoryShards
from moderation.ports import (
    BankStore,
    BlobStore,
    NoticeStore,
    ReviewerStore,
    ReviewQueue,
    SegmentStore,
    WellbeingStore,
)
from moderation.settings import Settings

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

__all__ = [
    "command_database",
    "open_audit",
    "open_bank_store",
    "open_blob_store",
    "open_callbacks",
    "open_delivery_log",
    "open_history",
    "open_job_store",
    "open_notice_store",
    "open_queue",
    "open_review_queue",
    "open_reviewer_sessions",
    "open_reviewers",
    "open_segment_store",
    "open_wellbeing_store",
    "open_worker_registry",
]

log = logging.getLogger(__name__)


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


def require_redis_url(settings: Settings) -> str:
    if not settings.redis_url:
        raise QueueUnavailable(
            "no Redis URL configured: set MODERATION_REDIS_URL (or run "
            "`moderation demo`, which starts an embedded server)"
        )
    return settings.redis_url


def open_job_store(
    settings: Settings, *, database: ConnectionPool | None = None
) -> RedisJobStore | PostgresJobStore:
    """The job store: records and results in PostgreSQL when the process has a ``database``
    (inline bytes, queued bytes and the pending index stay in Redis), else all in Redis.

    Raises:
        QueueUnavailable: no Redis URL configured.
    """
    if database is not None:
        return _postgres_job_store(settings, database)
    return RedisJobStore.from_url(require_redis_url(settings), settings.queue)


def _postgres_job_store(settings: Settings, database: ConnectionPool) -> PostgresJobStore:
    return PostgresJobStore(
        database,
        RedisJobTransients.from_url(require_redis_url(settings), settings.queue),
        retention_days=settings.database.job_retention_days,
    )


def open_delivery_log(
    settings: Settings, *, database: ConnectionPool | None = None
) -> RedisDeliveryLog:
    """Delivery counts, the pending index and the dead letters at ``settings.redis_url``
    (with a ``database``: the pending index is the job records in PostgreSQL, which a Redis
    that lost everything cannot lose, and a dead letter taken back is reopened there).

    Raises:
        QueueUnavailable: no Redis URL configured.
    """
    records = _postgres_job_store(settings, database) if database is not None else None
    return RedisDeliveryLog.from_url(
        require_redis_url(settings),
        settings.queue,
        reopen=records.reopen if records is not None else None,
        pending=records,
    )


def open_worker_registry(settings: Settings) -> RedisWorkerRegistry:
    """Worker heartbeats and named locks at ``settings.redis_url``.

    Raises:
        QueueUnavailable: no Redis URL configured.
    """
    return RedisWorkerRegistry.from_url(require_redis_url(settings), settings.queue)


def open_queue(settings: Settings) -> CeleryQueue:
    """The broker (publisher of job and callback messages).

    Raises:
        QueueUnavailable: no Redis URL configured.
    """
    return CeleryQueue(settings)


def open_callbacks(settings: Settings) -> RedisCallbackOutbox:
    """The callback outbox at ``settings.redis_url`` (every process puts callbacks there; the
    workers deliver them).

    Raises:
        QueueUnavailable: no Redis URL configured.
    """
    return RedisCallbackOutbox.from_url(require_redis_url(settings), settings.queue)


def open_history(settings: Settings, *, blobs: BlobStore | None = None) -> HistoryShards:
    """The embedding history: Parquet shards in the object store (``settings.blobs``)."""
    from moderation.adapters.parquet_history import ParquetHistory  # pyarrow: not in the API

    return HistoryShards(
        blobs or open_blob_store(settings),
        ParquetHistory(),
        retention_s=settings.embeddings.retention_s,
    )


def command_database(settings: Settings) -> ConnectionPool | None:
    """The database pool of a one-shot command (``moderation review``, ``moderation bank``):
    None without ``database.url``; closed when the process exits.

    Raises:
        DatabaseUnavailable, MigrationError: the database cannot be reached or migrated.
    """
    if not database_configured(settings):
        return None
    pool = open_database(settings, application="moderation-cli")
    atexit.register(pool.close)
    return pool


def open_bank_store(settings: Settings, *, database: ConnectionPool | None = None) -> BankStore:
    """The hash banks: in PostgreSQL when the process has a ``database`` pool, else at
    ``settings.redis_url``.

    Raises:
        QueueUnavailable: neither a database nor a Redis URL.
    """
    if database is not None:
        from moderation.adapters.postgres.banks import PostgresBankStore

        return PostgresBankStore(database)
    return RedisBankStore.from_url(require_redis_url(settings), prefix=settings.banks.key_prefix)


def open_notice_store(database: ConnectionPool | None) -> NoticeStore | None:
    """Notices from outside: kept in PostgreSQL only (None without a database: the intake
    endpoint then answers 503 ``notices_unavailable``)."""
    if database is None:
        return None
    from moderation.adapters.postgres.notices import PostgresNoticeStore

    return PostgresNoticeStore(database)


def open_review_queue(settings: Settings, *, database: ConnectionPool | None = None) -> ReviewQueue:
    """The review queue: in PostgreSQL when the process has a ``database`` pool, else at
    ``settings.redis_url``.

    Raises:
        QueueUnavailable: neither a database nor a Redis URL.
    """
    if database is not None:
        from moderation.adapters.postgres.review import PostgresReviewQueue

        return PostgresReviewQueue.from_settings(database, settings.review)
    return RedisReviewQueue.from_url(require_redis_url(settings), settings.review)


def open_reviewers(settings: Settings, *, database: ConnectionPool | None = None) -> ReviewerStore:
    """Reviewer accounts: in PostgreSQL when the process has a ``database`` pool, else at
    ``settings.redis_url``.

    Raises:
        QueueUnavailable: neither a database nor a Redis URL.
    """
    if database is not None:
        from moderation.adapters.postgres.reviewers import PostgresReviewerStore

        return PostgresReviewerStore(database)
    return RedisReviewerStore.from_url(
        require_redis_url(settings), prefix=settings.review.key_prefix
    )


def open_wellbeing_store(
    settings: Settings, *, database: ConnectionPool | None = None
) -> WellbeingStore:
    """Reviewer wellbeing (settings, exposure): in PostgreSQL when the process has a
    ``database`` pool, else at ``settings.redis_url``.

    Raises:
        QueueUnavailable: neither a database nor a Redis URL.
    """
    if database is not None:
        from moderation.adapters.postgres.wellbeing import PostgresWellbeingStore

        return PostgresWellbeingStore(database)
    from moderation.adapters.redis_wellbeing import RedisWellbeingStore

    return RedisWellbeingStore.from_url(
        require_redis_url(settings), prefix=settings.review.key_prefix
    )


def open_reviewer_sessions(settings: Settings) -> RedisReviewerSessions:
    """Raises:
    QueueUnavailable: no Redis URL configured.
    """
    r = settings.review
    return RedisReviewerSessions.from_url(
        require_redis_url(settings),
        idle_s=r.session_idle_s,
        max_s=r.session_ttl_s,
        prefix=r.key_prefix,
    )
