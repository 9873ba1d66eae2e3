"""Delivery counts, side-effect marks, the pending index and dead letters (the
:class:`~moderation.ports.DeliveryLog` twin)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from moderation.adapters.memory.jobs import MemoryJobStore
from moderation.core.jobs import Job, JobResult
from moderation.ports import DeadLetter, SingleDeliveryOps

__all__ = ["MemoryDeliveryLog"]


@dataclass
class MemoryDeliveryLog(SingleDeliveryOps):
    """The :class:`~moderation.ports.DeliveryLog` twin over the records of ``jobs`` (its pending
    index; a dead letter taken back resets the job's result there)."""

    jobs: MemoryJobStore
    deliveries: dict[str, int] = field(default_factory=dict)
    effects: set[str] = field(default_factory=set)
    dlq: dict[str, DeadLetter] = field(default_factory=dict)

    def count_deliveries(self, job_ids: Sequence[str]) -> list[int]:
        with self.jobs.lock:
            for job_id in job_ids:
                self.deliveries[job_id] = self.deliveries.get(job_id, 0) + 1
            return [self.deliveries[job_id] for job_id in job_ids]

    def uncount_deliveries(self, job_ids: Sequence[str]) -> None:
        with self.jobs.lock:
            for job_id in job_ids:
                self.deliveries[job_id] = max(0, self.deliveries.get(job_id, 0) - 1)

    def effects_done_many(self, job_ids: Sequence[str]) -> list[bool]:
        return [job_id in self.effects for job_id in job_ids]

    def mark_effects_done_many(self, job_ids: Sequence[str]) -> None:
        self.effects.update(job_ids)

    def reset(self, job_id: str) -> None:
        with self.jobs.lock:
            self.deliveries.pop(job_id, None)
            self.effects.discard(job_id)

    def forget_ended(self, job_ids: Sequence[str]) -> None:
        """Start counts go; effect marks stay (a twin has no clock: within the grace)."""
        with self.jobs.lock:
            for job_id in job_ids:
                self.deliveries.pop(job_id, None)

    def dead_letter(self, job_id: str, *, reason: str, deliveries: int) -> None:
        self.dlq[job_id] = DeadLetter(
            job_id=job_id, reason=reason, deliveries=deliveries, at=datetime.now(UTC)
        )

    def dead_letters(self) -> list[DeadLetter]:
        return sorted(self.dlq.values(), key=lambda d: d.at)

    def take_dead_letter(self, job_id: str) -> Job | None:
        with self.jobs.lock:
            if self.dlq.pop(job_id, None) is None or job_id not in self.jobs.jobs:
                return None
            job = self.jobs.jobs[job_id]
            self.jobs.results[job_id] = JobResult.queued(job)
            self.deliveries.pop(job_id, None)
            self.effects.discard(job_id)
            self.jobs.pending[job_id] = time.time()
            return job

    def purge_dead_letters(self) -> int:
        n = len(self.dlq)
        self.dlq.clear()
        return n

    def dead_letter_count(self) -> int:
        return len(self.dlq)

    def stale_pending(self, older_than_s: float, limit: int = 1000) -> list[str]:
        cutoff = time.time() - older_than_s
        ordered = sorted(self.jobs.pending.items(), key=lambda x: x[1])
        return [job_id for job_id, at in ordered if at <= cutoff][:limit]

    def oldest_pending_age(self) -> float | None:
        pending = self.jobs.pending
        return time.time() - min(pending.values()) if pending else None

    def mark_republished(self, job_id: str) -> None:
        if job_id in self.jobs.pending:
            self.jobs.pending[job_id] = time.time()

    def forget_pending(self, job_id: str) -> None:
        self.jobs.pending.pop(job_id, None)
