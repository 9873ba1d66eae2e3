"""Per-tenant admission (the :class:`~moderation.ports.RateLimiter` twin)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from moderation.core.admission import Admission, Bucket, Tenant, take

__all__ = ["MemoryRateLimiter"]


@dataclass
class MemoryRateLimiter:
    """The :class:`~moderation.ports.RateLimiter` twin: :func:`moderation.core.admission.take`
    on a dict, on ``clock`` (a fake clock in tests)."""

    clock: Callable[[], float] = time.time
    buckets: dict[str, Bucket] = field(default_factory=dict)

    def admit(self, tenant: Tenant, n: int) -> Admission:
        admission, bucket = take(self.buckets.get(tenant.name), n, self.clock(), tenant)
        self.buckets[tenant.name] = bucket
        return admission
