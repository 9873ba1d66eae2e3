"""Reviewer wellbeing on PostgreSQL (``migrations/0110_reviewer_wellbeing.sql``): the
:class:`~moderation.ports.WellbeingStore`. An item counts once per reviewer and day (primary
key); a reveal only ever turns ``revealed`` on. A day's exposure and break rows are kept
:data:`KEEP_DAYS` days (as on Redis), pruned by :meth:`PostgresWellbeingStore.prune`, which
recording calls at most once an hour per process. Connection errors become
:class:`~moderation.exceptions.DatabaseUnavailable` (transient)."""

from __future__ import annotations

import time
from typing import Any

from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from moderation.adapters.postgres.errors import database_errors
from moderation.core.wellbeing import ReviewerDay, WellbeingSettings

__all__ = ["KEEP_DAYS", "PostgresWellbeingStore"]

_WHAT = "reviewer wellbeing"
#: Days of exposure and break rows kept (today's and the week before).
KEEP_DAYS = 8
_PRUNE_EVERY_S = 3600.0

_DAY = """
SELECT r.reviewer,
       count(*) FILTER (WHERE e.review_id IS NOT NULL),
       count(*) FILTER (WHERE e.critical),
       count(*) FILTER (WHERE e.revealed),
       count(*) FILTER (WHERE e.critical AND e.at > coalesce(b.last_break_at, '-infinity')),
       min(e.at), max(b.last_break_at), max(b.taken), max(b.dismissed)
FROM (SELECT reviewer FROM reviewer_exposure WHERE day = %(day)s
      UNION SELECT reviewer FROM reviewer_breaks WHERE day = %(day)s) AS r
LEFT JOIN reviewer_exposure e ON e.reviewer = r.reviewer AND e.day = %(day)s
LEFT JOIN reviewer_breaks b ON b.reviewer = r.reviewer AND b.day = %(day)s
WHERE %(reviewer)s::text IS NULL OR r.reviewer = %(reviewer)s
GROUP BY r.reviewer
ORDER BY r.reviewer
"""


def _day(day: str, row: tuple[Any, ...]) -> ReviewerDay:
    reviewer, shown, critical, revealed, since, first, last, taken, dismissed = row
    return ReviewerDay(
        reviewer=reviewer,
        day=day,
        shown=int(shown),
        critical=int(critical),
        revealed=int(revealed),
        critical_since_break=int(since),
        first_at=float(first) if first is not None else None,
        last_break_at=float(last) if last is not None else None,
        breaks_taken=int(taken or 0),
        breaks_dismissed=int(dismissed or 0),
    )


class PostgresWellbeingStore:
    """The :class:`~moderation.ports.WellbeingStore` on PostgreSQL (thread-safe: a pool)."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._pruned_at = float("-inf")  # time.monotonic() of the last prune()

    def prune(self, *, keep_days: int = KEEP_DAYS) -> int:
        """Drop exposure and break rows of days more than ``keep_days`` before today (UTC);
        returns how many rows went."""
        with database_errors(_WHAT), self._pool.connection() as conn:
            exposure = conn.execute(
                "DELETE FROM reviewer_exposure WHERE day < (now() AT TIME ZONE 'UTC')::date - %s",
                (keep_days,),
            ).rowcount
            breaks = conn.execute(
                "DELETE FROM reviewer_breaks WHERE day < (now() AT TIME ZONE 'UTC')::date - %s",
                (keep_days,),
            ).rowcount
            return exposure + breaks

    def settings(self, reviewer: str) -> WellbeingSettings | None:
        with database_errors(_WHAT), self._pool.connection() as conn:
            row = conn.execute(
                "SELECT settings FROM reviewer_wellbeing WHERE reviewer = %s", (reviewer,)
            ).fetchone()
        return WellbeingSettings.model_validate(row[0]) if row else None

    def save(self, reviewer: str, settings: WellbeingSettings) -> None:
        with database_errors(_WHAT), self._pool.connection() as conn:
            conn.execute(
                "INSERT INTO reviewer_wellbeing (reviewer, settings, updated_at)"
                " VALUES (%s, %s, %s) ON CONFLICT (reviewer) DO UPDATE"
                " SET settings = EXCLUDED.settings, updated_at = EXCLUDED.updated_at",
                (reviewer, Jsonb(settings.model_dump(mode="json")), time.time()),
            )

    def record(
        self, reviewer: str, *, day: str, review_id: str, critical: bool, revealed: bool, at: float
    ) -> None:
        if time.monotonic() - self._pruned_at >= _PRUNE_EVERY_S:
            self._pruned_at = time.monotonic()
            self.prune()
        with database_errors(_WHAT), self._pool.connection() as conn:
            conn.execute(
                "INSERT INTO reviewer_exposure (reviewer, day, review_id, critical, revealed, at)"
                " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (reviewer, day, review_id)"
                " DO UPDATE SET revealed = true"
                " WHERE EXCLUDED.revealed AND NOT reviewer_exposure.revealed",
                (reviewer, day, review_id, critical, revealed, at),
            )

    def answer_break(self, reviewer: str, *, day: str, taken: bool, at: float) -> None:
        with database_errors(_WHAT), self._pool.connection() as conn:
            conn.execute(
                "INSERT INTO reviewer_breaks (reviewer, day, last_break_at, taken, dismissed)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (reviewer, day) DO UPDATE"
                " SET last_break_at = EXCLUDED.last_break_at,"
                " taken = reviewer_breaks.taken + EXCLUDED.taken,"
                " dismissed = reviewer_breaks.dismissed + EXCLUDED.dismissed",
                (reviewer, day, at, int(taken), int(not taken)),
            )

    def day(self, reviewer: str, day: str) -> ReviewerDay:
        with database_errors(_WHAT), self._pool.connection() as conn:
            row = conn.execute(_DAY, {"day": day, "reviewer": reviewer}).fetchone()
        return _day(day, row) if row else ReviewerDay(reviewer=reviewer, day=day)

    def days(self, day: str) -> list[ReviewerDay]:
        with database_errors(_WHAT), self._pool.connection() as conn:
            rows = conn.execute(_DAY, {"day": day, "reviewer": None}).fetchall()
        return [_day(day, r) for r in rows]
