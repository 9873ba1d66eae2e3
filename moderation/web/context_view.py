"""What the review page shows around an item besides its verdict (the context panel): the two
decisions of a disagreement for the reviewer who settles it. Only shapes data for the page;
what is looked up, and for whom, is the desk's (:mod:`moderation.pipeline.review_context`)."""

from __future__ import annotations

from typing import Any

from moderation.core.review import reason_options
from moderation.ports import Claim

__all__ = ["disagreement_view"]


def disagreement_view(claim: Claim) -> list[dict[str, Any]] | None:
    """Both reviewers' decisions of a disagreement (oldest first), with readable reason labels;
    None for any other item (a blind second review shows nothing of the first)."""
    first = claim.first
    if first is None or first.disputes is None:
        return None
    labels = {r.code: r.label for r in reason_options(claim.item)}
    return [
        {
            "reviewer": vote.reviewer,
            "decision": vote.decision.value,
            "reason_code": vote.reason_code,
            "reason_label": labels.get(vote.reason_code or "", vote.reason_code),
            "at": vote.decided_at.isoformat(),
        }
        for vote in first.votes()
    ]
