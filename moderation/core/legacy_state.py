"""The durable state of a Redis-only release, as the importer into PostgreSQL moves it
(``moderation db import-redis``, :mod:`moderation.pipeline.state_import`).

Each review item travels with everything the Redis queue kept beside it: its state, the current
lease, a pending first decision, the final decision with what its reviewer submitted, and its
outbox entry (when the final decision was not handed on yet). Bank entries travel with their ids
and tombstones, so a match recorded in the audit log before the upgrade still names the same
entry after it. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

from moderation.core.banks import EntryData
from moderation.core.review import FirstDecision, HumanDecision, ReviewDecision, ReviewItem

__all__ = [
    "DecisionRow",
    "ImportCounts",
    "LegacyBankEntry",
    "LegacyOutbox",
    "LegacyReviewRecord",
    "decision_rows",
]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LegacyOutbox(_Frozen):
    """A final decision not handed on yet (the review outbox)."""

    decided_at: float
    #: When the next delivery attempt is due (queue clock, unix seconds).
    due_at: float
    attempts: int = 0
    last_error: str | None = None


class LegacyReviewRecord(_Frozen):
    """One review item with its whole state (see the module docstring)."""

    item: ReviewItem
    state: Literal["queued", "leased", "final"]
    rank: float
    lease_token: str | None = None
    lease_holder: str | None = None
    lease_expires: float | None = None
    first: FirstDecision | None = None
    first_reviewer: str | None = None
    final: HumanDecision | None = None
    final_token: str | None = None
    #: What the last reviewer submitted (a disagreement's final decision is "escalate").
    final_submitted: ReviewDecision | None = None
    final_submitted_reason: str | None = None
    #: When the final decision was recorded (queue clock, unix seconds).
    decided_at: float | None = None
    outbox: LegacyOutbox | None = None
    #: The queue the item is in now (an escalated item: ``escalation``).
    queue: str = "review"

    @property
    def review_id(self) -> str:
        return self.item.review_id

    @property
    def leased(self) -> bool:
        """Whether the record carries a lease (a record without one is imported as queued)."""
        return (
            self.state == "leased"
            and self.lease_token is not None
            and self.lease_holder is not None
            and self.lease_expires is not None
        )


@dataclass(frozen=True, slots=True)
class DecisionRow:
    """One recorded decision (first, second or only), keyed by its lease token."""

    token: str
    review_id: str
    reviewer: str
    decision: ReviewDecision
    reason_code: str | None
    decided_at: float

    @property
    def day(self) -> date:
        return datetime.fromtimestamp(self.decided_at, UTC).date()


def decision_rows(record: LegacyReviewRecord) -> list[DecisionRow]:
    """The decisions a record holds: its pending or earlier first decision and its final one
    (what replays of a submit, per-day counts and "everything this reviewer decided" read)."""
    rows: list[DecisionRow] = []
    first = record.first
    if first is not None:
        rows.append(
            DecisionRow(
                token=first.token,
                review_id=record.review_id,
                reviewer=first.reviewer,
                decision=first.decision,
                reason_code=first.reason_code,
                decided_at=first.at,
            )
        )
    final = record.final
    if (
        final is not None
        and record.final_token is not None
        and (first is None or first.token != record.final_token)
    ):
        rows.append(
            DecisionRow(
                token=record.final_token,
                review_id=record.review_id,
                reviewer=final.reviewers[-1],
                decision=record.final_submitted or final.decision,
                reason_code=(
                    record.final_submitted_reason
                    if record.final_submitted is not None
                    else final.reason_code
                ),
                decided_at=(
                    record.decided_at
                    if record.decided_at is not None
                    else final.decided_at.timestamp()
                ),
            )
        )
    return rows


class LegacyBankEntry(_Frozen):
    """A bank entry with its id, live or tombstoned."""

    id: int
    data: EntryData
    removed: bool = False


@dataclass(slots=True)
class ImportCounts:
    """What one kind of record did in an import: read from Redis, written to PostgreSQL, or
    already there (a re-run, or an earlier interrupted run)."""

    read: int = 0
    imported: int = 0
    present: int = 0
