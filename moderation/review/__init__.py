"""Human review of borderline verdicts: the pure model (items, leases, decisions, priority, the
second-reviewer rule) and reviewer authentication. The Redis queue lives in
:mod:`moderation.adapters.redis_review`, the web page in :mod:`moderation.web`."""

from moderation.review.model import (
    FinalReviewDecision,
    FirstDecision,
    Lease,
    PolicyText,
    ReviewDecision,
    ReviewItem,
    ReviewOutcome,
    apply_decision,
    item_from_verdict,
    priority,
    pseudonym,
    rank_key,
    review_id_for,
)

__all__ = [
    "FinalReviewDecision",
    "FirstDecision",
    "Lease",
    "PolicyText",
    "ReviewDecision",
    "ReviewItem",
    "ReviewOutcome",
    "apply_decision",
    "item_from_verdict",
    "priority",
    "pseudonym",
    "rank_key",
    "review_id_for",
]
