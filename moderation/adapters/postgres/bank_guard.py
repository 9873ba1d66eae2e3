"""Bank entries' states and match rates on PostgreSQL (tables ``bank_entry_states`` and
``bank_entry_rates``, ``migrations/0051_bank_entry_states.sql``).

Counting is one transaction per call: the entries' rate rows are locked (``FOR UPDATE``, in id
order, so two workers counting the same entries never deadlock), folded with the rule, and
written back; concurrent workers' matches all count.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from moderation.adapters.postgres.errors import database_errors
from moderation.core.bank_guard import EntryRate, EntryState, EntryStatus, FloodRule

__all__ = ["PostgresEntryGuard"]

_WHAT = "bank entry states"


def _status(row: tuple[Any, ...]) -> EntryStatus:
    return EntryStatus.model_validate(row[0])


class PostgresEntryGuard:
    """The :class:`~moderation.ports.EntryGuardStore` on PostgreSQL (thread-safe: a pool)."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    def statuses(self, bank: str | None = None) -> list[EntryStatus]:
        with database_errors(_WHAT), self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT status FROM bank_entry_states"
                " WHERE %(bank)s::text IS NULL OR bank = %(bank)s ORDER BY bank, entry_id",
                {"bank": bank},
            ).fetchall()
        return [_status(r) for r in rows]

    def status(self, bank: str, entry_id: int) -> EntryStatus | None:
        with database_errors(_WHAT), self._pool.connection() as conn:
            row = conn.execute(
                "SELECT status FROM bank_entry_states WHERE bank = %s AND entry_id = %s",
                (bank, entry_id),
            ).fetchone()
        return _status(row) if row is not None else None

    def set_status(self, status: EntryStatus) -> None:
        with database_errors(_WHAT), self._pool.connection() as conn:
            if status.state is EntryState.ACTIVE:
                conn.execute(
                    "DELETE FROM bank_entry_states WHERE bank = %s AND entry_id = %s",
                    (status.bank, status.entry_id),
                )
                return
            conn.execute(
                "INSERT INTO bank_entry_states (bank, entry_id, state, status)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT (bank, entry_id) DO UPDATE"
                " SET state = EXCLUDED.state, status = EXCLUDED.status",
                (
                    status.bank,
                    status.entry_id,
                    status.state.value,
                    Jsonb(status.model_dump(mode="json")),
                ),
            )

    def count(
        self, bank: str, matches: Mapping[int, int], *, rule: FloodRule, now: float
    ) -> dict[int, EntryRate]:
        ids = sorted(matches)
        if not ids:
            return {}
        out: dict[int, EntryRate] = {}
        with database_errors(_WHAT), self._pool.connection() as conn, conn.transaction():
            conn.execute(
                "INSERT INTO bank_entry_rates (bank, entry_id, window_start, count, baseline)"
                " SELECT %s, id, %s, 0, 0 FROM unnest(%s::bigint[]) AS id"
                " ORDER BY id ON CONFLICT (bank, entry_id) DO NOTHING",
                (bank, rule.window_of(now), ids),
            )
            rows = conn.execute(
                "SELECT entry_id, window_start, count, baseline FROM bank_entry_rates"
                " WHERE bank = %s AND entry_id = ANY(%s) ORDER BY entry_id FOR UPDATE",
                (bank, ids),
            ).fetchall()
            for entry_id, window_start, count, baseline in rows:
                rate = rule.observe(
                    EntryRate(float(window_start), int(count), float(baseline)),
                    matches[int(entry_id)],
                    now,
                )
                out[int(entry_id)] = rate
            conn.cursor().executemany(
                "UPDATE bank_entry_rates SET window_start = %s, count = %s, baseline = %s"
                " WHERE bank = %s AND entry_id = %s",
                [(r.window_start, r.count, r.baseline, bank, i) for i, r in out.items()],
            )
        return out
