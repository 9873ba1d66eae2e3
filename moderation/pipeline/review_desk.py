"""Reviewing, in one place: what a reviewer (or a review admin) can do, whatever the page.

:class:`ReviewDesk` claims the next item, shows its image, records a decision (with "remove and
add to bank"), gives an item back, and hands every final decision on (``on_final``: the job's
result, audit records and callback, :meth:`~moderation.pipeline.outcomes.Outcomes.
record_human_decision`), keeping it in the queue's outbox until that succeeded. The reviewers'
pages (:mod:`moderation.web`) only parse requests, call it and map its errors.

The image a reviewer sees is always the exact bytes that were scored, from the object store
and verified against the item's ``content_sha256`` (:class:`~moderation.pipeline.
review_evidence.ReviewEvidence`); the source URL is never fetched again. An item whose bytes are
gone or do not verify shows no image and can only be removed or escalated, never allowed. Each
final decision carries the hash of the bytes the deciding reviewer was shown (``seen_sha256``,
in its audit records), and once it has been handed on, the bytes are retired (deleted
``review.evidence_retention_s`` later).

Crash ordering of a decision: the queue records it (and the lease is consumed) first; then, once
it is final, ``on_final`` runs and only then is the decision dropped from the outbox. A crash or
an ``on_final`` failure in between leaves it in the outbox, from where the workers hand it on
again with backoff (:mod:`moderation.pipeline.review_outbox`), or an admin at once
(:meth:`ReviewDesk.deliver_outbox`); ``on_final`` is idempotent: record ids derive from the
review.

Undo window: with ``undo_window_s`` > 0 a final decision is recorded at once (the lease is
consumed, the decision sits in the outbox) but not handed on: its first hand-on is due
``undo_window_s`` (plus a short margin) later, made by the workers' outbox maintenance, so a
closed tab neither loses nor skips it. Until then the deciding reviewer may take it back
(:meth:`ReviewDesk.undo`: the item is leased to them again); a critical removal waiting for its
second reviewer can be taken back while no second reviewer holds it, and a second review that
disagreed while no senior holds the escalation (the item returns to its second review).

Disagreements: a second reviewer who does not remove a critical item the first one removed does
not overwrite that removal (nor is it overwritten): the item goes to the escalation queue with
both decisions (:attr:`Decided.disagreement`), shown to the senior reviewer who settles it; the
final decision names all three and keeps both votes for the audit records.

Escalations: ``escalate`` is not a final decision: the item moves to the escalation queue
(:data:`~moderation.core.review.ESCALATION_QUEUE`), which senior reviewers and admins work and
where one decision is final; it cannot be undone from the page (a senior has it now).

Reveals: images start blurred; the page records the first time a reviewer unblurs an item's
image (:meth:`ReviewDesk.reveal`). A critical item cannot be allowed or removed by a reviewer who
never looked at it (escalating needs no look; an item without its image has nothing to look at),
whatever the page does: the rule is the desk's, not the script's.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from moderation.core.review import (
    DEFAULT_QUEUE,
    ESCALATION_QUEUE,
    HumanDecision,
    ReviewDecision,
    ReviewItem,
)
from moderation.exceptions import (
    ReviewAlreadyDecided,
    ReviewEvidenceUnavailable,
    ReviewInvalidDecision,
    ReviewNotFound,
    ReviewUndoTooLate,
)
from moderation.metrics import metrics
from moderation.pipeline.banks import BankService
from moderation.pipeline.review_context import same_image
from moderation.pipeline.review_evidence import ReviewEvidence
from moderation.pipeline.review_outbox import OnFinal, ReviewOutbox
from moderation.pipeline.wellbeing import Wellbeing
from moderation.ports import Claim, ImageHistory, ReviewQueue, ReviewStats

#: Seconds after the undo window before the workers hand a decision on: an undo racing the
#: window's end is decided by the queue, never after the hand-on started.
UNDO_MARGIN_S = 2.0

__all__ = ["Decided", "OnFinal", "ReviewDesk", "VideoView"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class VideoView:
    """A video item's filmstrip as the page shows it: when each sampled frame was shown, which
    one decided the verdict (its top frame), or why the frames cannot be shown."""

    timestamps: tuple[float, ...]
    top_index: int | None
    problem: str | None


@dataclass(frozen=True, slots=True)
class Decided:
    """What became of a reviewer's decision."""

    #: The final decision, or None while it waits for a second reviewer.
    final: HumanDecision | None
    decision: ReviewDecision
    #: True when this exact decision had already been recorded (a retried submit).
    replay: bool
    #: Whether the final decision was handed on now (None: not final, or a replay).
    delivered: bool | None
    #: A second review that disagreed with the first: the item went to the escalation queue
    #: with both decisions, for a third reviewer.
    disagreement: bool = False


