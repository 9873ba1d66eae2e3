"""Earlier jobs on the same image, from the job records (``jobs``; indexes in
``migrations/0120_job_image_history.sql``): the :class:`~moderation.ports.ImageHistory`.

One statement per lookup, always filtered by the tenant first (both indexes lead with it), so a
reviewer is never shown another tenant's decisions and one tenant's volume never slows another's
lookup. Only the pieces of each result the panel shows are read (not the whole JSON). Jobs are
kept for the job retention (``jobs.retention_days``): older decisions are gone with their
partitions. Connection errors become :class:`~moderation.exceptions.DatabaseUnavailable`.
"""

from __future__ import annotations

from datetime import datetime

from psycopg_pool import ConnectionPool

from moderation.adapters.postgres.errors import database_errors
from moderation.core.image_history import EarlierDecision
from moderation.core.jobs import public_id

__all__ = ["PostgresImageHistory"]

_WHAT = "job store"

# The tenant's jobs on the same bytes, then those on the same PDQ hash with other bytes; both
# parts lead with the tenant (their indexes too), newest first.
_EARLIER = """
SELECT * FROM (
  (SELECT 'sha256' AS matched_by, id, created_at,
     result -> 'verdict' ->> 'decision', result -> 'verdict' ->> 'policy_id',
     result -> 'verdict' ->> 'category_id', (result -> 'verdict' ->> 'score')::float8,
     result -> 'human' ->> 'decision', result -> 'human' ->> 'reason_code',
     (result -> 'human' ->> 'decided_at')::timestamptz
    FROM jobs
    WHERE tenant = %(tenant)s AND result ->> 'content_sha256' = %(sha)s AND id <> %(exclude)s
    ORDER BY created_at DESC LIMIT %(limit)s)
  UNION ALL
  (SELECT 'pdq' AS matched_by, id, created_at,
     result -> 'verdict' ->> 'decision', result -> 'verdict' ->> 'policy_id',
     result -> 'verdict' ->> 'category_id', (result -> 'verdict' ->> 'score')::float8,
     result -> 'human' ->> 'decision', result -> 'human' ->> 'reason_code',
     (result -> 'human' ->> 'decided_at')::timestamptz
    FROM jobs
    WHERE tenant = %(tenant)s AND result ->> 'content_pdq' = %(pdq)s
      AND result ->> 'content_sha256' IS DISTINCT FROM %(sha)s AND id <> %(exclude)s
    ORDER BY created_at DESC LIMIT %(limit)s)
) found ORDER BY created_at DESC LIMIT %(limit)s
"""


class PostgresImageHistory:
    """The :class:`~moderation.ports.ImageHistory` over the ``jobs`` table (a pool)."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    def earlier(
        self,
        tenant: str,
        *,
        content_sha256: str | None,
        content_pdq: str | None,
        exclude_job: str,
        limit: int = 10,
    ) -> list[EarlierDecision]:
        if content_sha256 is None and content_pdq is None:
            return []
        with database_errors(_WHAT), self._pool.connection() as conn:
            rows = conn.execute(
                _EARLIER,
                {
                    "tenant": tenant,
                    "sha": content_sha256,
                    "pdq": content_pdq,
                    "exclude": exclude_job,
                    "limit": limit,
                },
            ).fetchall()
        return [_row(row) for row in rows]


def _row(row: tuple[object, ...]) -> EarlierDecision:
    matched_by, job_id, created_at, verdict, policy_id, category_id, score, human = row[:8]
    reason, human_at = row[8], row[9]
    assert isinstance(created_at, datetime)
    return EarlierDecision(
        job_id=public_id(str(job_id)),
        created_at=created_at,
        matched_by=str(matched_by),
        verdict=str(verdict) if verdict is not None else None,
        policy_id=str(policy_id) if policy_id is not None else None,
        category_id=str(category_id) if category_id is not None else None,
        score=float(score) if isinstance(score, int | float) else None,
        human=str(human) if human is not None else None,
        human_reason_code=str(reason) if reason is not None else None,
        human_at=human_at if isinstance(human_at, datetime) else None,
    )
