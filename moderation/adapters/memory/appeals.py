"""In-memory twin of :class:`~moderation.ports.AppealStore` (tests only): appeals in a dict, their
review items in the given review queue."""

from __future__ import annotations

import threading
import time

from moderation.core.appeals import Appeal, AppealStatus
from moderation.core.review import HumanDecision, ReviewDecision, ReviewItem
from moderation.exceptions import AppealNotFound, AppealRefused
from moderation.ports import ReviewQueue

__all__ = ["MemoryAppealStore"]

_STATUS = {
    ReviewDecision.UPHOLD: AppealStatus.UPHELD,
    ReviewDecision.OVERTURN: AppealStatus.OVERTURNED,
}


class MemoryAppealStore:
    def __init__(self, review: ReviewQueue) -> None:
        self.review = review
        self.appeals: dict[str, Appeal] = {}
        self._lock = threading.Lock()

    def file(self, appeal: Appeal, item: ReviewItem) -> Appeal:
        with self._lock:
            same = next(
                (
                    a
                    for a in self.appeals.values()
                    if a.job_id == appeal.job_id and a.number == appeal.number
                ),
                None,
            )
            if same is not None:
                if same.statement == appeal.statement:
                    return same
                raise AppealRefused(
                    "this decision was already appealed", code="appeal_limit_reached"
                )
            self.review.submit(item)
            self.appeals[appeal.appeal_id] = appeal
            return appeal

    def count(self, job_id: str) -> int:
        return sum(a.job_id == job_id for a in self.appeals.values())

    def get(self, appeal_id: str) -> Appeal | None:
        return self.appeals.get(appeal_id)

    def for_job(self, job_id: str) -> list[Appeal]:
        return sorted(
            (a for a in self.appeals.values() if a.job_id == job_id), key=lambda a: a.number
        )

    def decide(self, appeal_id: str, *, decision: HumanDecision) -> Appeal:
        with self._lock:
            appeal = self.appeals.get(appeal_id)
            if appeal is None:
                raise AppealNotFound(f"no appeal {appeal_id}")
            decided = appeal.model_copy(
                update={
                    "status": _STATUS[decision.decision],
                    "reason_code": decision.reason_code,
                    "decided_by": decision.reviewers[-1],
                    "decided_at": decision.decided_at,
                }
            )
            self.appeals[appeal_id] = decided
            return decided

    def decided(self, *, since: float | None = None) -> list[Appeal]:
        out = [
            a
            for a in self.appeals.values()
            if a.decided_at is not None and (since is None or a.decided_at.timestamp() >= since)
        ]
        return sorted(out, key=lambda a: (a.decided_at or a.filed_at, a.appeal_id))

    def backlog(self) -> tuple[int, float | None]:
        open_ = [
            a.filed_at.timestamp() for a in self.appeals.values() if a.status is AppealStatus.OPEN
        ]
        return len(open_), (max(0.0, time.time() - min(open_)) if open_ else None)
