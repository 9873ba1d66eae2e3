"""Uploader strikes and actions on PostgreSQL (``migrations/0041_strikes.sql``): the
:class:`~moderation.ports.StrikeStore`.

A strike is keyed by (tenant, job): recording a job's strike again replaces it (the same
decision redelivered, or a later decision on the same job) unless an overturn removed it. An
uploader's action changes by compare-and-set (:meth:`PostgresStrikeStore.set_action`), so two
decisions on one uploader's content at once cannot both deliver the same change. Connection
errors become :class:`~moderation.exceptions.DatabaseUnavailable` (transient).
"""

from __future__ import annotations

from datetime import datetime

from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from moderation.adapters.postgres.errors import database_errors
from moderation.core.strikes import EnforcementAction, Strike

__all__ = ["PostgresStrikeStore"]

_WHAT = "strike store"


class PostgresStrikeStore:
    """The :class:`~moderation.ports.StrikeStore` on PostgreSQL (thread-safe: a pool)."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    def add(self, strike: Strike) -> bool:
        with database_errors(_WHAT), self._pool.connection() as conn:
            cur = conn.execute(
                "INSERT INTO uploader_strikes (tenant, job_id, uploader_id, strike, at,"
                " expires_at) VALUES (%s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (tenant, job_id) DO UPDATE SET strike = EXCLUDED.strike,"
                " at = EXCLUDED.at, expires_at = EXCLUDED.expires_at"
                " WHERE uploader_strikes.removed_at IS NULL"
                " AND uploader_strikes.strike IS DISTINCT FROM EXCLUDED.strike",
                (
                    strike.tenant,
                    strike.job_id,
                    strike.uploader_id,
                    Jsonb(strike.model_dump(mode="json")),
                    strike.at.timestamp(),
                    strike.expires_at.timestamp(),
                ),
            )
            return cur.rowcount > 0

    def remove(self, tenant: str, job_id: str, *, at: datetime) -> Strike | None:
        with database_errors(_WHAT), self._pool.connection() as conn:
            row = conn.execute(
                "UPDATE uploader_strikes SET removed_at = %s,"
                " strike = jsonb_set(strike, '{removed_at}', to_jsonb(%s::text))"
                " WHERE tenant = %s AND job_id = %s AND removed_at IS NULL RETURNING strike",
                (at.timestamp(), at.isoformat(), tenant, job_id),
            ).fetchone()
        return Strike.model_validate(row[0]) if row else None

    def strikes(self, tenant: str, uploader_id: str, *, limit: int = 200) -> list[Strike]:
        with database_errors(_WHAT), self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT strike FROM uploader_strikes WHERE tenant = %s AND uploader_id = %s"
                " ORDER BY at DESC, job_id LIMIT %s",
                (tenant, uploader_id, limit),
            ).fetchall()
        return [Strike.model_validate(r[0]) for r in rows]

    def action(self, tenant: str, uploader_id: str) -> tuple[EnforcementAction, bool]:
        with database_errors(_WHAT), self._pool.connection() as conn:
            row = conn.execute(
                "SELECT action, warned FROM uploader_actions WHERE tenant = %s"
                " AND uploader_id = %s",
                (tenant, uploader_id),
            ).fetchone()
        return (EnforcementAction(row[0]), bool(row[1])) if row else (EnforcementAction.NONE, False)

    def set_action(
        self,
        tenant: str,
        uploader_id: str,
        *,
        expected: EnforcementAction,
        action: EnforcementAction,
        at: datetime,
    ) -> bool:
        warned = action is not EnforcementAction.NONE
        with database_errors(_WHAT), self._pool.connection() as conn, conn.transaction():
            if expected is EnforcementAction.NONE:
                conn.execute(
                    "INSERT INTO uploader_actions (tenant, uploader_id, action, updated_at)"
                    " VALUES (%s, %s, 'none', %s) ON CONFLICT DO NOTHING",
                    (tenant, uploader_id, at.timestamp()),
                )
            cur = conn.execute(
                "UPDATE uploader_actions SET action = %s, warned = warned OR %s, updated_at = %s"
                " WHERE tenant = %s AND uploader_id = %s AND action = %s",
                (action.value, warned, at.timestamp(), tenant, uploader_id, expected.value),
            )
            return cur.rowcount == 1
