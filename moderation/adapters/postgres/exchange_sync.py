"""Synced banks' checkpoints and upstream records on PostgreSQL (tables
``exchange_checkpoints`` and ``exchange_records``, ``migrations/0055_exchange_sync.sql``).

Each sync's outcome (``record_outcome``) updates the source's health columns
(``migrations/0100_exchange_sync_health.sql``), which ``health`` reads with the database's clock.

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
from moderation.ports import ExchangeHealth

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

    def record_outcome(self, source: str, *, error_code: str | None) -> None:
        with database_errors(_WHAT), self._pool.connection() as conn:
            if error_code is None:
                conn.execute(
                    "INSERT INTO exchange_checkpoints (source, last_success_at, last_attempt_at)"
                    " VALUES (%s, now(), now()) ON CONFLICT (source) DO UPDATE SET"
                    " last_success_at = now(), last_attempt_at = now(), failures = 0",
                    (source,),
                )
            else:
                conn.execute(
                    "INSERT INTO exchange_checkpoints (source, last_attempt_at, failures,"
                    " errors_total, last_error_code) VALUES (%s, now(), 1, 1, %s)"
                    " ON CONFLICT (source) DO UPDATE SET last_attempt_at = now(),"
                    " failures = exchange_checkpoints.failures + 1,"
                    " errors_total = exchange_checkpoints.errors_total + 1,"
                    " last_error_code = EXCLUDED.last_error_code",
                    (source, error_code),
                )

    def health(self, sources: Iterable[str]) -> list[ExchangeHealth]:
        wanted = list(dict.fromkeys(sources))
        if not wanted:
            return []
        with database_errors(_WHAT), self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT source, EXTRACT(EPOCH FROM now() - last_success_at)::float8, failures,"
                " errors_total, last_error_code FROM exchange_checkpoints"
                " WHERE source = ANY(%s)",
                (wanted,),
            ).fetchall()
        found = {
            str(r[0]): ExchangeHealth(
                source=str(r[0]),
                last_success_age_s=None if r[1] is None else max(0.0, float(r[1])),
                failures=int(r[2]),
                errors_total=int(r[3]),
                last_error_code=r[4],
            )
            for r in rows
        }
        return [found.get(s, ExchangeHealth(source=s, last_success_age_s=None)) for s in wanted]
