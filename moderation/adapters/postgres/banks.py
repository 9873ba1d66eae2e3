"""Hash banks on PostgreSQL (the :class:`~moderation.ports.BankStore` port).

Tables (``migrations/0011_banks.sql``)::

    banks               one row per bank: description, created_at, version, next_id,
                        next_segment, live and removed counts
    bank_entries        one row per entry ever added: the 32-byte PDQ hash, its metadata and a
                        ``removed`` flag (tombstone); ids are never reused
    bank_segments       runs of consecutive ids (number, first_id, count): a worker loads a
                        segment's hashes in one read and, after a change, reads only what was
                        appended
    bank_store_version  one row: moves on every change of any bank (workers poll it)
    bank_requests       reviewers' pending "add to bank" requests (with an expiry)

Atomicity: an addition is one transaction (``COPY`` of the entries, the segment rows, the bank's
counters and both versions), so readers see all of an import or none of it, and a crash leaves
nothing behind. Small additions fill the last segment; large imports start new segments of at
most :data:`SEGMENT_ROWS`. Removals set tombstones and move the versions in one transaction.
Writers of a bank are serialised by a session-level advisory lock held for the whole import on a
connection of its own (it is released when the holder ends, even by a crash). A manifest is read
in one REPEATABLE READ transaction (segments, tombstones and version of one moment).

Transient database errors become :class:`~moderation.exceptions.DatabaseUnavailable`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg import Connection
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from moderation.adapters.postgres.errors import database_errors
from moderation.core.banks import (
    BankEntry,
    BankInfo,
    BankManifest,
    EntryData,
    Segment,
    is_bank_name,
)
from moderation.exceptions import BankBusy, BankExists, BankNotFound
from moderation.ports import BankRequest

__all__ = ["SEGMENT_ROWS", "SMALL_APPEND", "PostgresBankStore"]

#: Most entries in one segment (2 MiB of hashes).
SEGMENT_ROWS = 65_536
#: Additions up to this size go into the last segment.
SMALL_APPEND = 1_000
_HASH = 32
_PAGE = 5_000
_WHAT = "bank store"


def _info(name: str, row: tuple[Any, ...]) -> BankInfo:
    description, created_at, version, entries, removed = row
    return BankInfo(
        name=name,
        description=description,
        created_at=created_at,
        version=int(version),
        entries=int(entries),
        removed=int(removed),
    )


def _entry(bank: str, row: tuple[Any, ...]) -> BankEntry:
    """An entry from its columns (migration 0070 added a video bank's frame: video,
    frame_number, timestamp_s, video_frames)."""
    entry_id, pdq, source, label, added_at, reference_id, quality, *video = row
    return BankEntry(
        bank=bank,
        id=int(entry_id),
        pdq=bytes(pdq).hex(),
        source=source,
        label=label,
        added_at=added_at,
        reference_id=reference_id,
        quality=quality,
        video=video[0],
        frame_number=video[1],
        timestamp_s=video[2],
        video_frames=video[3],
    )


class PostgresBankStore:
    """The :class:`~moderation.ports.BankStore` on PostgreSQL (thread-safe: a pool)."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    def _check(self, name: str) -> None:
        if not is_bank_name(name):
            raise BankNotFound(f"{name!r} is not a bank name (lowercase letters, digits, _ . -)")

    @staticmethod
    def _bump(conn: Connection[Any]) -> None:
        conn.execute("UPDATE bank_store_version SET version = version + 1")

    # --- banks -------------------------------------------------------------------------------

    def create(self, name: str, *, description: str = "") -> BankInfo:
        """Raises:
        BankExists: a bank of that name exists.
        BankNotFound: ``name`` is not a valid bank name.
        """
        self._check(name)
        with database_errors(_WHAT), self._pool.connection() as conn, conn.transaction():
            row = conn.execute(
                "INSERT INTO banks (name, description) VALUES (%s, %s) ON CONFLICT (name)"
                " DO NOTHING RETURNING description, created_at, version, entries, removed",
                (name, description),
            ).fetchone()
            if row is None:
                raise BankExists(f"bank {name!r} already exists")
            self._bump(conn)
        return _info(name, row)

    def delete(self, name: str) -> bool:
        self._check(name)
        with database_errors(_WHAT), self._pool.connection() as conn, conn.transaction():
            cur = conn.execute("DELETE FROM banks WHERE name = %s", (name,))
            self._bump(conn)
            return cur.rowcount > 0

    def info(self, name: str) -> BankInfo:
        self._check(name)
        with database_errors(_WHAT), self._pool.connection() as conn:
            row = conn.execute(
                "SELECT description, created_at, version, entries, removed FROM banks"
                " WHERE name = %s",
                (name,),
            ).fetchone()
        if row is None:
            raise BankNotFound(f"no bank {name!r}")
        return _info(name, row)

    def banks(self) -> list[BankInfo]:
        with database_errors(_WHAT), self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT name, description, created_at, version, entries, removed FROM banks"
                " ORDER BY name"
            ).fetchall()
        return [_info(r[0], r[1:]) for r in rows]

    def version(self) -> int:
        with database_errors(_WHAT), self._pool.connection() as conn:
            row = conn.execute("SELECT version FROM bank_store_version").fetchone()
        return int(row[0]) if row is not None else 0

    def manifest(self, name: str) -> BankManifest:
        self._check(name)
        with database_errors(_WHAT), self._pool.connection() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            row = conn.execute(
                "SELECT version, created_at FROM banks WHERE name = %s", (name,)
            ).fetchone()
            if row is None:
                raise BankNotFound(f"no bank {name!r}")
            segments = conn.execute(
                "SELECT number, first_id, count FROM bank_segments WHERE bank = %s"
                " ORDER BY first_id",
                (name,),
            ).fetchall()
            removed = conn.execute(
                "SELECT id FROM bank_entries WHERE bank = %s AND removed", (name,)
            ).fetchall()
        return BankManifest(
            name=name,
            epoch=row[1].isoformat(),
            version=int(row[0]),
            segments=tuple(Segment(number=n, first_id=f, count=c) for n, f, c in segments),
            removed=frozenset(int(r[0]) for r in removed),
        )

    def read_hashes(self, name: str, segment: Segment, start: int = 0) -> bytes:
        """The packed hashes of rows ``start ..`` of a committed segment (32 bytes each)."""
        if start >= segment.count:
            return b""
        with database_errors(_WHAT), self._pool.connection() as conn:
            row = conn.execute(
                "SELECT string_agg(pdq, ''::bytea ORDER BY id) FROM bank_entries"
                " WHERE bank = %s AND id >= %s AND id < %s",
                (name, segment.first_id + start, segment.end_id),
            ).fetchone()
        return bytes(row[0]) if row is not None and row[0] is not None else b""

    # --- writing -----------------------------------------------------------------------------

    @contextmanager
    def writing(self, name: str) -> Iterator[None]:
        """Hold the bank's write lock (a session-level advisory lock on a connection held for
        the block; the server releases it if this process dies).

        Raises:
            BankBusy: another writer holds it.
            BankNotFound: no such bank.
        """
        self.info(name)
        with database_errors(_WHAT), self._pool.connection() as conn:
            key = ("bank-write:" + name,)
            row = conn.execute(
                "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", key
            ).fetchone()
            conn.commit()  # the session lock outlives the transaction; nothing stays open
            if row is None or not row[0]:
                raise BankBusy(f"bank {name!r} is being written by another import or edit")
            try:
                yield
            finally:
                conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", key)
                conn.commit()

    def append(
        self,
        name: str,
        entries: Sequence[EntryData],
        *,
        progress: Callable[[int], object] | None = None,
    ) -> list[int]:
        """Add entries atomically (see the module docstring); call under :meth:`writing`."""
        if not entries:
            return []
        self._check(name)
        with database_errors(_WHAT), self._pool.connection() as conn, conn.transaction():
            row = conn.execute(
                "SELECT next_id, next_segment FROM banks WHERE name = %s FOR UPDATE", (name,)
            ).fetchone()
            if row is None:
                raise BankNotFound(f"no bank {name!r}")
            next_id, next_segment = int(row[0]), int(row[1])
            tail_row = conn.execute(
                "SELECT number, first_id, count FROM bank_segments WHERE bank = %s"
                " ORDER BY first_id DESC LIMIT 1",
                (name,),
            ).fetchone()
            tail = (
                Segment(number=tail_row[0], first_id=tail_row[1], count=tail_row[2])
                if tail_row
                else None
            )
            ids = list(range(next_id, next_id + len(entries)))
            self._copy(conn, name, entries, next_id, progress)
            if (
                tail is not None
                and len(entries) <= SMALL_APPEND
                and tail.end_id == next_id
                and tail.count + len(entries) <= SEGMENT_ROWS
            ):
                conn.execute(
                    "UPDATE bank_segments SET count = count + %s WHERE bank = %s AND number = %s",
                    (len(entries), name, tail.number),
                )
            else:
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO bank_segments (bank, number, first_id, count)"
                        " VALUES (%s, %s, %s, %s)",
                        [
                            (
                                name,
                                next_segment + k,
                                next_id + start,
                                min(SEGMENT_ROWS, len(entries) - start),
                            )
                            for k, start in enumerate(range(0, len(entries), SEGMENT_ROWS))
                        ],
                    )
                next_segment += -(-len(entries) // SEGMENT_ROWS)
            conn.execute(
                "UPDATE banks SET next_id = %s, next_segment = %s, entries = entries + %s,"
                " version = version + 1 WHERE name = %s",
                (next_id + len(entries), next_segment, len(entries), name),
            )
            self._bump(conn)
        return ids

    @staticmethod
    def _copy(
        conn: Connection[Any],
        name: str,
        entries: Sequence[EntryData],
        first_id: int,
        progress: Callable[[int], object] | None,
    ) -> None:
        with (
            conn.cursor() as cur,
            cur.copy(
                "COPY bank_entries (bank, id, pdq, source, label, added_at, reference_id, quality,"
                " video, frame_number, timestamp_s, video_frames) FROM STDIN"
            ) as copy,
        ):
            for start in range(0, len(entries), _PAGE):
                part = entries[start : start + _PAGE]
                for offset, e in enumerate(part):
                    copy.write_row(
                        (
                            name,
                            first_id + start + offset,
                            bytes.fromhex(e.pdq),
                            e.source,
                            e.label,
                            e.added_at,
                            e.reference_id,
                            e.quality,
                            e.video,
                            e.frame_number,
                            e.timestamp_s,
                            e.video_frames,
                        )
                    )
                if progress is not None:
                    progress(len(part))

    def remove(self, name: str, ids: Iterable[int]) -> int:
        """Tombstone live entries; returns how many were live."""
        self._check(name)
        wanted = sorted(set(ids))
        if not wanted:
            return 0
        with database_errors(_WHAT), self._pool.connection() as conn, conn.transaction():
            found = conn.execute("SELECT 1 FROM banks WHERE name = %s FOR UPDATE", (name,))
            if found.fetchone() is None:
                raise BankNotFound(f"no bank {name!r}")
            cur = conn.execute(
                "UPDATE bank_entries SET removed = true"
                " WHERE bank = %s AND id = ANY(%s) AND NOT removed",
                (name, wanted),
            )
            live = cur.rowcount
            if live:
                conn.execute(
                    "UPDATE banks SET entries = entries - %s, removed = removed + %s,"
                    " version = version + 1 WHERE name = %s",
                    (live, live, name),
                )
                self._bump(conn)
        return live

    # --- reading entries ---------------------------------------------------------------------

    def entries(self, name: str, ids: Sequence[int]) -> dict[int, BankEntry]:
        """Metadata of the live entries among ``ids``."""
        self._check(name)
        if not ids:
            return {}
        with database_errors(_WHAT), self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT id, pdq, source, label, added_at, reference_id, quality,"
                " video, frame_number, timestamp_s, video_frames"
                " FROM bank_entries WHERE bank = %s AND id = ANY(%s) AND NOT removed",
                (name, list(ids)),
            ).fetchall()
        return {int(r[0]): _entry(name, r) for r in rows}

    def scan(self, name: str) -> Iterator[BankEntry]:
        """Every live entry, in id order (read in pages; no transaction held between them)."""
        self.info(name)
        after = -1
        while True:
            with database_errors(_WHAT), self._pool.connection() as conn:
                rows = conn.execute(
                    "SELECT id, pdq, source, label, added_at, reference_id, quality,"
                    " video, frame_number, timestamp_s, video_frames"
                    " FROM bank_entries WHERE bank = %s AND id > %s AND NOT removed"
                    " ORDER BY id LIMIT %s",
                    (name, after, _PAGE),
                ).fetchall()
            if not rows:
                return
            for row in rows:
                yield _entry(name, row)
            after = int(rows[-1][0])

    # --- reviewer requests -------------------------------------------------------------------

    def request_addition(self, request: BankRequest, ttl_s: int) -> None:
        expires = datetime.now(UTC) + timedelta(seconds=ttl_s)
        with database_errors(_WHAT), self._pool.connection() as conn:
            conn.execute("DELETE FROM bank_requests WHERE expires_at < clock_timestamp()")
            conn.execute(
                "INSERT INTO bank_requests (review_id, request, expires_at) VALUES (%s, %s, %s)"
                " ON CONFLICT (review_id) DO UPDATE"
                " SET request = excluded.request, expires_at = excluded.expires_at",
                (request.review_id, Jsonb(request.model_dump(mode="json")), expires),
            )

    def addition_request(self, review_id: str) -> BankRequest | None:
        with database_errors(_WHAT), self._pool.connection() as conn:
            row = conn.execute(
                "SELECT request FROM bank_requests"
                " WHERE review_id = %s AND expires_at > clock_timestamp()",
                (review_id,),
            ).fetchone()
        return BankRequest.model_validate(row[0]) if row is not None else None
