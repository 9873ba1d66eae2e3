"""Notices from outside on PostgreSQL (table ``notices``, ``migrations/0050_notices.sql``).

A notice is one row; its JSON keeps the :class:`~moderation.core.notices.Notice`, and the
columns the queries need (tenant, job, state, reports) sit beside it. Adding a notice whose id
exists counts one more report in the same statement (``ON CONFLICT ... DO UPDATE``), so two
identical reports racing collapse into one notice with ``reports = 2``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from moderation.adapters.postgres.errors import database_errors
from moderation.core.notices import Notice, NoticeState

__all__ = ["PostgresNoticeStore"]

_WHAT = "notices"


def _notice(row: tuple[Any, ...]) -> Notice:
    data, reports, state = row
    return Notice.model_validate({**data, "reports": reports, "state": state})


class PostgresNoticeStore:
    """The :class:`~moderation.ports.NoticeStore` on PostgreSQL (thread-safe: a pool)."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    def add(self, notice: Notice) -> tuple[Notice, bool]:
        with database_errors(_WHAT), self._pool.connection() as conn:
            row = conn.execute(
                "INSERT INTO notices"
                " (notice_id, tenant, job_id, reporter_type, state, reports, created_at, notice)"
                " VALUES (%s, %s, %s, %s, %s, 1, %s, %s)"
                " ON CONFLICT (notice_id) DO UPDATE SET reports = notices.reports + 1"
                " RETURNING notice, reports, state, (xmax = 0) AS inserted",
                (
                    notice.notice_id,
                    notice.tenant,
                    notice.job_id,
                    notice.reporter_type.value,
                    notice.state.value,
                    notice.created_at,
                    Jsonb(notice.model_dump(mode="json")),
                ),
            ).fetchone()
        assert row is not None  # RETURNING always yields the row
        return _notice(row[:3]), bool(row[3])

    def get(self, tenant: str, notice_id: str) -> Notice | None:
        with database_errors(_WHAT), self._pool.connection() as conn:
            row = conn.execute(
                "SELECT notice, reports, state FROM notices WHERE notice_id = %s AND tenant = %s",
                (notice_id, tenant),
            ).fetchone()
        return _notice(row) if row is not None else None

    def set_review(self, notice_id: str, review_id: str) -> None:
        with database_errors(_WHAT), self._pool.connection() as conn:
            conn.execute(
                "UPDATE notices SET notice = jsonb_set(notice, '{review_id}', to_jsonb(%s::text))"
                " WHERE notice_id = %s",
                (review_id, notice_id),
            )

    def open_for_job(self, job_id: str) -> list[Notice]:
        with database_errors(_WHAT), self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT notice, reports, state FROM notices"
                " WHERE job_id = %s AND state = 'open' ORDER BY created_at, notice_id",
                (job_id,),
            ).fetchall()
        return [_notice(r) for r in rows]

    def answer(
        self, notice_id: str, *, outcome: str, reason: str | None, at: datetime
    ) -> Notice | None:
        patch = {"outcome": outcome, "outcome_reason": reason, "answered_at": at.isoformat()}
        with database_errors(_WHAT), self._pool.connection() as conn:
            row = conn.execute(
                "UPDATE notices SET state = %s, notice = notice || %s"
                " WHERE notice_id = %s AND state = 'open' RETURNING notice, reports, state",
                (NoticeState.ANSWERED.value, Jsonb(patch), notice_id),
            ).fetchone()
        return _notice(row) if row is not None else None

    def for_tenant(self, tenant: str, *, limit: int = 100) -> list[Notice]:
        with database_errors(_WHAT), self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT notice, reports, state FROM notices WHERE tenant = %s"
                " ORDER BY created_at DESC, notice_id LIMIT %s",
                (tenant, limit),
            ).fetchall()
        return [_notice(r) for r in rows]
