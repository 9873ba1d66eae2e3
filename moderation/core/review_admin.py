"""A review admin's actions on the queue: the rules. Pure: no I/O.

An admin may take an item back from its holder (*requeue*), release whatever a reviewer holds
(*release*: a reviewer who left), lease an item to a named reviewer (*reassign*), and hand on
again the final decisions whose delivery failed (*redeliver*). Every action is audited
(:func:`moderation.core.audit.record_for_review_admin`). Reassigning follows the same rules as
claiming: never to a reviewer barred from the item (an appeal of its own decision) nor to the
first reviewer of a critical removal (the second review is blind and by someone else).
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import Any

from moderation.core.audit.records import AuditRecord
from moderation.core.review import FirstDecision, ReviewItem
from moderation.exceptions import AuditError, ReviewError

__all__ = ["AdminAction", "record_for_review_admin", "refuse_assignment"]


class AdminAction(str, Enum):
    """What an admin did (the audit record's ``decision``)."""

    REQUEUE = "review_requeued"
    RELEASE = "review_released"
    REASSIGN = "review_reassigned"
    REDELIVER = "outbox_redelivered"


def refuse_assignment(
    item: ReviewItem,
    first: FirstDecision | None,
    reviewer: str,
    *,
    queue: str,
    queues: Sequence[str],
) -> None:
    """Whether ``reviewer`` (who may work ``queues``) may be given ``item``, which waits in
    ``queue``.

    Raises:
        ReviewError: it may not (code ``review_assign_refused``).
    """
    if queue not in queues:
        raise ReviewError(
            f"this reviewer may not work the {queue} queue", code="review_assign_refused"
        )
    if reviewer in item.barred:
        raise ReviewError(
            "this reviewer may not take the item (it appeals their own decision)",
            code="review_assign_refused",
        )
    if first is not None and reviewer in first.deciders():
        raise ReviewError(
            "this reviewer already decided the item: its next review is someone else's",
            code="review_assign_refused",
        )


def record_for_review_admin(
    action: AdminAction,
    *,
    actor: str,
    item: ReviewItem | None = None,
    details: dict[str, Any] | None = None,
) -> AuditRecord:
    """The audit record of an admin's action (kind ``admin``, ``decision`` the action): who
    (the admin's pseudonym), on which item (its job, policy and category; none for a
    redelivery), and what came of it (``details``: the reviewers concerned, by pseudonym).

    Raises:
        AuditError: ``actor`` is empty.
    """
    if not actor.strip():
        raise AuditError("an admin action names who took it", code="audit_no_actor")
    return AuditRecord(
        kind="admin",
        job_id=item.job_id if item is not None else "review/outbox",
        content_sha256=item.content_sha256 if item is not None else None,
        content_ref=None,
        policy_id=item.policy_id if item is not None else None,
        policy_version=item.policy_version if item is not None else None,
        compiled_policy_hash=None,
        model_id=None,
        weights_sha256=None,
        category_id=item.category_id if item is not None else None,
        decision=action.value,
        actor=actor.strip(),
        details={**({"review_id": item.review_id} if item is not None else {}), **(details or {})},
    )