class ReviewDesk:
    """The review use case over a :class:`~moderation.ports.ReviewQueue`.

    Args:
        queue: the review queue (leases, decisions, outbox).
        on_final: hands each final decision on.
        evidence: the scored bytes of the items (the only image a reviewer is shown).
        render_image: turns untrusted image bytes into what a browser is shown (a safe PNG).
        banks: offers "remove and add to bank" (None: not offered).
        backoff_s, backoff_max_s: when a failed hand-on is tried again
            (:class:`~moderation.pipeline.review_outbox.ReviewOutbox`).
        undo_window_s: how long a reviewer may take a decision back before it is handed on
            (0: handed on at once, no undo).
        skip_away_s: how long an item a reviewer skipped is not offered to them again.
        uploader_context: the repeat-offender context of an item's uploader (its earlier
            decisions with the same tenant; :meth:`~moderation.pipeline.strikes.Enforcement.
            context`), None where strikes are not kept.
        image_history: earlier jobs on the same image (same tenant), for the context panel;
            None where job records are not searchable (no database).
        wellbeing: records each reviewer's exposure (items shown, unblurred) as the desk hands
            them out (:class:`~moderation.pipeline.wellbeing.Wellbeing`); None: not recorded.
    """

    def __init__(
        self,
        queue: ReviewQueue,
        *,
        on_final: OnFinal,
        evidence: ReviewEvidence,
        render_image: Callable[[bytes], bytes],
        banks: BankService | None = None,
        backoff_s: float = 5.0,
        backoff_max_s: float = 600.0,
        undo_window_s: float = 0.0,
        skip_away_s: float = 0.0,
        uploader_context: Callable[[ReviewItem], dict[str, Any] | None] | None = None,
        image_history: ImageHistory | None = None,
        wellbeing: Wellbeing | None = None,
    ) -> None:
        self.queue = queue
        self.undo_window_s = undo_window_s
        self.skip_away_s = skip_away_s
        self.on_final = on_final
        self.evidence = evidence
        self.outbox = ReviewOutbox(
            queue, on_final, evidence=evidence, backoff_s=backoff_s, backoff_max_s=backoff_max_s
        )
        self.render_image = render_image
        self.banks = banks
        #: The uploader's history and the same image's earlier decisions (the context panel).
        self.uploader_lookup = uploader_context
        self.image_history = image_history
        self.wellbeing = wellbeing

    @property
    def lease_s(self) -> float:
        return self.queue.lease_s

    # --- a reviewer -------------------------------------------------------------------------

    def claim(
        self,
        reviewer: str,
        *,
        policies: list[str] | None = None,
        queues: Sequence[str] = (DEFAULT_QUEUE,),
    ) -> Claim | None:
        """The next item for ``reviewer`` from ``queues`` (or the one it already holds),
        leased to it. The caller checks that the reviewer may work those queues
        (:func:`moderation.core.reviewers.allowed_queues`)."""
        claim = self.queue.claim(reviewer, policies=policies, queues=queues)
        if claim is not None and self.wellbeing is not None:
            self.wellbeing.shown(reviewer, claim.item)
        return claim

    def uploader_context(self, item: ReviewItem) -> dict[str, Any] | None:
        """The item's uploader's earlier decisions with the same tenant (None: no uploader,
        or strikes are not kept here)."""
        if self.uploader_lookup is None or item.uploader_id is None:
            return None
        return self.uploader_lookup(item)

    def same_image(self, item: ReviewItem) -> dict[str, Any] | None:
        """Earlier decisions on the item's image with the same tenant (None: no hash, or
        job records are not kept where they can be searched:
        :func:`~moderation.pipeline.review_context.same_image`)."""
        if self.image_history is None:
            return None
        return same_image(self.image_history, item)

    def bank_targets(self, item: ReviewItem) -> list[str]:
        """The banks a removal of ``item`` may add its image to."""
        return self.banks.bank_targets(item) if self.banks is not None else []

    def image(self, reviewer: str, review_id: str) -> bytes:
        """The image of an item leased to ``reviewer``, rendered for the browser: the exact
        bytes that were scored, verified first.

        Raises:
            ReviewNotFound: no such item, or it is not leased to ``reviewer`` (one answer for
                both, so an id cannot be probed).
            ReviewEvidenceUnavailable: the scored bytes are gone or do not verify.
            ImageError: the image cannot be decoded.
            BlobStoreUnavailable: the object store cannot be reached now.
        """
        if not self.queue.holds(reviewer, review_id):
            raise ReviewNotFound("no item with that id leased to you")
        return self.render_image(self.evidence.show(self.queue.item(review_id)).data)

    def frame(self, reviewer: str, review_id: str, index: int) -> bytes:
        """A sampled frame of a video item leased to ``reviewer``, rendered for the browser:
        the still kept at scoring time (never the source, never a re-decode), checked first.

        Raises:
            ReviewNotFound: no such item or frame, or the item is not leased to ``reviewer``.
            ReviewEvidenceUnavailable: the frames are gone or do not verify.
            ImageError: the still cannot be decoded.
            BlobStoreUnavailable: the object store cannot be reached now.
        """
        if not self.queue.holds(reviewer, review_id):
            raise ReviewNotFound("no item with that id leased to you")
        strip = self.evidence.filmstrip(self.queue.item(review_id))
        if not 0 <= index < len(strip):
            raise ReviewNotFound(f"no frame {index} (the video has {len(strip)} sampled frames)")
        return self.render_image(strip.stills[index])

    def filmstrip(self, item: ReviewItem) -> VideoView | None:
        """What the reviewer of a video item sees besides the verdict: its sampled frames (how
        many, when), or why they cannot be shown. None for a still image."""
        video = item.verdict.video
        if video is None:
            return None
        try:
            strip = self.evidence.filmstrip(item)
        except ReviewEvidenceUnavailable as exc:
            return VideoView(timestamps=(), top_index=None, problem=str(exc))
        times = strip.timestamps
        top = min(range(len(times)), key=lambda i: abs(times[i] - video.top_frame_s))
        return VideoView(timestamps=times, top_index=top, problem=None)

    def reveal(self, reviewer: str, review_id: str) -> None:
        """Record that ``reviewer`` looked at the image of the item it holds, unblurred: a
        critical item needs this before its reviewer may allow or remove it.

        Raises:
            ReviewNotFound: no such item, or it is not leased to ``reviewer``.
        """
        if not self.queue.holds(reviewer, review_id):
            raise ReviewNotFound("no item with that id leased to you")
        self.queue.reveal(review_id, reviewer=reviewer)
        if self.wellbeing is not None:
            self.wellbeing.revealed(reviewer, self.queue.item(review_id))

    def revealed(self, reviewer: str, review_id: str) -> bool:
        """Whether ``reviewer`` ever looked at the item's image unblurred."""
        return self.queue.revealed(review_id, reviewer=reviewer)

    def evidence_problem(self, item: ReviewItem) -> str | None:
        """Why ``item``'s scored bytes (a video's: and its sampled frames) cannot be shown
        (None: they verify)."""
        try:
            self.evidence.show(item)
        except ReviewEvidenceUnavailable as exc:
            return str(exc)
        view = self.filmstrip(item)
        return view.problem if view is not None else None

    def decide(
        self,
        reviewer: str,
        *,
        review_id: str,
        token: str,
        decision: ReviewDecision,
        reason_code: str | None,
        add_to_bank: str | None = None,
    ) -> Decided:
        """Record ``reviewer``'s decision on a leased item; hand it on once it is final.

        Raises:
            ReviewError: not found, lease expired, not the holder, already decided, or an
                invalid decision (a bank addition with anything but a removal, or where banks
                are not offered, "allow" on an item whose scored bytes are gone or do not
                verify, or "allow"/"remove" on a critical item whose image this reviewer never
                looked at unblurred: code ``review_reveal_required``, see :meth:`reveal`).
            BlobStoreUnavailable: the object store cannot be reached now.
        """
        item = self.queue.item(review_id)
        seen = self.evidence.seen(item)
        view = self.filmstrip(item)
        if view is not None and view.problem is not None:
            seen = None  # a video whose frames cannot be shown was not seen
        if seen is None and decision in (ReviewDecision.ALLOW, ReviewDecision.OVERTURN):
            raise ReviewInvalidDecision(
                "the scored image is gone or does not verify: this item can only be removed "
                "or escalated"
                if decision is ReviewDecision.ALLOW
                else "the scored image is gone or does not verify: this appeal can only be "
                "upheld (nothing is reinstated unseen)",
                code="review_evidence_unavailable",
            )
        if add_to_bank is not None:
            if decision is not ReviewDecision.REMOVE:
                raise ReviewInvalidDecision("only a removal can add the image to a bank")
            if self.banks is None:
                raise ReviewInvalidDecision("adding to banks is not available here")
            self.banks.check_request(self.queue.item(review_id), bank=add_to_bank)
        if (
            item.critical
            and seen is not None
            and decision is not ReviewDecision.ESCALATE
            and not self.queue.revealed(review_id, reviewer=reviewer)
        ):
            raise ReviewInvalidDecision(
                "a critical item needs one look at its image before it is allowed or removed "
                "(or escalate it)",
                code="review_reveal_required",
            )
        if decision is ReviewDecision.ESCALATE:
            # Not a final decision: the item waits in the escalation queue for a senior
            # reviewer (the move is refused when it is there already).
            if reason_code is not None:
                raise ReviewInvalidDecision("a reason code is only given with a removal")
            replay = self.queue.move(
                review_id, reviewer=reviewer, token=token, queue=ESCALATION_QUEUE
            )
            if not replay:
                metrics().review_decisions.labels(item.policy_id, "escalated").inc()
            return Decided(final=None, decision=decision, replay=replay, delivered=None)
        result = self.queue.decide(
            review_id,
            reviewer=reviewer,
            token=token,
            decision=decision,
            reason_code=reason_code,
            seen_sha256=seen,
        )
        if add_to_bank is not None and self.banks is not None and not result.replay:
            self.banks.request_addition(
                self.queue.item(review_id), bank=add_to_bank, reviewer=reviewer
            )
        final = result.outcome.final
        delivered: bool | None = None
        disagreement = result.outcome.disagreement
        if not result.replay:
            self._count(
                review_id,
                final,
                result.handling_s,
                label="disagreement" if disagreement else None,
            )
            if disagreement:
                log.info("review %s: second review disagreed, sent to escalation", review_id)
            if final is not None and self.undo_window_s > 0:
                # Deferred: the workers hand it on once the undo window has passed.
                self.queue.retry_later(
                    review_id,
                    delay_s=self.undo_window_s + UNDO_MARGIN_S,
                    error="undo window: handed on when it has passed",
                )
                delivered = False
            elif final is not None:
                delivered = self._deliver(final)
        return Decided(
            final=final,
            decision=final.decision if final else decision,
            replay=result.replay,
            delivered=delivered,
            disagreement=disagreement,
        )

    def extend(self, reviewer: str, *, review_id: str, token: str) -> float:
        """Renew the reviewer's lease on the item it is looking at (another ``lease_s``);
        returns the seconds it has left now.

        Raises:
            ReviewLeaseExpired: it ran out, or an admin took the item back, first.
            ReviewNotLeaseHolder, ReviewNotFound: not the reviewer's lease.
        """
        lease = self.queue.extend(review_id, reviewer=reviewer, token=token)
        return lease.seconds_left(self.queue.now())

    def undo(
        self, reviewer: str, *, review_id: str, token: str, holding: str | None = None
    ) -> Claim:
        """Take back ``reviewer``'s decision on ``review_id`` (made under lease ``token``)
        within the undo window; the item is leased to the reviewer again. ``holding``: the item
        the reviewer was given next, handed back to the queue first.

        Raises:
            ReviewUndoTooLate: no undo window here, it has passed, the decision was handed on,
                or a second reviewer has the item.
            ReviewNotFound: no such item.
        """
        if self.undo_window_s <= 0:
            raise ReviewUndoTooLate("decisions are final at once here: there is no undo")
        if holding is not None and holding != review_id:
            # Nothing held there any more: nothing to give back.
            with contextlib.suppress(ReviewNotFound, ReviewAlreadyDecided):
                self.queue.release(holding, reviewer=reviewer)
        claim = self.queue.undo(
            review_id, reviewer=reviewer, token=token, within_s=self.undo_window_s
        )
        metrics().review_decisions.labels(claim.item.policy_id, "undone").inc()
        return claim

    def release(self, review_id: str, *, reviewer: str) -> bool:
        """Give a leased item back to the queue (skip): other reviewers get it at once, this
        one not for ``skip_away_s``."""
        return self.queue.release(review_id, reviewer=reviewer, away_s=self.skip_away_s)

    def decisions_today(self, reviewer: str) -> int:
        return self.queue.decisions_on().get(reviewer, 0)

    def stats(self) -> list[ReviewStats]:
        return self.queue.stats()

    # --- a review admin ---------------------------------------------------------------------

    def requeue(self, review_id: str) -> bool:
        """Take an item back from whoever holds it."""
        return self.queue.release(review_id)

    def decisions_by_reviewer(self) -> dict[str, int]:
        """Decisions today per (pseudonymous) reviewer."""
        return self.queue.decisions_on()

    def undelivered(self) -> int:
        """Final decisions not handed on yet."""
        return len(self.queue.undelivered())

    def deliver_outbox(self, *, older_than_s: float = 30.0) -> tuple[int, int]:
        """Hand on again the final decisions that have waited in the outbox at least
        ``older_than_s`` (their first delivery failed, or its process died): (waiting,
        delivered now)."""
        # Never inside a decision's undo window: it may still be taken back.
        if self.undo_window_s > 0:
            older_than_s = max(older_than_s, self.undo_window_s + UNDO_MARGIN_S)
        pending = self.queue.undelivered(older_than_s=older_than_s)
        return len(pending), sum(self._deliver(final) for final in pending)

    # --- internals --------------------------------------------------------------------------

    def _deliver(self, final: HumanDecision) -> bool:
        return self.outbox.hand_on(final)

    def _count(
        self,
        review_id: str,
        final: HumanDecision | None,
        handling_s: float | None,
        *,
        label: str | None = None,
    ) -> None:
        m = metrics()
        policy = final.policy_id if final else self.queue.item(review_id).policy_id
        outcome = label or (final.decision.value if final else "pending_second")
        m.review_decisions.labels(policy, outcome).inc()
        if handling_s is not None:
            m.review_handling.labels(policy).observe(handling_s)
