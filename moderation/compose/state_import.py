"""The importer of a Redis-only release's state (``moderation db import-redis``): the Redis
adapters as the source, PostgreSQL as the target."""

from __future__ import annotations

from moderation.adapters.postgres.pool import ConnectionPool
from moderation.adapters.postgres.state_import import PostgresStateImport
from moderation.adapters.redis_banks import RedisBankStore
from moderation.adapters.redis_review import RedisReviewQueue
from moderation.adapters.redis_reviewers import RedisReviewerStore
from moderation.pipeline.state_import import StateImporter
from moderation.settings import Settings

__all__ = ["open_state_importer"]


def open_state_importer(
    settings: Settings, database: ConnectionPool, *, redis_url: str, batch: int = 500
) -> StateImporter:
    """The importer from the Redis at ``redis_url`` (the key prefixes of ``settings``) into
    ``database``."""
    return StateImporter(
        reviews=RedisReviewQueue.from_url(redis_url, settings.review),
        accounts=RedisReviewerStore.from_url(redis_url, prefix=settings.review.key_prefix),
        bank_source=RedisBankStore.from_url(redis_url, prefix=settings.banks.key_prefix),
        target=PostgresStateImport(database),
        lease_s=float(settings.review.lease_s),
        request_ttl_s=settings.banks.request_ttl_s,
        batch=batch,
    )
