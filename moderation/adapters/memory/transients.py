"""Inline bytes, queued bytes and the pending index of running jobs (the
:class:`~moderation.ports.JobTransients` twin)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from moderation.core.fairness import TenantBacklog
from moderation.core.jobs import Job, tenant_of
from moderation.exceptions import QueueFull, TenantQueueFull

__all__ = ["MemoryJobTransients"]


@dataclass
class MemoryJobTransients:
    """The :class:`~moderation.ports.JobTransients` twin."""

    inline: dict[str, bytes] = field(default_factory=dict)
    pending: dict[str, float] = field(default_factory=dict)
    queued: dict[str, int] = field(default_factory=dict)
    max_queued_bytes: int = 1 << 62
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    #: Job id -> (tenant, creation time) of the jobs that have not ended.
    backlogs: dict[str, tuple[str, float]] = field(default_factory=dict)

    def _queued(self, tenant: str | None) -> int:
        if tenant is None:
            return sum(self.queued.values())
        return sum(n for job_id, n in self.queued.items() if tenant_of(job_id) == tenant)

    def hold_many(
        self, jobs: Sequence[tuple[Job, bytes | None]], *, tenant_cap: int | None = None
    ) -> None:
        with self.lock:
            sizes = {
                job.id: len(job.model_dump_json()) + (len(inline) if inline else 0)
                for job, inline in jobs
                if job.id not in self.queued
            }
            if tenant_cap is not None:
                for tenant in {tenant_of(job_id) for job_id in sizes}:
                    mine = sum(n for j, n in sizes.items() if tenant_of(j) == tenant)
                    if self._queued(tenant) + mine > tenant_cap:
                        raise TenantQueueFull(
                            f"tenant {tenant}: queued bytes would exceed {tenant_cap}",
                            retry_after_s=30.0,
                        )
            if self._queued(None) + sum(sizes.values()) > self.max_queued_bytes:
                raise QueueFull(f"queued bytes would exceed {self.max_queued_bytes}")
            now = time.time()
            for job, inline in jobs:
                self.queued.setdefault(job.id, sizes.get(job.id, 0))
                self.pending[job.id] = now
                self.backlogs[job.id] = (tenant_of(job.id), job.created_at.timestamp())
                if inline is not None:
                    self.inline[job.image.inline_key if job.image.inline else job.id] = inline

    def release_many(self, ended: Sequence[tuple[str, bool]]) -> None:
        with self.lock:
            for job_id, drop_inline in ended:
                self.pending.pop(job_id, None)
                self.queued.pop(job_id, None)
                self.backlogs.pop(job_id, None)
                if drop_inline:
                    self.inline.pop(job_id, None)

    def drop(self, job_id: str, inline_key: str | None = None) -> None:
        self.release_many([(job_id, True)])
        with self.lock:
            self.inline.pop(inline_key or job_id, None)

    def queued_bytes(self, tenant: str | None = None) -> int:
        with self.lock:
            return self._queued(tenant)

    def backlog(self, tenants: Sequence[str]) -> dict[str, TenantBacklog]:
        with self.lock:
            out = {}
            for tenant in tenants:
                times = [at for t, at in self.backlogs.values() if t == tenant]
                out[tenant] = TenantBacklog(
                    depth=len(times), oldest_created_at=min(times) if times else None
                )
            return out

    def inline_bytes_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return [self.inline.get(key) for key in keys]

    def keep_inline(self, key: str, ttl_s: int) -> None:
        pass  # nothing expires here

    def ping(self) -> bool:
        return True
