"""Job records, inline bytes and results (the :class:`~moderation.ports.JobStore` twin)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from moderation.core.fairness import TenantBacklog
from moderation.core.jobs import Job, JobResult, keeps_inline, tenant_of
from moderation.core.review import HumanDecision
from moderation.core.sources import DecisionSource
from moderation.exceptions import QueueFull, TenantQueueFull
from moderation.ports import SingleJobOps

__all__ = ["MemoryJobStore"]


@dataclass
class MemoryJobStore(SingleJobOps):
    """The :class:`~moderation.ports.JobStore` twin. ``pending`` (job id -> time published) is
    the pending index its :class:`~moderation.adapters.memory.MemoryDeliveryLog` reads."""

    jobs: dict[str, Job] = field(default_factory=dict)
    inline: dict[str, bytes] = field(default_factory=dict)
    results: dict[str, JobResult] = field(default_factory=dict)
    ended: list[tuple[str, str]] = field(default_factory=list)
    pending: dict[str, float] = field(default_factory=dict)
    #: Bytes of each job that has not ended, and the cap on their sum (QueueFull over it).
    queued: dict[str, int] = field(default_factory=dict)
    max_queued_bytes: int = 1 << 62
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def create_many(
        self, jobs: Sequence[tuple[Job, bytes | None]], *, tenant_cap: int | None = None
    ) -> list[tuple[Job, bool]]:
        out = []
        with self.lock:
            sizes = {
                job.id: len(job.model_dump_json()) + (len(inline) if inline else 0)
                for job, inline in jobs
                if job.id not in self.jobs
            }
            for tenant in {tenant_of(job_id) for job_id in sizes}:
                mine = sum(v for k, v in sizes.items() if tenant_of(k) == tenant)
                if tenant_cap is not None and self._queued(tenant) + mine > tenant_cap:
                    raise TenantQueueFull(
                        f"tenant {tenant}: queued bytes would exceed {tenant_cap}",
                        retry_after_s=30.0,
                    )
            if sum(self.queued.values()) + sum(sizes.values()) > self.max_queued_bytes:
                raise QueueFull(f"queued bytes would exceed {self.max_queued_bytes}")
            for job, inline in jobs:
                if job.id in self.jobs:
                    out.append((self.jobs[job.id], False))
                    continue
                self.jobs[job.id] = job
                self.results[job.id] = JobResult.queued(job)
                if inline is not None:
                    self.inline[job.image.inline_key] = inline
                self.pending[job.id] = time.time()
                self.queued[job.id] = sizes[job.id]
                out.append((job, True))
        return out

    def delete(self, job_id: str) -> None:
        with self.lock:
            for table in (self.jobs, self.inline, self.results, self.pending, self.queued):
                table.pop(job_id, None)

    def get_jobs(self, job_ids: Sequence[str]) -> list[Job | None]:
        return [self.jobs.get(job_id) for job_id in job_ids]

    def _queued(self, tenant: str | None) -> int:
        return sum(v for k, v in self.queued.items() if tenant is None or tenant_of(k) == tenant)

    def queued_bytes(self, tenant: str | None = None) -> int:
        with self.lock:
            return self._queued(tenant)

    def backlog(self, tenants: Sequence[str]) -> dict[str, TenantBacklog]:
        with self.lock:
            out = {}
            for tenant in tenants:
                mine = [self.jobs[k] for k in self.queued if tenant_of(k) == tenant]
                oldest = min((j.created_at.timestamp() for j in mine), default=None)
                out[tenant] = TenantBacklog(depth=len(mine), oldest_created_at=oldest)
            return out

    def inline_bytes_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return [self.inline.get(key) for key in keys]

    def keep_inline(self, key: str, ttl_s: int) -> None:
        pass  # nothing expires here

    def get_results(self, job_ids: Sequence[str]) -> list[JobResult | None]:
        return [self.results.get(job_id) for job_id in job_ids]

    def result_json(self, job_ids: Sequence[str]) -> list[bytes | None]:
        return [
            r.model_dump_json().encode() if r is not None else None
            for r in self.get_results(job_ids)
        ]

    def finish_many(self, results: Sequence[JobResult]) -> list[bool]:
        out = []
        with self.lock:
            for result in results:
                current = self.results.get(result.job_id)
                if current is not None and current.status.final:
                    out.append(False)
                    continue
                self.results[result.job_id] = result
                self.ended.append((result.job_id, result.status.value))
                self.pending.pop(result.job_id, None)
                self.queued.pop(result.job_id, None)
                if not keeps_inline(result):
                    self.inline.pop(result.job_id, None)
                out.append(True)
        return out

    def set_human(self, job_id: str, human: HumanDecision) -> JobResult | None:
        with self.lock:
            current = self.results.get(job_id)
            if current is None:
                return None
            updated = current.model_copy(update={"human": human})
            self.results[job_id] = updated
            return updated

    def rescore(self, job_id: str, *, reported: DecisionSource) -> Job | None:
        with self.lock:
            job = self.jobs.get(job_id)
            if job is None:
                return None
            job = job.model_copy(update={"reported": reported, "rescores": job.rescores + 1})
            self.jobs[job_id] = job
            self.results[job_id] = JobResult.queued(job)
            self.pending[job_id] = time.time()
            return job

    def outcomes(self, count: int = 100_000) -> list[tuple[str, str]]:
        return list(self.ended[:count])

    def ping(self) -> bool:
        return True
