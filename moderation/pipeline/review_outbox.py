"""Handing final human decisions on, and trying again until it worked: the review outbox.

A final decision stays in the queue's outbox (:meth:`~moderation.ports.ReviewQueue.due`) until
``on_final`` (the job's result, audit records, callback, a bank addition) returned. The first
attempt is made at once by whoever recorded the decision (:class:`~moderation.pipeline.
review_desk.ReviewDesk`); when it fails, or the process dies before it returns, the workers'
maintenance (:meth:`ReviewOutbox.deliver_due`, every ``review.outbox_retry_s``) tries again,
``review.outbox_backoff_s`` after a failure, doubling per failure up to
``review.outbox_backoff_max_s`` (:func:`~moderation.core.review.outbox_delay`). Nobody has to
click anything. ``on_final`` is idempotent (record ids derive from the review), so a decision
handed on twice (a process that died after ``on_final`` but before :meth:`~moderation.ports.
ReviewQueue.delivered`) changes nothing downstream. Several workers share the due entries: each
one taken is held back from the others while it is tried.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from moderation.core.review import HumanDecision, outbox_delay
from moderation.exceptions import ModerationError
from moderation.metrics import metrics
from moderation.pipeline.review_evidence import ReviewEvidence
from moderation.ports import ReviewQueue

__all__ = ["OnFinal", "ReviewOutbox"]

log = logging.getLogger(__name__)

#: Hands a final human decision on (result, audit, callback); raises ``ModerationError`` when it
#: cannot now (the decision stays in the outbox).
OnFinal = Callable[[HumanDecision], object]


class ReviewOutbox:
    """Delivery of final decisions with automatic retry.

    Args:
        queue: the review queue holding the outbox.
        on_final: hands one final decision on.
        evidence: the scored bytes of the items, retired once a decision is handed on (None:
            none kept).
        backoff_s, backoff_max_s: the delay after the first failure, doubled per failure up to
            the maximum.
        batch: entries taken per :meth:`deliver_due` round.
        hold_s: how long an entry taken by one process is hidden from the others.
    """

    def __init__(
        self,
        queue: ReviewQueue,
        on_final: OnFinal,
        *,
        evidence: ReviewEvidence | None = None,
        backoff_s: float = 5.0,
        backoff_max_s: float = 600.0,
        batch: int = 100,
        hold_s: float = 60.0,
    ) -> None:
        self.queue = queue
        self.on_final = on_final
        self.evidence = evidence
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.batch = batch
        self.hold_s = hold_s

    def hand_on(self, final: HumanDecision, *, attempts: int = 0) -> bool:
        """Run ``on_final``; on success drop the decision from the outbox, on failure schedule
        its next attempt. Returns whether it was handed on.

        Raises:
            ModerationError: the queue itself cannot be reached (the decision stays due).
        """
        try:
            self.on_final(final)
            if self.evidence is not None:
                self.evidence.retire(self.queue.item(final.review_id), final.decided_at)
        except ModerationError as exc:
            metrics().review_handoffs.labels("failed").inc()
            delay = outbox_delay(attempts + 1, base_s=self.backoff_s, max_s=self.backoff_max_s)
            self.queue.retry_later(final.review_id, delay_s=delay, error=f"{exc.code}: {exc}")
            log.warning(
                "handing on review %s failed (%s, attempt %d); next try in %.0f s",
                final.review_id,
                exc.code,
                attempts + 1,
                delay,
            )
            return False
        self.queue.delivered(final.review_id)
        metrics().review_handoffs.labels("delivered").inc()
        return True

    def deliver_due(self) -> tuple[int, int]:
        """Try every due decision once (up to ``batch``): (tried, handed on)."""
        entries = self.queue.due(limit=self.batch, hold_s=self.hold_s)
        done = sum(self.hand_on(e.decision, attempts=e.attempts) for e in entries)
        if entries:
            log.info("review outbox: %d of %d due decisions handed on", done, len(entries))
        return len(entries), done
