"""Importing a Redis-only release's durable state into PostgreSQL (the
:class:`~moderation.ports.StateImportTarget` port; ``moderation db import-redis``).

Every write is idempotent by the records' own keys (review id, username, bank name; decisions by
lease token), with ``ON CONFLICT DO NOTHING``, so a re-run, or a run resumed after a crash,
imports nothing twice. A batch of review items (with their leases, decisions and outbox rows) is
one transaction of a fixed number of statements; a bank (its row, every entry by ``COPY`` with
its id and tombstone, its segments) is one transaction, so a bank is imported whole or not at
all. A dry run executes the same statements and rolls them back, so its counts are exact.

Transient database errors become :class:`~moderation.exceptions.DatabaseUnavailable`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg import Connection, Rollback
from psycopg_pool import ConnectionPool

from moderation.adapters.postgres.errors import database_errors
from moderation.core.banks import BankInfo, BankManifest, Segment
from moderation.core.legacy_state import LegacyBankEntry, LegacyReviewRecord, decision_rows
from moderation.core.reviewers import ReviewerAccount
from moderation.ports import BankRequest

__all__ = ["PostgresStateImport"]

_WHAT = "state import"

_ITEMS = (
    "INSERT INTO review_items (review_id, policy_id, job_id, item, rank, created_at, state,"
    " first_decision, first_reviewer, final_decision, final_token, decided_at, queue, queued_at)"
    " SELECT r, p, j, i::jsonb, k, c, s, f::jsonb, fr, d::jsonb, dt, da, q, c"
    " FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::float8[], %s::float8[],"
    "   %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::float8[], %s::text[])"
    "   AS t(r, p, j, i, k, c, s, f, fr, d, dt, da, q)"
    " ON CONFLICT (review_id) DO NOTHING RETURNING review_id"
)
# A lease is put back only where its holder holds no other (one lease per reviewer).
_LEASES = (
    "UPDATE review_items i SET state = 'leased', lease_token = t.tok, lease_holder = t.holder,"
    " lease_expires = t.exp"
    " FROM unnest(%s::text[], %s::text[], %s::text[], %s::float8[]) AS t(rid, tok, holder, exp)"
    " WHERE i.review_id = t.rid AND NOT EXISTS (SELECT 1 FROM review_items o"
    "   WHERE o.state = 'leased' AND o.lease_holder = t.holder)"
    " RETURNING i.review_id"
)
_LEASE_ROWS = (
    "INSERT INTO review_leases (token, review_id, reviewer, claimed_at, expires_at)"
    " SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::float8[], %s::float8[])"
    " ON CONFLICT (token) DO NOTHING"
)
_DECISIONS = (
    "INSERT INTO review_decisions"
    " (token, review_id, reviewer, decision, reason_code, decided_at, day)"
    " SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[],"
    "   %s::float8[], %s::date[])"
    " ON CONFLICT (token) DO NOTHING"
)
_OUTBOX = (
    "INSERT INTO review_outbox (review_id, decided_at, due_at, attempts, last_error)"
    " SELECT * FROM unnest(%s::text[], %s::float8[], %s::float8[], %s::int[], %s::text[])"
    " ON CONFLICT (review_id) DO NOTHING"
)


def _json(model: Any) -> str | None:
    return model.model_dump_json() if model is not None else None


class PostgresStateImport:
    """The :class:`~moderation.ports.StateImportTarget` on PostgreSQL."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    # --- reviewer accounts -------------------------------------------------------------------

    def import_reviewers(
        self, accounts: Sequence[ReviewerAccount], *, dry_run: bool = False
    ) -> int:
        if not accounts:
            return 0
        with database_errors(_WHAT), self._pool.connection() as conn, conn.transaction() as tx:
            rows = conn.execute(
                "INSERT INTO reviewer_accounts"
                " (username, role, password_hash, disabled, created_at, queues)"
                " SELECT u, r, h, d, c, COALESCE(string_to_array(NULLIF(q, ''), ','), '{}')"
                " FROM unnest(%s::text[], %s::text[], %s::text[], %s::bool[],"
                "   %s::float8[], %s::text[]) AS t(u, r, h, d, c, q)"
                " ON CONFLICT (username) DO NOTHING RETURNING username",
                (
                    [a.username for a in accounts],
                    [a.role.value for a in accounts],
                    [a.password_hash for a in accounts],
                    [a.disabled for a in accounts],
                    [a.created_at for a in accounts],
                    [",".join(a.queues) for a in accounts],
                ),
            ).fetchall()
            if dry_run:
                raise Rollback(tx)
        return len(rows)

    # --- the review queue --------------------------------------------------------------------

    def import_review(
        self, records: Sequence[LegacyReviewRecord], *, lease_s: float, dry_run: bool = False
    ) -> int:
        if not records:
            return 0
        with database_errors(_WHAT), self._pool.connection() as conn, conn.transaction() as tx:
            new = self._import_review(conn, records, lease_s)
            if dry_run:
                raise Rollback(tx)
        return new

    @staticmethod
    def _import_review(
        conn: Connection[Any], records: Sequence[LegacyReviewRecord], lease_s: float
    ) -> int:
        conn.execute(
            "INSERT INTO review_policies (policy_id) SELECT unnest(%s::text[])"
            " ON CONFLICT DO NOTHING",
            (sorted({r.item.policy_id for r in records}),),
        )
        rows = conn.execute(
            _ITEMS,
            (
                [r.review_id for r in records],
                [r.item.policy_id for r in records],
                [r.item.job_id for r in records],
                [r.item.model_dump_json() for r in records],
                [r.rank for r in records],
                [r.item.created_at for r in records],
                ["final" if r.final is not None else "queued" for r in records],
                [_json(r.first) for r in records],
                [r.first_reviewer if r.first is not None else None for r in records],
                [_json(r.final) for r in records],
                [r.final_token if r.final is not None else None for r in records],
                [r.decided_at if r.final is not None else None for r in records],
                [r.queue for r in records],
            ),
        ).fetchall()
        inserted = {row[0] for row in rows}
        fresh = [r for r in records if r.review_id in inserted]
        if not fresh:
            return 0
        # Leases: at most one per holder (the latest), unexpired ones only matter but an
        # expired one is harmless (the next claim reaps it).
        leases: dict[str, LegacyReviewRecord] = {}
        for r in fresh:
            if r.final is None and r.leased:
                other = leases.get(r.lease_holder or "")
                if other is None or (other.lease_expires or 0.0) < (r.lease_expires or 0.0):
                    leases[r.lease_holder or ""] = r
        if leases:
            held = list(leases.values())
            leased = {
                row[0]
                for row in conn.execute(
                    _LEASES,
                    (
                        [r.review_id for r in held],
                        [r.lease_token for r in held],
                        [r.lease_holder for r in held],
                        [r.lease_expires for r in held],
                    ),
                ).fetchall()
            }
            kept = [r for r in held if r.review_id in leased]
            conn.execute(
                _LEASE_ROWS,
                (
                    [r.lease_token for r in kept],
                    [r.review_id for r in kept],
                    [r.lease_holder for r in kept],
                    [(r.lease_expires or 0.0) - lease_s for r in kept],
                    [r.lease_expires for r in kept],
                ),
            )
        decisions = [d for r in fresh for d in decision_rows(r)]
        if decisions:
            conn.execute(
                _DECISIONS,
                (
                    [d.token for d in decisions],
                    [d.review_id for d in decisions],
                    [d.reviewer for d in decisions],
                    [d.decision.value for d in decisions],
                    [d.reason_code for d in decisions],
                    [d.decided_at for d in decisions],
                    [d.day for d in decisions],
                ),
            )
        outbox = [(r.review_id, r.outbox) for r in fresh if r.outbox is not None]
        if outbox:
            conn.execute(
                _OUTBOX,
                (
                    [rid for rid, _ in outbox],
                    [o.decided_at for _, o in outbox],
                    [o.due_at for _, o in outbox],
                    [o.attempts for _, o in outbox],
                    [o.last_error for _, o in outbox],
                ),
            )
        return len(fresh)

    def import_bank_requests(
        self, requests: Sequence[BankRequest], *, ttl_s: int, dry_run: bool = False
    ) -> int:
        if not requests:
            return 0
        expires = datetime.now(UTC) + timedelta(seconds=ttl_s)
        with database_errors(_WHAT), self._pool.connection() as conn, conn.transaction() as tx:
            rows = conn.execute(
                "INSERT INTO bank_requests (review_id, request, expires_at)"
                " SELECT r, q::jsonb, %s FROM unnest(%s::text[], %s::text[]) AS t(r, q)"
                " ON CONFLICT (review_id) DO NOTHING RETURNING review_id",
                (
                    expires,
                    [q.review_id for q in requests],
                    [q.model_dump_json() for q in requests],
                ),
            ).fetchall()
            if dry_run:
                raise Rollback(tx)
        return len(rows)

    # --- hash banks --------------------------------------------------------------------------

    def has_bank(self, name: str) -> bool:
        with database_errors(_WHAT), self._pool.connection() as conn:
            row = conn.execute("SELECT 1 FROM banks WHERE name = %s", (name,)).fetchone()
        return row is not None

    def import_bank(
        self,
        info: BankInfo,
        manifest: BankManifest,
        entries: Iterable[list[LegacyBankEntry]],
        *,
        progress: Callable[[int], object] | None = None,
    ) -> bool:
        with database_errors(_WHAT), self._pool.connection() as conn, conn.transaction():
            created = conn.execute(
                "INSERT INTO banks (name, description, created_at, version)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT (name) DO NOTHING RETURNING name",
                (info.name, info.description, info.created_at, max(1, info.version)),
            ).fetchone()
            if created is None:
                return False
            segments: list[Segment] = []
            live = removed = 0
            with (
                conn.cursor() as cur,
                cur.copy(
                    "COPY bank_entries (bank, id, pdq, source, label, added_at, reference_id,"
                    " quality, removed, video, frame_number, timestamp_s, video_frames)"
                    " FROM STDIN"
                ) as copy,
            ):
                for chunk in entries:
                    for e in chunk:
                        d = e.data
                        copy.write_row(
                            (
                                info.name,
                                e.id,
                                bytes.fromhex(d.pdq),
                                d.source,
                                d.label,
                                d.added_at,
                                d.reference_id,
                                d.quality,
                                e.removed,
                                d.video,
                                d.frame_number,
                                d.timestamp_s,
                                d.video_frames,
                            )
                        )
                        removed += e.removed
                        live += not e.removed
                    if chunk:
                        segments.append(_segment_of(manifest, chunk))
                    if progress is not None:
                        progress(len(chunk))
            if segments:
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO bank_segments (bank, number, first_id, count)"
                        " VALUES (%s, %s, %s, %s)",
                        [(info.name, s.number, s.first_id, s.count) for s in segments],
                    )
            conn.execute(
                "UPDATE banks SET next_id = %s, next_segment = %s, entries = %s, removed = %s"
                " WHERE name = %s",
                (
                    max((s.end_id for s in segments), default=0),
                    max((s.number + 1 for s in segments), default=0),
                    live,
                    removed,
                    info.name,
                ),
            )
            conn.execute("UPDATE bank_store_version SET version = version + 1")
        return True


def _segment_of(manifest: BankManifest, chunk: list[LegacyBankEntry]) -> Segment:
    """The segment a chunk of entries (one segment's, in id order) is written as: the
    manifest's number, the count of entries actually read."""
    first = chunk[0].id
    number = next((s.number for s in manifest.segments if s.first_id == first), 0)
    return Segment(number=number, first_id=first, count=len(chunk))
