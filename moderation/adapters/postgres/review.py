"""The human-review queue on PostgreSQL (the system of record for reviewing).

Tables (``migrations/0010_review.sql``)::

    review_items      one row per item: its JSON, policy, rank key, state (queued | leased |
                      final), the current lease (token, holder, expiry), a pending first decision
                      and the final decision
    review_policies   every policy that ever had an item (stats list them)
    review_leases     every lease handed out (pruned after a day by the delivery loop):
                      "expired" vs "not yours"
    review_decisions  every recorded decision, one per lease token: replays, per-day counts,
                      "everything this reviewer decided"
    review_away       skipped items kept away from the reviewer who skipped them until a time
                      (``migrations/0020_review_away.sql``)
    review_outbox     final decisions not handed on yet, with the time of the next attempt and
                      the attempts so far (the delivery loop retries them with backoff)

Claiming is one transaction: a per-reviewer advisory lock (one reviewer's two tabs cannot take
two items), reap expired leases (``FOR UPDATE SKIP LOCKED``, so reapers never wait on each
other), return the lease the reviewer already holds, else take the highest-ranked waiting item
with ``FOR UPDATE SKIP LOCKED``: a row another reviewer is taking is skipped, and one it has just
taken no longer matches ``state = 'queued'`` when re-checked, so two reviewers never get the same
item. A partial unique index (one leased row per holder) states the same rule in the schema.

Deciding locks the item's row (``FOR UPDATE``), so only the current lease holder's first submit
counts; the decision row, the item's new state and (when final) its outbox row are written in
the same transaction. A retry of the same submit (same token) returns the recorded outcome. All
times are the database server's clock. Connection errors become
:class:`~moderation.exceptions.DatabaseUnavailable` (transient).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from psycopg import Connection
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from moderation.adapters.postgres.errors import database_errors
from moderation.core.appeals import corrected_row
from moderation.core.review import (
    FirstDecision,
    HumanDecision,
    Lease,
    ReviewDecision,
    ReviewItem,
    ReviewOutcome,
    apply_decision,
    export_row,
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
from moderation.ports import Claim, DecideResult, OutboxEntry, ReviewStats
from moderation.settings import ReviewSettings

__all__ = ["INSERT_ITEM", "PostgresReviewQueue", "item_row"]

_WHAT = "review queue"
#: Expired leases put back per claim (the rest on the next claims).
_REAP = 500
#: Lease rows (tokens) are kept this long after their claim.
_LEASE_ROWS_S = 24 * 3600
_PRUNE_EVERY_S = 3600.0


def _dump(model: Any) -> Jsonb:
    return Jsonb(model.model_dump(mode="json"))


#: Queue one review item (:func:`item_row` gives the values). The same id again is a no-op,
#: unless it raises the rank of an item still waiting (a notice about it).
INSERT_ITEM = (
    "INSERT INTO review_items (review_id, policy_id, job_id, item, rank, created_at, queue,"
    " queued_at, barred) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (review_id) DO UPDATE"
    " SET item = EXCLUDED.item, rank = EXCLUDED.rank"
    " WHERE review_items.state <> 'final' AND EXCLUDED.rank > review_items.rank"
)


def item_row(item: ReviewItem, *, age_doubling_s: float) -> tuple[Any, ...]:
    """The values of :data:`INSERT_ITEM` for ``item``."""
    rank = item_rank(item, age_doubling_s=age_doubling_s)
    return (
        item.review_id,
        item.policy_id,
        item.job_id,
        _dump(item),
        rank,
        item.created_at,
        item.queue,
        item.created_at,
        list(item.barred),
    )


class PostgresReviewQueue:
    """The :class:`~moderation.ports.ReviewQueue` on PostgreSQL (thread-safe: a pool)."""

    def __init__(self, pool: ConnectionPool, *, lease_s: float, age_doubling_s: float) -> None:
        self._pool = pool
        self.lease_s = lease_s
        self.age_doubling_s = age_doubling_s
        self._pruned_at = float("-inf")  # time.monotonic() of the last prune()

    @classmethod
    def from_settings(cls, pool: ConnectionPool, settings: ReviewSettings) -> PostgresReviewQueue:
        return cls(pool, lease_s=settings.lease_s, age_doubling_s=settings.age_doubling_s)

    @staticmethod
    def _now(conn: Connection[Any]) -> float:
        [(now,)] = conn.execute("SELECT extract(epoch FROM clock_timestamp())").fetchall()
        return float(now)

    def now(self) -> float:
        """The database server's clock (all lease times use it)."""
        with database_errors(_WHAT), self._pool.connection() as conn:
            return self._now(conn)

    # --- producer side --------------------------------------------------------------------

    def submit(self, item: ReviewItem) -> None:
        """Enqueue an item. Submitting the same ``review_id`` again is a no-op, unless the
        new item ranks higher and the old one is not decided yet: then it replaces it (a notice
        raising a waiting item's priority).

        Raises:
            DatabaseUnavailable: the database is unreachable.
        """
        self.submit_many([item])

    def submit_many(self, items: Sequence[ReviewItem]) -> None:
        """:meth:`submit` for a batch's items: one transaction of two statements, whatever
        their number (the hot path: a worker's batch message).

        Raises:
            DatabaseUnavailable: the database is unreachable.
        """
        ranked: dict[str, tuple[ReviewItem, float]] = {}
        for item in items:  # one row per id (the highest rank) for ON CONFLICT DO UPDATE
            rank = item_rank(item, age_doubling_s=self.age_doubling_s)
            held = ranked.get(item.review_id)
            if held is None or rank > held[1]:
                ranked[item.review_id] = (item, rank)
        if not ranked:
            return
        rows = list(ranked.values())
        with database_errors(_WHAT), self._pool.connection() as conn, conn.transaction():
            conn.execute(
                "INSERT INTO review_policies (policy_id) SELECT unnest(%s::text[])"
                " ON CONFLICT DO NOTHING",
                (sorted({item.policy_id for item, _ in rows}),),
            )
            conn.execute(
                "INSERT INTO review_items"
                " (review_id, policy_id, job_id, item, rank, created_at, queue, queued_at)"
                " SELECT r, p, j, i::jsonb, k, c, q, c FROM unnest(%s::text[], %s::text[],"
                "   %s::text[], %s::text[], %s::float8[], %s::float8[], %s::text[])"
                "   AS t(r, p, j, i, k, c, q)"
                " ON CONFLICT (review_id) DO UPDATE"
                " SET item = EXCLUDED.item, rank = EXCLUDED.rank"
                " WHERE review_items.state <> 'final' AND EXCLUDED.rank > review_items.rank",
                (
                    [item.review_id for item, _ in rows],
                    [item.policy_id for item, _ in rows],
                    [item.job_id for item, _ in rows],
                    [item.model_dump_json() for item, _ in rows],
                    [rank for _, rank in rows],
                    [item.created_at for item, _ in rows],
                    [item.queue for item, _ in rows],
                ),
            )

    # --- reviewer side --------------------------------------------------------------------

    def claim(
        self,
        reviewer: str,
        *,
        policies: list[str] | None = None,
        queues: Sequence[str] = ("review",),
    ) -> Claim | None:
        """Lease the highest-priority item the reviewer may take (or the one they already hold).

        ``reviewer`` is the pseudonymous id; ``queues`` are the queues it may work and
        ``policies`` limits the policies looked at; an item that bars ``reviewer`` (an appeal
        of its own decision) is never offered to it. Returns None when nothing is waiting.

        Raises:
            DatabaseUnavailable: the database is unreachable.
        """
        token = secrets.token_urlsafe(18)
        with database_errors(_WHAT), self._pool.connection() as conn, conn.transaction():
            conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended('review-claim:' || %s, 0))",
                (reviewer,),
            )
            now = self._now(conn)
            conn.execute(
                "UPDATE review_items SET state = 'queued', lease_token = NULL,"
                " lease_holder = NULL, lease_expires = NULL"
                " WHERE review_id IN (SELECT review_id FROM review_items"
                "   WHERE state = 'leased' AND lease_expires <= %s"
                "   ORDER BY lease_expires LIMIT %s FOR UPDATE SKIP LOCKED)",
                (now, _REAP),
            )
            conn.execute(  # this reviewer's own expired lease, whatever the reaping left
                "UPDATE review_items SET state = 'queued', lease_token = NULL,"
                " lease_holder = NULL, lease_expires = NULL"
                " WHERE state = 'leased' AND lease_holder = %s AND lease_expires <= %s",
                (reviewer, now),
            )
            held = conn.execute(
                "SELECT review_id, lease_token, lease_expires, item, first_decision, queue"
                " FROM review_items WHERE state = 'leased' AND lease_holder = %s"
                " AND lease_expires > %s",
                (reviewer, now),
            ).fetchone()
            if held is not None:
                rid, tok, expires, item_json, first_json, queue = held
                return self._claim(rid, reviewer, tok, expires, item_json, first_json, now, queue)
            row = conn.execute(
                "SELECT review_id FROM review_items i WHERE state = 'queued'"
                " AND queue = ANY(%s) AND NOT (%s = ANY(barred))"
                " AND first_reviewer IS DISTINCT FROM %s"
                " AND (first_decision -> 'disputes' ->> 'reviewer') IS DISTINCT FROM %s"
                " AND (%s::text[] IS NULL OR policy_id = ANY(%s::text[]))"
                " AND NOT EXISTS (SELECT 1 FROM review_away a WHERE a.reviewer = %s"
                "   AND a.review_id = i.review_id AND a.until > %s)"
                " ORDER BY rank DESC LIMIT 1 FOR UPDATE SKIP LOCKED",
                (
                    list(queues),
                    reviewer,
                    reviewer,
                    reviewer,
                    policies or None,
                    policies or None,
                    reviewer,
                    now,
                ),
            ).fetchone()
            if row is None:
                return None
            expires, taken = self._lease(conn, row[0], reviewer, token, now)
            return self._claim(row[0], reviewer, token, expires, taken[0], taken[1], now, taken[2])

    def _lease(
        self, conn: Connection[Any], review_id: str, reviewer: str, token: str, now: float
    ) -> tuple[float, Any]:
        """Lease ``review_id`` to ``reviewer`` under ``token`` for ``lease_s`` from ``now``,
        recorded in ``review_leases``; returns the expiry and the item's (item,
        first_decision, queue) row."""
        expires = now + self.lease_s
        taken = conn.execute(
            "UPDATE review_items SET state = 'leased', lease_token = %s, lease_holder = %s,"
            " lease_expires = %s WHERE review_id = %s RETURNING item, first_decision, queue",
            (token, reviewer, expires, review_id),
        ).fetchone()
        assert taken is not None
        conn.execute(
            "INSERT INTO review_leases (token, review_id, reviewer, claimed_at, expires_at)"
            " VALUES (%s, %s, %s, %s, %s)",
            (token, review_id, reviewer, now, expires),
        )
        return expires, taken

    @staticmethod
    def _claim(
        rid: str,
        reviewer: str,
        token: str,
        expires: float,
        item_json: Any,
        first_json: Any,
        now: float,
        queue: str,
    ) -> Claim:
        return Claim(
            item=ReviewItem.model_validate(item_json),
            lease=Lease(review_id=rid, reviewer=reviewer, token=token, expires_at=float(expires)),
            first=FirstDecision.model_validate(first_json) if first_json else None,
            now=now,
            queue=queue,
        )

    def move(self, review_id: str, *, reviewer: str, token: str, queue: str) -> bool:
        """The lease holder sends the item to ``queue`` (see :meth:`~moderation.ports.
        ReviewQueue.move`); recorded as its ``escalate`` decision.

        Raises:
            ReviewInvalidDecision: the item is in ``queue`` already.
            ReviewError: not found, lease expired or taken back, not the holder, decided.
            DatabaseUnavailable: the database is unreachable.
        """
        with database_errors(_WHAT), self._pool.connection() as conn, conn.transaction():
            row = conn.execute(
                "SELECT state, lease_token, lease_holder, lease_expires, queue"
                " FROM review_items WHERE review_id = %s FOR UPDATE",
                (review_id,),
            ).fetchone()
            if row is None:
                raise ReviewNotFound(f"no review item {review_id}")
            state, lease_token, holder, expires, current = row
            recorded = conn.execute(
                "SELECT decision FROM review_decisions WHERE token = %s AND review_id = %s",
                (token, review_id),
            ).fetchone()
            if recorded is not None:
                if recorded[0] == ReviewDecision.ESCALATE.value and current == queue:
                    return True
                raise ReviewAlreadyDecided(
                    f"a different decision ({recorded[0]}) was already recorded for this lease"
                )
            now = self._now(conn)
            self._check_lease(
                conn, review_id, reviewer, token, state, lease_token, holder, expires, now
            )
            if current == queue:
                raise ReviewInvalidDecision(
                    f"the item is already in the {queue} queue", code="review_already_escalated"
                )
            conn.execute(
                "INSERT INTO review_decisions"
                " (token, review_id, reviewer, decision, reason_code, decided_at, day)"
                " VALUES (%s, %s, %s, %s, NULL, %s, %s)",
                (
                    token,
                    review_id,
                    reviewer,
                    ReviewDecision.ESCALATE.value,
                    now,
                    datetime.fromtimestamp(now, UTC).date(),
                ),
            )
            conn.execute(
                "UPDATE review_items SET state = 'queued', lease_token = NULL, lease_holder = NULL,"
                " lease_expires = NULL, queue = %s, queued_at = %s WHERE review_id = %s",
                (queue, now, review_id),
            )
        return False

    @staticmethod
    def _check_lease(
        conn: Connection[Any],
        review_id: str,
        reviewer: str,
        token: str,
        state: str,
        lease_token: str | None,
        holder: str | None,
        expires: float | None,
        now: float,
    ) -> None:
        """Refuse a stale or foreign lease (as ``decide`` does)."""
        if lease_token == token:
            if holder != reviewer:
                raise ReviewNotLeaseHolder("this lease belongs to another reviewer")
            if expires is None or float(expires) <= now:
                raise ReviewLeaseExpired(
                    "your lease on this item expired; the decision was not recorded"
                )
            return
        owner = conn.execute(
            "SELECT reviewer, taken_back FROM review_leases WHERE token = %s AND review_id = %s",
            (token, review_id),
        ).fetchone()
        if owner is None or owner[0] != reviewer:
            raise ReviewNotLeaseHolder("you do not hold a lease on this item")
        if state == "final":
            raise ReviewAlreadyDecided("this item was already decided by someone else")
        if owner[1]:
            raise ReviewTakenBack(
                "an admin took this item back and it went back to the queue; "
                "the decision was not recorded"
            )
        raise ReviewLeaseExpired(
            "your lease on this item expired and it went back to the queue; "
            "the decision was not recorded"
        )

    def holds(self, reviewer: str, review_id: str) -> bool:
        """Whether ``reviewer`` holds an unexpired lease on ``review_id`` right now."""
        with database_errors(_WHAT), self._pool.connection() as conn:
            row = conn.execute(
                "SELECT 1 FROM review_items WHERE review_id = %s AND state = 'leased'"
                " AND lease_holder = %s"
                " AND lease_expires > extract(epoch FROM clock_timestamp())",
                (review_id, reviewer),
            ).fetchone()
        return row is not None

    def reveal(self, review_id: str, *, reviewer: str) -> None:
        """Raises:
        ReviewNotFound: no such item.
        """
        with database_errors(_WHAT), self._pool.connection() as conn:
            row = conn.execute(
                "INSERT INTO review_reveals (review_id, reviewer, at)"
                " SELECT review_id, %s, extract(epoch FROM clock_timestamp())"
                " FROM review_items WHERE review_id = %s"
                " ON CONFLICT (review_id, reviewer) DO UPDATE SET at = EXCLUDED.at"
                " RETURNING 1",
                (reviewer, review_id),
            ).fetchone()
        if row is None:
            raise ReviewNotFound(f"no review item {review_id}")

    def revealed(self, review_id: str, *, reviewer: str) -> bool:
        with database_errors(_WHAT), self._pool.connection() as conn:
            row = conn.execute(
                "SELECT 1 FROM review_reveals WHERE review_id = %s AND reviewer = %s",
                (review_id, reviewer),
            ).fetchone()
        return row is not None

    def item(self, review_id: str) -> ReviewItem:
        """Raises:
        ReviewNotFound: no such item.
        """
        with database_errors(_WHAT), self._pool.connection() as conn:
            row = conn.execute(
                "SELECT item FROM review_items WHERE review_id = %s", (review_id,)
            ).fetchone()
        if row is None:
            raise ReviewNotFound(f"no review item {review_id}")
        return ReviewItem.model_validate(row[0])

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
        """Record a decision from the current lease holder (see the module docstring).
        ``seen_sha256``: the hash of the bytes the reviewer was shown (kept in the decision).

        Raises:
            ReviewNotFound: no such item.
            ReviewLeaseExpired: the caller's lease ran out (the decision is not recorded).
            ReviewNotLeaseHolder: the caller never held this lease.
            ReviewAlreadyDecided: a different decision was already recorded for this lease.
            ReviewInvalidDecision: bad reason code, or the first reviewer doing the second review.
            DatabaseUnavailable: the database is unreachable.
        """
        with database_errors(_WHAT), self._pool.connection() as conn, conn.transaction():
            row = conn.execute(
                "SELECT item, state, lease_token, lease_holder, lease_expires, first_decision,"
                " final_decision, final_token, queue FROM review_items WHERE review_id = %s"
                " FOR UPDATE",
                (review_id,),
            ).fetchone()
            if row is None:
                raise ReviewNotFound(f"no review item {review_id}")
            item_json, state, lease_token, holder, expires, first_json, final_json, final_tok = row[
                :8
            ]
            queue = row[8]
            first = FirstDecision.model_validate(first_json) if first_json else None
            recorded = conn.execute(
                "SELECT decision, reason_code FROM review_decisions"
                " WHERE token = %s AND review_id = %s",
                (token, review_id),
            ).fetchone()
            if recorded is not None:
                if (ReviewDecision(recorded[0]), recorded[1]) != (decision, reason_code):
                    raise ReviewAlreadyDecided(
                        f"a different decision ({recorded[0]}) was already recorded for this lease"
                    )
                if final_tok == token:
                    return DecideResult(
                        ReviewOutcome(final=HumanDecision.model_validate(final_json)), replay=True
                    )
                return DecideResult(ReviewOutcome(pending=first), replay=True)
            now = self._now(conn)
            self._check_lease(
                conn, review_id, reviewer, token, state, lease_token, holder, expires, now
            )
            item = ReviewItem.model_validate(item_json)
            outcome = apply_decision(
                item,
                first,
                reviewer=reviewer,
                decision=decision,
                reason_code=reason_code,
                token=token,
                now=now,
                seen_sha256=seen_sha256,
                queue=queue,
            )
            self._write(conn, item, reviewer, outcome, token, now, (decision, reason_code))
            claimed_at = float(expires) - self.lease_s
            return DecideResult(
                outcome=outcome, replay=False, handling_s=max(0.0, now - claimed_at)
            )

    @staticmethod
    def _write(
        conn: Connection[Any],
        item: ReviewItem,
        reviewer: str,
        outcome: ReviewOutcome,
        token: str,
        now: float,
        submitted: tuple[ReviewDecision, str | None],
    ) -> None:
        conn.execute(
            "INSERT INTO review_decisions"
            " (token, review_id, reviewer, decision, reason_code, decided_at, day)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (
                token,
                item.review_id,
                reviewer,
                submitted[0].value,
                submitted[1],
                now,
                datetime.fromtimestamp(now, UTC).date(),
            ),
        )
        if outcome.pending is not None:
            conn.execute(
                "UPDATE review_items SET state = 'queued', lease_token = NULL, lease_holder = NULL,"
                " lease_expires = NULL, first_decision = %s, first_reviewer = %s"
                " WHERE review_id = %s",
                (_dump(outcome.pending), reviewer, item.review_id),
            )
            if outcome.moved_to is not None:  # a disagreement: to the escalation queue
                conn.execute(
                    "UPDATE review_items SET queue = %s, queued_at = %s WHERE review_id = %s",
                    (outcome.moved_to, now, item.review_id),
                )
            return
        final = outcome.final
        if final is None:  # pragma: no cover - ReviewOutcome holds exactly one of the two
            return
        conn.execute(
            "UPDATE review_items SET state = 'final', lease_token = NULL, lease_holder = NULL,"
            " lease_expires = NULL, final_decision = %s, final_token = %s, decided_at = %s"
            " WHERE review_id = %s",
            (_dump(final), token, now, item.review_id),
        )
        conn.execute(
            "INSERT INTO review_outbox (review_id, decided_at, due_at) VALUES (%s, %s, %s)"
            " ON CONFLICT (review_id) DO NOTHING",
            (item.review_id, now, now),
        )

    def release(self, review_id: str, *, reviewer: str | None = None, away_s: float = 0.0) -> bool:
        """Give an item back to the queue (reviewer skip, or admin requeue when ``reviewer`` is
        None). Returns False when the item was not leased (by that reviewer).

        Raises:
            ReviewNotFound: no such item.
            ReviewAlreadyDecided: the item is final.
        """
        with database_errors(_WHAT), self._pool.connection() as conn, conn.transaction():
            row = conn.execute(
                "SELECT state, lease_holder, lease_token FROM review_items"
                " WHERE review_id = %s FOR UPDATE",
                (review_id,),
            ).fetchone()
            if row is None:
                raise ReviewNotFound(f"no review item {review_id}")
            state, holder, lease_token = row
            if state == "final":
                raise ReviewAlreadyDecided("the item is already decided")
            if holder is None or (reviewer is not None and holder != reviewer):
                return False
            conn.execute(
                "UPDATE review_items SET state = 'queued', lease_token = NULL,"
                " lease_holder = NULL, lease_expires = NULL WHERE review_id = %s",
                (review_id,),
            )
            if reviewer is None:  # an admin's requeue: the holder is told so
                conn.execute(
                    "UPDATE review_leases SET taken_back = true WHERE token = %s", (lease_token,)
                )
            if reviewer is not None and away_s > 0:
                now = self._now(conn)
                conn.execute("DELETE FROM review_away WHERE until <= %s", (now,))
                conn.execute(
                    "INSERT INTO review_away (reviewer, review_id, until) VALUES (%s, %s, %s)"
                    " ON CONFLICT (reviewer, review_id) DO UPDATE SET until = EXCLUDED.until",
                    (reviewer, review_id, now + away_s),
                )
            return True

    def leases(self) -> list[Lease]:
        """Every unexpired lease, soonest to expire first."""
        with database_errors(_WHAT), self._pool.connection() as conn:
            now = self._now(conn)
            rows = conn.execute(
                "SELECT review_id, lease_holder, lease_token, lease_expires FROM review_items"
                " WHERE state = 'leased' AND lease_expires > %s ORDER BY lease_expires",
                (now,),
            ).fetchall()
        return [Lease(review_id=r, reviewer=h, token=t, expires_at=float(e)) for r, h, t, e in rows]

    def assign(self, review_id: str, *, reviewer: str, queues: Sequence[str]) -> Lease:
        """An admin leases the item to ``reviewer`` (see :meth:`~moderation.ports.ReviewQueue.
        assign`): one transaction under the reviewer's claim lock, the item's row locked.

        Raises:
            ReviewNotFound, ReviewAlreadyDecided, ReviewError: as the port says.
            DatabaseUnavailable: the database is unreachable.
        """
        token = secrets.token_urlsafe(18)
        with database_errors(_WHAT), self._pool.connection() as conn, conn.transaction():
            conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended('review-claim:' || %s, 0))",
                (reviewer,),
            )
            now = self._now(conn)
            row = conn.execute(
                "SELECT state, lease_holder, lease_token, lease_expires, item, first_decision,"
                " queue FROM review_items WHERE review_id = %s FOR UPDATE",
                (review_id,),
            ).fetchone()
            if row is None:
                raise ReviewNotFound(f"no review item {review_id}")
            state, holder, old_token, expires, item_json, first_json, queue = row
            if state == "final":
                raise ReviewAlreadyDecided("the item is already decided")
            live = state == "leased" and expires is not None and float(expires) > now
            if live and holder == reviewer:
                return Lease(
                    review_id=review_id, reviewer=reviewer, token=old_token, expires_at=expires
                )
            first = FirstDecision.model_validate(first_json) if first_json else None
            refuse_assignment(
                ReviewItem.model_validate(item_json), first, reviewer, queue=queue, queues=queues
            )
            busy = conn.execute(
                "SELECT 1 FROM review_items WHERE state = 'leased' AND lease_holder = %s"
                " AND lease_expires > %s AND review_id <> %s",
                (reviewer, now, review_id),
            ).fetchone()
            if busy is not None:
                raise ReviewError(
                    f"{reviewer} is working on another item now", code="review_assign_busy"
                )
            conn.execute(  # its own expired lease elsewhere would break one-lease-per-holder
                "UPDATE review_items SET state = 'queued', lease_token = NULL,"
                " lease_holder = NULL, lease_expires = NULL"
                " WHERE state = 'leased' AND lease_holder = %s AND review_id <> %s",
                (reviewer, review_id),
            )
            if old_token is not None:
                conn.execute(
                    "UPDATE review_leases SET taken_back = true WHERE token = %s", (old_token,)
                )
            new_expires, _ = self._lease(conn, review_id, reviewer, token, now)
            return Lease(
                review_id=review_id, reviewer=reviewer, token=token, expires_at=new_expires
            )

    def extend(self, review_id: str, *, reviewer: str, token: str) -> Lease:
        """Renew an unexpired lease for another ``lease_s`` (same token).

        Raises:
            ReviewNotFound: no such item.
            ReviewLeaseExpired: the lease ran out (or was taken back) first.
            ReviewNotLeaseHolder: the caller never held this lease.
            DatabaseUnavailable: the database is unreachable.
        """
        with database_errors(_WHAT), self._pool.connection() as conn, conn.transaction():
            row = conn.execute(
                "SELECT lease_token, lease_holder, lease_expires FROM review_items"
                " WHERE review_id = %s FOR UPDATE",
                (review_id,),
            ).fetchone()
            if row is None:
                raise ReviewNotFound(f"no review item {review_id}")
            lease_token, holder, expires = row
            now = self._now(conn)
            if lease_token != token or float(expires) <= now:
                owner = conn.execute(
                    "SELECT reviewer, taken_back FROM review_leases"
                    " WHERE token = %s AND review_id = %s",
                    (token, review_id),
                ).fetchone()
                if owner is not None and owner[0] == reviewer:
                    if owner[1]:
                        raise ReviewTakenBack("an admin took this item back: it is not yours now")
                    raise ReviewLeaseExpired("your lease on this item expired; it was not renewed")
                raise ReviewNotLeaseHolder("you do not hold a lease on this item")
            if holder != reviewer:
                raise ReviewNotLeaseHolder("this lease belongs to another reviewer")
            new_expires = now + self.lease_s
            conn.execute(
                "UPDATE review_items SET lease_expires = %s WHERE review_id = %s",
                (new_expires, review_id),
            )
            conn.execute(
                "UPDATE review_leases SET expires_at = %s WHERE token = %s",
                (new_expires, token),
            )
        return Lease(review_id=review_id, reviewer=reviewer, token=token, expires_at=new_expires)

    def undo(self, review_id: str, *, reviewer: str, token: str, within_s: float) -> Claim:
        """Take back a decision within its undo window (see :meth:`~moderation.ports.
        ReviewQueue.undo`); the item is leased to ``reviewer`` again.

        Raises:
            ReviewNotFound: no such item.
            ReviewUndoTooLate: no such decision of the caller's, or it can no longer be undone.
            DatabaseUnavailable: the database is unreachable.
        """
        new_token = secrets.token_urlsafe(18)
        with database_errors(_WHAT), self._pool.connection() as conn, conn.transaction():
            row = conn.execute(
                "SELECT item, state, first_decision, final_decision, final_token,"
                " EXISTS (SELECT 1 FROM review_outbox o WHERE o.review_id = i.review_id), queue"
                " FROM review_items i WHERE review_id = %s FOR UPDATE",
                (review_id,),
            ).fetchone()
            if row is None:
                raise ReviewNotFound(f"no review item {review_id}")
            item_json, state, first_json, final_json, final_tok, in_outbox, queue = row
            now = self._now(conn)
            first = FirstDecision.model_validate(first_json) if first_json else None
            final = HumanDecision.model_validate(final_json) if final_json else None
            if (
                final is not None
                and final_tok == token
                and final.reviewers[-1] == reviewer
                and in_outbox
                and now - final.decided_at.timestamp() <= within_s
            ):
                conn.execute("DELETE FROM review_outbox WHERE review_id = %s", (review_id,))
                conn.execute(
                    "UPDATE review_items SET final_decision = NULL, final_token = NULL,"
                    " decided_at = NULL WHERE review_id = %s",
                    (review_id,),
                )
                kept = first
            elif (
                final is None
                and first is not None
                and first.token == token
                and first.reviewer == reviewer
                and state == "queued"
                and now - first.at <= within_s
            ):
                # A disagreement taken back: the first decision waits for its second review
                # again, in the item's own queue (no senior took it yet: it is "queued").
                kept = first.disputes
                conn.execute(
                    "UPDATE review_items SET first_decision = %s, first_reviewer = %s"
                    " WHERE review_id = %s",
                    (
                        _dump(kept) if kept else None,
                        kept.reviewer if kept else None,
                        review_id,
                    ),
                )
                if kept is not None:
                    queue = ReviewItem.model_validate(item_json).queue
                    conn.execute(
                        "UPDATE review_items SET queue = %s, queued_at = %s WHERE review_id = %s",
                        (queue, now, review_id),
                    )
            else:
                raise ReviewUndoTooLate("this decision can no longer be undone")
            conn.execute(
                "DELETE FROM review_decisions WHERE token = %s AND review_id = %s",
                (token, review_id),
            )
            expires, _ = self._lease(conn, review_id, reviewer, new_token, now)
        return Claim(
            item=ReviewItem.model_validate(item_json),
            lease=Lease(
                review_id=review_id, reviewer=reviewer, token=new_token, expires_at=expires
            ),
            first=kept,
            now=now,
            queue=queue,
        )

    # --- final-decision delivery ----------------------------------------------------------

    def delivered(self, review_id: str) -> None:
        """Mark a final decision's ``on_final`` as done (removes it from the outbox)."""
        with database_errors(_WHAT), self._pool.connection() as conn:
            conn.execute("DELETE FROM review_outbox WHERE review_id = %s", (review_id,))

    def undelivered(self, *, older_than_s: float = 0.0) -> list[HumanDecision]:
        """Final decisions whose ``on_final`` has not returned, decided at least
        ``older_than_s`` ago, oldest first."""
        with database_errors(_WHAT), self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT i.final_decision FROM review_outbox o JOIN review_items i USING (review_id)"
                " WHERE o.decided_at <= extract(epoch FROM clock_timestamp()) - %s"
                " ORDER BY o.decided_at, o.review_id",
                (older_than_s,),
            ).fetchall()
        return [HumanDecision.model_validate(r[0]) for r in rows]

    def due(self, *, limit: int = 100, hold_s: float = 60.0) -> list[OutboxEntry]:
        """Outbox entries whose next attempt is due, oldest first; each is held back from other
        callers for ``hold_s`` (the time to try it), so concurrent delivery loops share the
        work instead of repeating it. The delivery loop calls this periodically, so it also
        prunes the lease log, at most once an hour per process (:meth:`prune`)."""
        if time.monotonic() - self._pruned_at >= _PRUNE_EVERY_S:
            self._pruned_at = time.monotonic()
            self.prune()
        with database_errors(_WHAT), self._pool.connection() as conn, conn.transaction():
            now = self._now(conn)
            rows = conn.execute(
                "WITH due AS (SELECT review_id FROM review_outbox WHERE due_at <= %s"
                "   ORDER BY due_at LIMIT %s FOR UPDATE SKIP LOCKED)"
                " UPDATE review_outbox o SET due_at = %s FROM due, review_items i"
                " WHERE o.review_id = due.review_id AND i.review_id = o.review_id"
                " RETURNING i.final_decision, o.attempts, o.decided_at",
                (now, limit, now + hold_s),
            ).fetchall()
        entries = [
            OutboxEntry(
                decision=HumanDecision.model_validate(final), attempts=attempts, decided_at=at
            )
            for final, attempts, at in rows
        ]
        return sorted(entries, key=lambda e: (e.decided_at, e.decision.review_id))

    def retry_later(self, review_id: str, *, delay_s: float, error: str) -> int:
        """A delivery failed: try again in ``delay_s``. Returns the failed attempts so far."""
        with database_errors(_WHAT), self._pool.connection() as conn:
            row = conn.execute(
                "UPDATE review_outbox SET attempts = attempts + 1,"
                " due_at = extract(epoch FROM clock_timestamp()) + %s,"
                " last_error = %s WHERE review_id = %s RETURNING attempts",
                (delay_s, error[:500], review_id),
            ).fetchone()
        return int(row[0]) if row is not None else 0

    # --- stats and export -----------------------------------------------------------------

    def stats(self) -> list[ReviewStats]:
        """Queue depth (waiting, in review) and oldest open item age per policy and queue
        (every policy's ``review`` queue, empty or not; other queues while they hold items)."""
        with database_errors(_WHAT), self._pool.connection() as conn:
            now = self._now(conn)
            rows = conn.execute(
                "SELECT p.policy_id, q.queue,"
                "  count(i.review_id) FILTER (WHERE i.state = 'queued'),"
                "  count(i.review_id) FILTER (WHERE i.state = 'leased'),"
                "  min(i.created_at)"
                " FROM review_policies p"
                " CROSS JOIN LATERAL (SELECT 'review' AS queue UNION SELECT DISTINCT o.queue"
                "   FROM review_items o WHERE o.policy_id = p.policy_id AND o.state <> 'final') q"
                " LEFT JOIN review_items i ON i.policy_id = p.policy_id AND i.queue = q.queue"
                "   AND i.state <> 'final'"
                " GROUP BY p.policy_id, q.queue ORDER BY p.policy_id, q.queue"
            ).fetchall()
        return [
            ReviewStats(
                policy_id=policy,
                waiting=int(waiting),
                in_review=int(leased),
                oldest_age_s=max(0.0, now - float(oldest)) if oldest is not None else None,
                queue=queue,
            )
            for policy, queue, waiting, leased, oldest in rows
        ]

    def decisions_on(self, day: str | None = None) -> dict[str, int]:
        """Decisions per pseudonymous reviewer on a UTC day (default today)."""
        with database_errors(_WHAT), self._pool.connection() as conn:
            when = (
                datetime.strptime(day, "%Y-%m-%d").date()
                if day
                else datetime.fromtimestamp(self._now(conn), UTC).date()
            )
            rows = conn.execute(
                "SELECT reviewer, count(*) FROM review_decisions WHERE day = %s GROUP BY reviewer",
                (when,),
            ).fetchall()
        return {reviewer: int(n) for reviewer, n in rows}

    def export(self) -> Iterator[dict[str, Any]]:
        """Reviewed items as labelled rows (oldest decision first), for threshold calibration,
        labels corrected by their latest appeal (:func:`~moderation.core.appeals.
        export_with_appeals`: one row per job); read in pages of 500 (keyset pagination), so a
        long export holds no transaction."""
        after: tuple[float, str] = (float("-inf"), "")
        while True:
            with database_errors(_WHAT), self._pool.connection() as conn:
                rows = conn.execute(
                    "SELECT i.decided_at, i.review_id, i.item, i.final_decision,"
                    "  a.final_decision->>'decision', a.final_decision->>'reason_code'"
                    " FROM review_items i LEFT JOIN LATERAL (SELECT l.review_id, l.final_decision"
                    "   FROM review_items l WHERE l.job_id = i.job_id"
                    "   AND l.item->>'queue' = 'appeal' AND l.state = 'final'"
                    "   ORDER BY l.decided_at DESC LIMIT 1) a ON true"
                    " WHERE i.state = 'final' AND (i.decided_at, i.review_id) > (%s, %s)"
                    " AND (i.item->>'queue' IS DISTINCT FROM 'appeal'"
                    "   OR (a.review_id = i.review_id AND NOT EXISTS ("
                    "   SELECT 1 FROM review_items r WHERE r.job_id = i.job_id"
                    "   AND r.item->>'queue' IS DISTINCT FROM 'appeal' AND r.state = 'final')))"
                    " ORDER BY i.decided_at, i.review_id LIMIT 500",
                    after,
                ).fetchall()
            if not rows:
                return
            for _, _, item_json, final_json, appeal_decision, appeal_code in rows:
                yield corrected_row(
                    export_row(
                        ReviewItem.model_validate(item_json),
                        HumanDecision.model_validate(final_json),
                    ),
                    appeal_decision,
                    appeal_code,
                )
            after = (float(rows[-1][0]), rows[-1][1])

    # --- upkeep ---------------------------------------------------------------------------

    def prune(self) -> int:
        """Drop lease rows older than a day (tokens of decided or long-expired leases).
        Returns how many went."""
        with database_errors(_WHAT), self._pool.connection() as conn:
            cur = conn.execute(
                "DELETE FROM review_leases"
                " WHERE claimed_at < extract(epoch FROM clock_timestamp()) - %s",
                (_LEASE_ROWS_S,),
            )
            return cur.rowcount
