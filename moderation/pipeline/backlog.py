"""Per-tenant backlog: what ``/metrics`` shows of each configured tenant's unfinished jobs
(depth, the oldest one's age, the bytes they hold against the tenant's share)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from moderation.ports import BacklogReader, JobStore

__all__ = ["TenantBacklogRow", "tenant_backlog"]


@dataclass(frozen=True, slots=True)
class TenantBacklogRow:
    tenant: str
    depth: int
    oldest_age_s: float
    queued_bytes: int


def tenant_backlog(
    reader: BacklogReader, store: JobStore, tenants: Sequence[str], *, now: float | None = None
) -> list[TenantBacklogRow]:
    """One row per tenant (only those given: a bounded metric label).

    Raises:
        QueueUnavailable: the store cannot be reached.
    """
    now = time.time() if now is None else now
    found = reader.backlog(list(tenants))
    return [
        TenantBacklogRow(
            tenant=tenant,
            depth=found[tenant].depth,
            oldest_age_s=found[tenant].oldest_age_s(now),
            queued_bytes=store.queued_bytes(tenant),
        )
        for tenant in tenants
    ]
