"""The Redis key layout of jobs, shared by the job store, the delivery log and the worker
registry (documented in :mod:`moderation.adapters.redis_jobs`)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["JobKeys"]


@dataclass(frozen=True, slots=True)
class JobKeys:
    """``{prefix}{kind}:{job_id}``, or ``{prefix}{kind}`` for the store-wide keys."""

    prefix: str

    def key(self, kind: str, job_id: str = "") -> str:
        return f"{self.prefix}{kind}:{job_id}" if job_id else f"{self.prefix}{kind}"
