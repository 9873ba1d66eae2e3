"""The human-review queue (the :class:`~moderation.ports.ReviewQueue` twin)."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from moderation.core.appeals import export_with_appeals
from moderation.core.review import (
    FirstDecision,
    HumanDecision,
    Lease,
    ReviewDecision,
    ReviewItem,
    ReviewOutcome,
    apply_decision,
    item_rank,
)
from moderation.core.review_admin import refuse_assignment
from moderation.exceptions import (
    ReviewAlreadyDecided,
    ReviewError,
    ReviewInvalidDecision,
    ReviewLeaseExpired,
    ReviewNotFound,
    ReviewNotLeaseHolder,
    ReviewTakenBack,
    ReviewUndoTooLate,
)
from moderation.ports import (
    Claim,
    DecideResult,
    OutboxEntry,
    ReviewStats,
)

__all__ = ["MemoryReviewQueue"]


@dataclass
class _Entry:
    item: ReviewItem
    rank: float
    state: str = "queued"  # queued | leased | final
    queue: str = "review"
    lease: Lease | None = None
    first: FirstDecision | None = None
    final: HumanDecision | None = None
    final_token: str | None = None
    #: Lease tokens an admin took the item back from.
    taken: set[str] = field(default_factory=set)
    #: Skips: reviewer -> until when the item is not offered to them.
    away: dict[str, float] = field(default_factory=dict)
    #: Reviewers who looked at the image unblurred.
    revealed: set[str] = field(default_factory=set)
    tokens: dict[str, str] = field(default_factory=dict)  # token -> reviewer (every lease)
    submitted: dict[str, tuple[ReviewDecision, str | None]] = field(default_factory=dict)
    delivered: bool = False
    #: Outbox: failed deliveries and when the next attempt is due (None: at decision time).
    attempts: int = 0
    due_at: float | None = None


class MemoryReviewQueue:
    """The :class:`~moderation.ports.ReviewQueue` twin: the same priority, lease and
    second-reviewer rules as the Redis queue (:mod:`moderation.core.review`), on a dict."""

    def __init__(
        self, *, lease_s: float = 300.0, age_doubling_s: float = 900.0, clock: Any = time.time
    ) -> None:
        self.lease_s = lease_s
        self.age_doubling_s = age_doubling_s
        self.clock = clock
        self.entries: dict[str, _Entry] = {}
        self.days: dict[str, dict[str, int]] = {}
        self._lock = threading.RLock()

    def now(self) -> float:
        return float(self.clock())

    def submit(self, item: ReviewItem) -> None:
        with self._lock:
            rank = item_rank(item, age_doubling_s=self.age_doubling_s)
            entry = self.entries.get(item.review_id)
            if entry is None:
                self.entries[item.review_id] = _Entry(item=item, rank=rank, queue=item.queue)
            elif entry.state != "final" and rank > entry.rank:  # a notice raised it
                entry.item, entry.rank = item, rank

    def submit_many(self, items: Sequence[ReviewItem]) -> None:
        for item in items:
            self.submit(item)

    def _reap(self, now: float) -> None:
        for entry in self.entries.values():
            if entry.state == "leased" and entry.lease and entry.lease.expires_at <= now:
                entry.state, entry.lease = "queued", None

    def claim(
        self,
        reviewer: str,
        *,
        policies: list[str] | None = None,
        queues: Sequence[str] = ("review",),
    ) -> Claim | None:
        with self._lock:
            now = self.clock()
            self._reap(now)
            for entry in self.entries.values():
                if entry.state == "leased" and entry.lease and entry.lease.reviewer == reviewer:
                    return self._claim(entry, now)
            waiting = [
                e
                for e in self.entries.values()
                if e.state == "queued"
                and e.queue in queues
                and reviewer not in e.item.barred
                and (not policies or e.item.policy_id in policies)
                and (e.first is None or reviewer not in e.first.deciders())
                and e.away.get(reviewer, 0.0) <= now
            ]
            if not waiting:
                return None
            entry = max(waiting, key=lambda e: e.rank)
            token = secrets.token_urlsafe(18)
            entry.state = "leased"
            entry.lease = Lease(
                review_id=entry.item.review_id,
                reviewer=reviewer,
                token=token,
                expires_at=now + self.lease_s,
            )
            entry.tokens[token] = reviewer
            return self._claim(entry, now)

    @staticmethod
    def _claim(entry: _Entry, now: float) -> Claim:
        assert entry.lease is not None
        return Claim(
            item=entry.item, lease=entry.lease, first=entry.first, now=now, queue=entry.queue
        )

    def move(self, review_id: str, *, reviewer: str, token: str, queue: str) -> bool:
        with self._lock:
            entry = self.entries.get(review_id)
            if entry is None:
                raise ReviewNotFound(f"no review item {review_id}")
            if entry.submitted.get(token) == (ReviewDecision.ESCALATE, None):
                if entry.queue == queue:
                    return True
                raise ReviewAlreadyDecided("a different decision was already recorded")
            self._check_lease(entry, reviewer=reviewer, token=token)
            if entry.queue == queue:
                raise ReviewInvalidDecision(
                    f"the item is already in the {queue} queue", code="review_already_escalated"
                )
            entry.submitted[token] = (ReviewDecision.ESCALATE, None)
            entry.queue, entry.state, entry.lease = queue, "queued", None
            return False

    def _check_lease(self, entry: _Entry, *, reviewer: str, token: str) -> Lease:
        lease = entry.lease
        if lease is None or lease.token != token:
            if entry.tokens.get(token) == reviewer:
                if entry.state == "final":
                    raise ReviewAlreadyDecided("this item was already decided by someone else")
                if token in entry.taken:
                    raise ReviewTakenBack(
                        "an admin took this item back and it went back to the queue; "
                        "the decision was not recorded"
                    )
                raise ReviewLeaseExpired(
                    "your lease on this item expired and it went back to the queue; "
                    "the decision was not recorded"
                )
            raise ReviewNotLeaseHolder("you do not hold a lease on this item")
        if lease.reviewer != reviewer:
            raise ReviewNotLeaseHolder("this lease belongs to another reviewer")
        if lease.expires_at <= self.clock():
            raise ReviewLeaseExpired(
                "your lease on this item expired; the decision was not recorded"
            )
        return lease

    def holds(self, reviewer: str, review_id: str) -> bool:
        entry = self.entries.get(review_id)
        return bool(
            entry
            and entry.state == "leased"
            and entry.lease
            and entry.lease.reviewer == reviewer
            and entry.lease.expires_at > self.clock()
        )

    def item(self, review_id: str) -> ReviewItem:
        entry = self.entries.get(review_id)
        if entry is None:
            raise ReviewNotFound(f"no review item {review_id}")
        return entry.item

    def reveal(self, review_id: str, *, reviewer: str) -> None:
        with self._lock:
            entry = self.entries.get(review_id)
            if entry is None:
                raise ReviewNotFound(f"no review item {review_id}")
            entry.revealed.add(reviewer)

    def revealed(self, review_id: str, *, reviewer: str) -> bool:
        entry = self.entries.get(review_id)
        return entry is not None and reviewer in entry.revealed

    def decide(
        self,
        review_id: str,
        *,
        reviewer: str,
        token: str,
        decision: ReviewDecision,
        reason_code: str | None,
        seen_sha256: str | None = None,
    ) -> DecideResult:
        with self._lock:
            entry = self.entries.get(review_id)
            if entry is None:
                raise ReviewNotFound(f"no review item {review_id}")
            recorded = entry.submitted.get(token)
            if recorded is not None:
                if recorded != (decision, reason_code):
                    raise ReviewAlreadyDecided("a different decision was already recorded")
                pending = entry.first if entry.final is None else None
                return DecideResult(ReviewOutcome(final=entry.final, pending=pending), replay=True)
            now = self.clock()
            lease = self._check_lease(entry, reviewer=reviewer, token=token)
            outcome = apply_decision(
                entry.item,
                entry.first,
                reviewer=reviewer,
                decision=decision,
                reason_code=reason_code,
                token=token,
                now=now,
                seen_sha256=seen_sha256,
                queue=entry.queue,
            )
            entry.submitted[token] = (decision, reason_code)
            entry.lease = None
            day = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")
            counts = self.days.setdefault(day, {})
            counts[reviewer] = counts.get(reviewer, 0) + 1
            if outcome.pending is not None:
                entry.first, entry.state = outcome.pending, "queued"
                entry.queue = outcome.moved_to or entry.queue
            else:
                entry.final, entry.state = outcome.final, "final"
                entry.final_token = token
            claimed_at = lease.expires_at - self.lease_s
            return DecideResult(outcome, replay=False, handling_s=max(0.0, now - claimed_at))

    def release(self, review_id: str, *, reviewer: str | None = None, away_s: float = 0.0) -> bool:
        with self._lock:
            entry = self.entries.get(review_id)
            if entry is None:
                raise ReviewNotFound(f"no review item {review_id}")
            if entry.state == "final":
                raise ReviewAlreadyDecided("the item is already decided")
            if entry.lease is None or (reviewer is not None and entry.lease.reviewer != reviewer):
                return False
            if reviewer is None:
                entry.taken.add(entry.lease.token)
            entry.state, entry.lease = "queued", None
            if reviewer is not None and away_s > 0:
                entry.away[reviewer] = self.clock() + away_s
            return True

    def leases(self) -> list[Lease]:
        with self._lock:
            now = self.clock()
            self._reap(now)
            held = [e.lease for e in self.entries.values() if e.state == "leased" and e.lease]
            return sorted(held, key=lambda lease: lease.expires_at)

    def assign(self, review_id: str, *, reviewer: str, queues: Sequence[str]) -> Lease:
        with self._lock:
            entry = self.entries.get(review_id)
            if entry is None:
                raise ReviewNotFound(f"no review item {review_id}")
            if entry.state == "final":
                raise ReviewAlreadyDecided("the item is already decided")
            now = self.clock()
            self._reap(now)
            if entry.lease is not None and entry.lease.reviewer == reviewer:
                return entry.lease
            refuse_assignment(entry.item, entry.first, reviewer, queue=entry.queue, queues=queues)
            for other in self.entries.values():
                if other.state == "leased" and other.lease and other.lease.reviewer == reviewer:
                    raise ReviewError(
                        f"{reviewer} is working on another item now", code="review_assign_busy"
                    )
            if entry.lease is not None:
                entry.taken.add(entry.lease.token)
            token = secrets.token_urlsafe(18)
            entry.state = "leased"
            entry.lease = Lease(
                review_id=review_id, reviewer=reviewer, token=token, expires_at=now + self.lease_s
            )
            entry.tokens[token] = reviewer
            return entry.lease

    def extend(self, review_id: str, *, reviewer: str, token: str) -> Lease:
        with self._lock:
            entry = self.entries.get(review_id)
            if entry is None:
                raise ReviewNotFound(f"no review item {review_id}")
            now = self.clock()
            lease = entry.lease
            if lease is None or lease.token != token or lease.expires_at <= now:
                if entry.tokens.get(token) == reviewer:
                    if token in entry.taken:
                        raise ReviewTakenBack("an admin took this item back: it is not yours now")
                    raise ReviewLeaseExpired("your lease on this item expired; it was not renewed")
                raise ReviewNotLeaseHolder("you do not hold a lease on this item")
            if lease.reviewer != reviewer:
                raise ReviewNotLeaseHolder("this lease belongs to another reviewer")
            entry.lease = Lease(
                review_id=review_id, reviewer=reviewer, token=token, expires_at=now + self.lease_s
            )
            return entry.lease

    def undo(self, review_id: str, *, reviewer: str, token: str, within_s: float) -> Claim:
        with self._lock:
            entry = self.entries.get(review_id)
            if entry is None:
                raise ReviewNotFound(f"no review item {review_id}")
            now = self.clock()
            final, first = entry.final, entry.first
            if (
                final is not None
                and entry.final_token == token
                and final.reviewers[-1] == reviewer
                and not entry.delivered
                and now - final.decided_at.timestamp() <= within_s
            ):
                decided_at = final.decided_at.timestamp()
                entry.final, entry.final_token, entry.attempts, entry.due_at = None, None, 0, None
            elif (
                final is None
                and first is not None
                and first.token == token
                and first.reviewer == reviewer
                and entry.state == "queued"
                and now - first.at <= within_s
            ):
                decided_at = first.at
                # A disagreement taken back: the first decision waits for its second review
                # again, in the item's own queue (no senior took it yet: it is "queued").
                entry.first = first.disputes
                if first.disputes is not None:
                    entry.queue = entry.item.queue
            else:
                raise ReviewUndoTooLate("this decision can no longer be undone")
            entry.submitted.pop(token, None)
            day = datetime.fromtimestamp(decided_at, UTC).strftime("%Y-%m-%d")
            counts = self.days.get(day, {})
            if counts.get(reviewer):
                counts[reviewer] -= 1
            new_token = secrets.token_urlsafe(18)
            entry.state = "leased"
            expires = now + self.lease_s
            entry.lease = Lease(
                review_id=review_id, reviewer=reviewer, token=new_token, expires_at=expires
            )
            entry.tokens[new_token] = reviewer
            return self._claim(entry, now)

    def delivered(self, review_id: str) -> None:
        entry = self.entries.get(review_id)
        if entry is not None:
            entry.delivered = True

    def undelivered(self, *, older_than_s: float = 0.0) -> list[HumanDecision]:
        cutoff = self.clock() - older_than_s
        return [
            e.final
            for e in self.entries.values()
            if e.final is not None and not e.delivered and e.final.decided_at.timestamp() <= cutoff
        ]

    def due(self, *, limit: int = 100, hold_s: float = 60.0) -> list[OutboxEntry]:
        with self._lock:
            now = self.clock()
            waiting = [
                e
                for e in self.entries.values()
                if e.final is not None
                and not e.delivered
                and (e.due_at if e.due_at is not None else e.final.decided_at.timestamp()) <= now
            ]
            waiting.sort(key=lambda e: e.final.decided_at if e.final else 0)
            out = []
            for entry in waiting[:limit]:
                assert entry.final is not None
                entry.due_at = now + hold_s
                out.append(
                    OutboxEntry(
                        decision=entry.final,
                        attempts=entry.attempts,
                        decided_at=entry.final.decided_at.timestamp(),
                    )
                )
            return out

    def retry_later(self, review_id: str, *, delay_s: float, error: str) -> int:
        with self._lock:
            entry = self.entries.get(review_id)
            if entry is None or entry.final is None or entry.delivered:
                return 0
            entry.attempts += 1
            entry.due_at = self.clock() + delay_s
            return entry.attempts

    def stats(self) -> list[ReviewStats]:
        now = self.clock()
        out = []
        for policy in sorted({e.item.policy_id for e in self.entries.values()}):
            mine = [e for e in self.entries.values() if e.item.policy_id == policy]
            queues = sorted({e.queue for e in mine if e.state != "final"} | {"review"})
            for queue in queues:
                here = [e for e in mine if e.queue == queue]
                open_ = [e.item.created_at for e in here if e.state != "final"]
                out.append(
                    ReviewStats(
                        policy_id=policy,
                        waiting=sum(e.state == "queued" for e in here),
                        in_review=sum(e.state == "leased" for e in here),
                        oldest_age_s=max(0.0, now - min(open_)) if open_ else None,
                        queue=queue,
                    )
                )
        return out

    def decisions_on(self, day: str | None = None) -> dict[str, int]:
        day = day or datetime.fromtimestamp(self.clock(), UTC).strftime("%Y-%m-%d")
        return dict(self.days.get(day, {}))

    def export(self) -> Iterator[dict[str, Any]]:
        decided = [e for e in self.entries.values() if e.final is not None]
        yield from export_with_appeals(
            (e.item, e.final)
            for e in sorted(decided, key=lambda e: e.final.decided_at if e.final else 0)
            if e.final is not None
        )
