"""The embedding history's tools (``moderation history``): the old Redis history to import."""

from __future__ import annotations

from moderation.adapters.redis_history import RedisHistoryReader
from moderation.exceptions import QueueUnavailable
from moderation.settings import Settings

__all__ = ["open_old_history"]


def open_old_history(
    settings: Settings, *, url: str | None = None, key: str | None = None
) -> RedisHistoryReader:
    """The Redis stream an older version kept the history in: ``url`` or the deprecated
    ``embeddings.redis_url`` or ``redis_url``; ``key`` or ``embeddings.key``.

    Raises:
        QueueUnavailable: no Redis URL to read from.
    """
    where = url or settings.embeddings.redis_url or settings.redis_url
    if not where:
        raise QueueUnavailable(
            "no Redis to import from: pass --redis-url (or set MODERATION_REDIS_URL)"
        )
    return RedisHistoryReader.from_url(where, key or settings.embeddings.key)
