"""Per-tenant backlog in the Redis job-key layout (``P backlog:<t>``: job id -> creation time of
the tenant's jobs that have not ended), read the same way by the Redis job store and by the
transients beside a PostgreSQL job store."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis

from moderation.adapters.support.job_keys import JobKeys
from moderation.core.fairness import TenantBacklog

__all__ = ["read_backlog"]


def read_backlog(
    client: redis.Redis, keys: JobKeys, tenants: Sequence[str]
) -> dict[str, TenantBacklog]:
    """Per tenant: how many of its jobs have not ended, and when the oldest was created (one
    round trip). Redis errors propagate; the callers translate them."""
    if not tenants:
        return {}
    pipe = client.pipeline(transaction=False)
    for tenant in tenants:
        pipe.zcard(keys.key("backlog", tenant))
        pipe.zrange(keys.key("backlog", tenant), 0, 0, withscores=True)
    raw: list[Any] = pipe.execute()
    return {
        tenant: TenantBacklog(
            depth=int(raw[2 * i]),
            oldest_created_at=float(raw[2 * i + 1][0][1]) if raw[2 * i + 1] else None,
        )
        for i, tenant in enumerate(tenants)
    }
