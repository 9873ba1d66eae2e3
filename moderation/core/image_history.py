"""Earlier decisions on the same image, for the reviewer's context panel. Pure: no I/O.

An image a tenant sent before (the same scored bytes: equal ``content_sha256``; or the same
picture re-encoded: equal PDQ hash) may have been decided already, by the model or by a
reviewer. The reviewer sees those decisions with their dates, and only the same tenant's:
tenants are hostile to each other, so another tenant's decisions on the same image are never
looked up, let alone shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = ["EarlierDecision", "MatchedBy"]

#: How an earlier job matched the item: the exact scored bytes, or the PDQ hash only.
MatchedBy = str


@dataclass(frozen=True, slots=True)
class EarlierDecision:
    """One earlier job of the same tenant on the same image, and what was decided on it."""

    #: The tenant's own job id (never a scoped id).
    job_id: str
    created_at: datetime
    #: ``sha256`` (the same bytes) or ``pdq`` (the same PDQ hash, other bytes).
    matched_by: MatchedBy
    #: The model's verdict: allow / review / block (None: the job has no verdict).
    verdict: str | None
    policy_id: str | None
    category_id: str | None
    score: float | None
    #: The final human decision on it (None: no reviewer decided it).
    human: str | None = None
    human_reason_code: str | None = None
    human_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "created_at": self.created_at.isoformat(),
            "matched_by": self.matched_by,
            "verdict": self.verdict,
            "category": (
                f"{self.policy_id}/{self.category_id}"
                if self.policy_id and self.category_id
                else None
            ),
            "score": self.score,
            "human": self.human,
            "human_reason_code": self.human_reason_code,
            "human_at": self.human_at.isoformat() if self.human_at else None,
        }
