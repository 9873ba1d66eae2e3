"""Synced banks' checkpoints and upstream records on PostgreSQL (tables
``exchange_checkpoints`` and ``exchange_records``, ``migrations/0055_exchange_sync.sql``).

One syncer per source: a session advisory lock on ``exchange-sync:<source>`` (tried, not waited
for). ``save`` writes the records and the checkpoint in one transaction, so a crash between
batches resumes from the last batch applied.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

from psycopg_pool import ConnectionPool

from moderation.adapters.postgres.errors import database_errors
from moderation.exceptions import ExchangeBusy

__all__ = ["PostgresExchangeSync"]

_WHAT = "exchange sync state"


class PostgresExchangeSync:
    """The :class:`~moderation.ports.ExchangeSyncStore` on PostgreSQL (thread-safe: a pool)."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    @contextmanager
    def lock(self, source: str) -> Iterator[None]:
        with database_errors(_WHAT), self._pool.connection() as conn:
            key = ("exchange-sync:" + source,)
            row = conn.execute(
                "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", key
            ).fetchone()
            conn.commit()  # the session lock outlives the transaction; nothing stays open
            if row is None or not row[0]:
                raise ExchangeBusy(f"exchange {source} is being synced by another process")
            try:
                yield
            finally:
                conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", key)
                conn.commit()

    def checkpoint(self, source: str) -> bytes | None:
        with database_errors(_WHAT), self._pool.connection() as conn:
            row = conn.execute(
                "SELECT checkpoint FROM exchange_checkpoints WHERE source = %s", (source,)
            ).fetchone()
        return bytes(row[0]) if row is not None and row[0] is not None else None

    def fetched(self, source: str) -> int:
        with database_errors(_WHAT), self._pool.connection() as conn:
            row = conn.execute(
                "SELECT fetched FROM exchange_checkpoints WHERE source = %s", (source,)
            ).fetchone()
        return int(row[0]) if row is not None else 0

    def records(self, source: str, keys: Iterable[str]) -> dict[str, list[str]]:
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return {}
        with database_errors(_WHAT), self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT key, hashes FROM exchange_records WHERE source = %s AND key = ANY(%s)",
                (source, wanted),
            ).fetchall()
        return {str(k): list(h) for k, h in rows}

    def held(self, source: str, hashes: Iterable[str], *, besides: Iterable[str]) -> set[str]:
        wanted = sorted(set(hashes))
        if not wanted:
            return set()
        with database_errors(_WHAT), self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT DISTINCT h FROM exchange_records, unnest(hashes) AS h"
                " WHERE source = %s AND hashes && %s::text[] AND NOT key = ANY(%s::text[])"
                " AND h = ANY(%s::text[])",
                (source, wanted, list(besides), wanted),
            ).fetchall()
        return {str(r[0]) for r in rows}

    def save(
        self,
        source: str,
        *,
        checkpoint: bytes,
        records: Mapping[str, list[str] | None],
        applied: int,
    ) -> None:
        gone = [k for k, v in records.items() if v is None]
        kept = [(source, k, v) for k, v in records.items() if v is not None]
        with database_errors(_WHAT), self._pool.connection() as conn, conn.transaction():
            if gone:
                conn.execute(
                    "DELETE FROM exchange_records WHERE source = %s AND key = ANY(%s)",
                    (source, gone),
                )
            if kept:
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO exchange_records (source, key, hashes) VALUES (%s, %s, %s)"
                        " ON CONFLICT (source, key) DO UPDATE SET hashes = EXCLUDED.hashes",
                        kept,
                    )
            conn.execute(
                "INSERT INTO exchange_checkpoints (source, checkpoint, fetched) VALUES (%s, %s, %s)"
                " ON CONFLICT (source) DO UPDATE SET checkpoint = EXCLUDED.checkpoint,"
                " fetched = exchange_checkpoints.fetched + EXCLUDED.fetched, updated_at = now()",
                (source, checkpoint, applied),
            )
