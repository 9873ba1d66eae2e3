"""Earlier jobs on the same image (the :class:`~moderation.ports.ImageHistory` twin), read from
a :class:`~moderation.adapters.memory.MemoryJobStore`'s results."""

from __future__ import annotations

from datetime import UTC, datetime

from moderation.adapters.memory.jobs import MemoryJobStore
from moderation.core.image_history import EarlierDecision
from moderation.core.jobs import JobResult, public_id, tenant_of

__all__ = ["MemoryImageHistory", "earlier_from_result"]


def earlier_from_result(result: JobResult, *, matched_by: str) -> EarlierDecision:
    """One job's result as an earlier decision on its image."""
    verdict, human = result.verdict, result.human
    return EarlierDecision(
        job_id=public_id(result.job_id),
        created_at=result.created_at or datetime.fromtimestamp(0, UTC),
        matched_by=matched_by,
        verdict=verdict.decision.value if verdict else None,
        policy_id=verdict.policy_id if verdict else None,
        category_id=verdict.category_id if verdict else None,
        score=verdict.score if verdict else None,
        human=human.decision.value if human else None,
        human_reason_code=human.reason_code if human else None,
        human_at=human.decided_at if human else None,
    )


class MemoryImageHistory:
    """The same lookup as the PostgreSQL one, over the twin job store's results."""

    def __init__(self, jobs: MemoryJobStore) -> None:
        self.jobs = jobs

    def earlier(
        self,
        tenant: str,
        *,
        content_sha256: str | None,
        content_pdq: str | None,
        exclude_job: str,
        limit: int = 10,
    ) -> list[EarlierDecision]:
        out = []
        for job_id, result in list(self.jobs.results.items()):
            if job_id == exclude_job or tenant_of(job_id) != tenant:
                continue
            if content_sha256 is not None and result.content_sha256 == content_sha256:
                out.append(earlier_from_result(result, matched_by="sha256"))
            elif content_pdq is not None and result.content_pdq == content_pdq:
                out.append(earlier_from_result(result, matched_by="pdq"))
        out.sort(key=lambda e: e.created_at, reverse=True)
        return out[:limit]
