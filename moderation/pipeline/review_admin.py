"""A review admin's actions on the queue, in one place, each audited (kind ``admin``,
:mod:`moderation.core.review_admin` has the rules):

- :meth:`ReviewAdmin.requeue`: take an item back from whoever holds it (back to its queue; the
  holder's page says an admin took it back);
- :meth:`ReviewAdmin.release`: take back every item a reviewer holds (one who left);
- :meth:`ReviewAdmin.reassign`: lease an item to a named reviewer (who may work its queue);
- :meth:`ReviewAdmin.redeliver`: hand on again the final decisions whose delivery failed.

The admin pages (:mod:`moderation.web`) and the API only parse, call these and map errors.
Order: the action first, then its audit record; a record that cannot be made durable raises
(the admin sees the failure; the action itself already happened and is idempotent to repeat).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from moderation.core.review_admin import AdminAction, record_for_review_admin
from moderation.core.reviewers import allowed_queues
from moderation.exceptions import ReviewError, ReviewNotFound
from moderation.metrics import metrics
from moderation.pipeline.review_desk import ReviewDesk
from moderation.ports import AuditSink, ReviewerStore

__all__ = ["InReview", "ReviewAdmin"]


@dataclass(frozen=True, slots=True)
class InReview:
    """An item someone holds now, as an admin sees it."""

    review_id: str
    job_id: str
    policy_id: str
    category_id: str
    severity: str
    #: The holder's pseudonym.
    reviewer: str
    seconds_left: float


class ReviewAdmin:
    """The review admin's use cases over a :class:`~moderation.pipeline.review_desk.ReviewDesk`.

    Args:
        desk: the reviewing use case (its queue and outbox).
        users: reviewer accounts (a reassignment names an account).
        pseudonym: an account's pseudonym (how the queue knows reviewers).
        audit: where each action is recorded; None only in tools without an audit log.
    """

    def __init__(
        self,
        desk: ReviewDesk,
        *,
        users: ReviewerStore,
        pseudonym: Callable[[str], str],
        audit: AuditSink | None,
    ) -> None:
        self.desk = desk
        self.queue = desk.queue
        self.users = users
        self.pseudonym = pseudonym
        self.audit = audit

    def in_review(self) -> list[InReview]:
        """Every item held now, soonest lease to run out first."""
        now = self.queue.now()
        held = []
        for lease in self.queue.leases():
            try:
                item = self.queue.item(lease.review_id)
            except ReviewNotFound:  # pruned meanwhile
                continue
            held.append(
                InReview(
                    review_id=lease.review_id,
                    job_id=item.job_id,
                    policy_id=item.policy_id,
                    category_id=item.category_id,
                    severity=item.severity.value,
                    reviewer=lease.reviewer,
                    seconds_left=max(0.0, lease.expires_at - now),
                )
            )
        return held

    def requeue(self, review_id: str, *, by: str) -> bool:
        """Take ``review_id`` back from its holder (False: nobody held it). Audited.

        Raises:
            ReviewNotFound: no such item.
            ReviewAlreadyDecided: it is final.
        """
        holder = self._holder(review_id)
        taken = self.desk.requeue(review_id)
        self._audit(AdminAction.REQUEUE, by, review_id, {"from": holder, "taken_back": taken})
        return taken

    def release(self, reviewer: str, *, by: str) -> list[str]:
        """Take back every item ``reviewer`` (a pseudonym) holds; returns their review ids.
        Audited, one record per item.

        Raises:
            ReviewError: the reviewer holds nothing (code ``review_nothing_held``).
        """
        held = [lease.review_id for lease in self.queue.leases() if lease.reviewer == reviewer]
        if not held:
            raise ReviewError(f"{reviewer} holds no item now", code="review_nothing_held")
        # Taken back as by requeue: the holder's page says an admin took it.
        released = [rid for rid in held if self.queue.release(rid)]
        for rid in released:
            self._audit(AdminAction.RELEASE, by, rid, {"from": reviewer})
        return released

    def reassign(self, review_id: str, *, to: str, by: str) -> str:
        """Lease ``review_id`` to the account ``to`` (taken back from whoever held it);
        returns the new holder's pseudonym. Audited.

        Raises:
            ReviewNotFound: no such item, or no such enabled account (code
                ``review_unknown_user``).
            ReviewAlreadyDecided: it is final.
            ReviewError: the account may not take it (``review_assign_refused``) or holds
                another item (``review_assign_busy``).
        """
        name = to.strip().lower()
        account = self.users.get(name)
        if account is None or account.disabled:
            raise ReviewNotFound(f"no enabled reviewer {name!r}", code="review_unknown_user")
        holder = self._holder(review_id)
        target = self.pseudonym(name)
        self.queue.assign(review_id, reviewer=target, queues=allowed_queues(account))
        self._audit(AdminAction.REASSIGN, by, review_id, {"from": holder, "to": target})
        return target

    def redeliver(self, *, by: str, older_than_s: float = 30.0) -> tuple[int, int]:
        """Hand on again the final decisions waiting in the outbox at least ``older_than_s``:
        (waiting, delivered now). Audited."""
        pending, delivered = self.desk.deliver_outbox(older_than_s=older_than_s)
        metrics().review_admin_actions.labels(AdminAction.REDELIVER.value).inc()
        if self.audit is not None:
            self.audit.write(
                record_for_review_admin(
                    AdminAction.REDELIVER,
                    actor=by,
                    details={"waiting": pending, "delivered": delivered},
                )
            )
        return pending, delivered

    def _holder(self, review_id: str) -> str | None:
        self.queue.item(review_id)  # ReviewNotFound first
        return next((x.reviewer for x in self.queue.leases() if x.review_id == review_id), None)

    def _audit(
        self, action: AdminAction, by: str, review_id: str, details: dict[str, object]
    ) -> None:
        metrics().review_admin_actions.labels(action.value).inc()
        if self.audit is None:
            return
        item = self.queue.item(review_id)
        self.audit.write(record_for_review_admin(action, actor=by, item=item, details=details))
