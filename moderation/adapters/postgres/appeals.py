"""Appeals on PostgreSQL (``migrations/0040_appeals.sql``): the :class:`~moderation.ports.
AppealStore`.

Filing is one transaction: the appeal's review item goes into ``review_items`` (queue
``appeal``, its barred reviewers with it) and the appeal into ``appeals``. ``(job_id, number)``
is unique, so of two filings racing for the same job's next number one wins; the other finds
the same appeal (a retried filing: returned as stored) or a different one (refused:
``appeal_limit_reached``). Times are unix seconds. Connection errors become
:class:`~moderation.exceptions.DatabaseUnavailable` (transient).
"""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from moderation.adapters.postgres.errors import database_errors
from moderation.adapters.postgres.review import INSERT_ITEM, item_row
from moderation.core.appeals import Appeal, AppealStatus
from moderation.core.review import HumanDecision, ReviewDecision, ReviewItem
from moderation.exceptions import AppealNotFound, AppealRefused

__all__ = ["PostgresAppealStore"]

_WHAT = "appeal store"
_STATUS = {
    ReviewDecision.UPHOLD: AppealStatus.UPHELD,
    ReviewDecision.OVERTURN: AppealStatus.OVERTURNED,
}


def _appeal(row: Any) -> Appeal:
    return Appeal.model_validate(row)


class PostgresAppealStore:
    """The :class:`~moderation.ports.AppealStore` on PostgreSQL (thread-safe: a pool)."""

    def __init__(self, pool: ConnectionPool, *, age_doubling_s: float) -> None:
        self._pool = pool
        self.age_doubling_s = age_doubling_s

    def file(self, appeal: Appeal, item: ReviewItem) -> Appeal:
        """Store ``appeal`` and queue its review item in one transaction (see the module
        docstring).

        Raises:
            AppealRefused: another appeal took this number first (``appeal_limit_reached``).
            DatabaseUnavailable: the database is unreachable.
        """
        with database_errors(_WHAT), self._pool.connection() as conn, conn.transaction():
            conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended('appeal:' || %s, 0))",
                (appeal.job_id,),
            )
            row = conn.execute(
                "SELECT appeal FROM appeals WHERE job_id = %s AND number = %s",
                (appeal.job_id, appeal.number),
            ).fetchone()
            if row is not None:
                stored = _appeal(row[0])
                if stored.statement == appeal.statement:
                    return stored
                raise AppealRefused(
                    "this decision was already appealed", code="appeal_limit_reached"
                )
            conn.execute(
                "INSERT INTO review_policies (policy_id) VALUES (%s) ON CONFLICT DO NOTHING",
                (item.policy_id,),
            )
            conn.execute(INSERT_ITEM, item_row(item, age_doubling_s=self.age_doubling_s))
            conn.execute(
                "INSERT INTO appeals (appeal_id, tenant, job_id, number, appeal, filed_at)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                (
                    appeal.appeal_id,
                    appeal.tenant,
                    appeal.job_id,
                    appeal.number,
                    Jsonb(appeal.model_dump(mode="json")),
                    appeal.filed_at.timestamp(),
                ),
            )
        return appeal

    def count(self, job_id: str) -> int:
        with database_errors(_WHAT), self._pool.connection() as conn:
            [(n,)] = conn.execute(
                "SELECT count(*) FROM appeals WHERE job_id = %s", (job_id,)
            ).fetchall()
        return int(n)

    def get(self, appeal_id: str) -> Appeal | None:
        with database_errors(_WHAT), self._pool.connection() as conn:
            row = conn.execute(
                "SELECT appeal FROM appeals WHERE appeal_id = %s", (appeal_id,)
            ).fetchone()
        return _appeal(row[0]) if row else None

    def for_job(self, job_id: str) -> list[Appeal]:
        with database_errors(_WHAT), self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT appeal FROM appeals WHERE job_id = %s ORDER BY number", (job_id,)
            ).fetchall()
        return [_appeal(r[0]) for r in rows]

    def decide(self, appeal_id: str, *, decision: HumanDecision) -> Appeal:
        """Record an appeal's outcome (idempotent).

        Raises:
            AppealNotFound: no such appeal.
            DatabaseUnavailable: the database is unreachable.
        """
        with database_errors(_WHAT), self._pool.connection() as conn, conn.transaction():
            row = conn.execute(
                "SELECT appeal FROM appeals WHERE appeal_id = %s FOR UPDATE", (appeal_id,)
            ).fetchone()
            if row is None:
                raise AppealNotFound(f"no appeal {appeal_id}")
            decided = _appeal(row[0]).model_copy(
                update={
                    "status": _STATUS[decision.decision],
                    "reason_code": decision.reason_code,
                    "decided_by": decision.reviewers[-1],
                    "decided_at": decision.decided_at,
                }
            )
            conn.execute(
                "UPDATE appeals SET appeal = %s, status = %s, decided_at = %s WHERE appeal_id = %s",
                (
                    Jsonb(decided.model_dump(mode="json")),
                    decided.status.value,
                    decision.decided_at.timestamp(),
                    appeal_id,
                ),
            )
        return decided

    def decided(self, *, since: float | None = None) -> list[Appeal]:
        with database_errors(_WHAT), self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT appeal FROM appeals WHERE status <> 'open' AND decided_at >= %s"
                " ORDER BY decided_at, appeal_id",
                (since if since is not None else float("-inf"),),
            ).fetchall()
        return [_appeal(r[0]) for r in rows]

    def backlog(self) -> tuple[int, float | None]:
        with database_errors(_WHAT), self._pool.connection() as conn:
            [(n, oldest)] = conn.execute(
                "SELECT count(*), extract(epoch FROM clock_timestamp()) - min(filed_at)"
                " FROM appeals WHERE status = 'open'"
            ).fetchall()
        return int(n), (max(0.0, float(oldest)) if oldest is not None else None)
