"""Policy documents on PostgreSQL (the :class:`~moderation.ports.PolicyStore` port).

Tables (``migrations/0080_policy_store.sql``)::

    policy_documents      every version of every policy document ever served: its YAML, its
                          exemplars (path -> sha256; the bytes are in the object store), the
                          slot (live, shadow, retired), who added it and when
    policy_store_version  one row: moves on every change of the served set (workers poll it)

A promotion is one transaction (the old live and the shadow documents retired, the promoted
text live, the version moved), so a worker reloading at any moment reads the set before or the
set after, never half of it. Writers are serialised by locking the version row first.

Transient database errors become :class:`~moderation.exceptions.DatabaseUnavailable`.
"""

from __future__ import annotations

from typing import Any

from psycopg import Connection, Rollback
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from moderation.adapters.postgres.errors import database_errors
from moderation.exceptions import PolicyError
from moderation.ports import PolicyDocument

__all__ = ["PostgresPolicyStore"]

_WHAT = "policy store"


def _document(row: tuple[Any, ...]) -> PolicyDocument:
    doc_id, policy_id, version, slot, body, exemplars, added_by = row
    return PolicyDocument(
        id=int(doc_id),
        policy_id=policy_id,
        version=int(version),
        slot=slot,
        body=body,
        exemplars={str(k): str(v) for k, v in (exemplars or {}).items()},
        added_by=added_by,
    )


def _unknown(document_id: int, what: str = "") -> PolicyError:
    return PolicyError(f"no {what}policy document {document_id}", code="policy_document_unknown")


class PostgresPolicyStore:
    """The :class:`~moderation.ports.PolicyStore` on PostgreSQL (thread-safe: a pool)."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    @staticmethod
    def _lock_and_bump(conn: Connection[Any]) -> None:
        conn.execute("UPDATE policy_store_version SET version = version + 1")

    def version(self) -> int:
        with database_errors(_WHAT), self._pool.connection() as conn:
            row = conn.execute("SELECT version FROM policy_store_version").fetchone()
        return int(row[0]) if row else 0

    def serving(self) -> list[PolicyDocument]:
        with database_errors(_WHAT), self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT id, policy_id, version, slot, body, exemplars, added_by "
                "FROM policy_documents WHERE slot <> 'retired' ORDER BY id"
            ).fetchall()
        return [_document(r) for r in rows]

    def document(self, document_id: int) -> PolicyDocument:
        with database_errors(_WHAT), self._pool.connection() as conn:
            row = conn.execute(
                "SELECT id, policy_id, version, slot, body, exemplars, added_by "
                "FROM policy_documents WHERE id = %s",
                (document_id,),
            ).fetchone()
        if row is None:
            raise _unknown(document_id)
        return _document(row)

    def publish(
        self,
        *,
        policy_id: str,
        version: int,
        slot: str,
        body: str,
        exemplars: dict[str, str],
        actor: str,
    ) -> PolicyDocument:
        if slot not in {"live", "shadow"}:
            raise PolicyError(f"cannot publish into slot {slot!r}", code="policy_slot")
        unchanged: PolicyDocument | None = None
        added = None
        with database_errors(_WHAT), self._pool.connection() as conn, conn.transaction() as tx:
            self._lock_and_bump(conn)  # serialises writers
            row = conn.execute(
                "SELECT id, policy_id, version, slot, body, exemplars, added_by "
                "FROM policy_documents WHERE policy_id = %s AND slot = %s",
                (policy_id, slot),
            ).fetchone()
            if row is not None:
                same = _document(row)
                if same.version == version and same.body == body:
                    unchanged = same
                    raise Rollback(tx)  # nothing changed: the version stays
                conn.execute(
                    "UPDATE policy_documents SET slot = 'retired', retired_at = clock_timestamp() "
                    "WHERE id = %s",
                    (same.id,),
                )
            added = conn.execute(
                "INSERT INTO policy_documents "
                "(policy_id, version, slot, body, exemplars, added_by) "
                "VALUES (%s, %s, %s, %s, %s, %s) "
                "RETURNING id, policy_id, version, slot, body, exemplars, added_by",
                (policy_id, version, slot, body, Jsonb(exemplars), actor),
            ).fetchone()
        if unchanged is not None:
            return unchanged
        assert added is not None  # INSERT ... RETURNING returns its row
        return _document(added)

    def promote(self, shadow_id: int, *, body: str, actor: str) -> PolicyDocument:
        with database_errors(_WHAT), self._pool.connection() as conn, conn.transaction():
            self._lock_and_bump(conn)
            row = conn.execute(
                "SELECT id, policy_id, version, slot, body, exemplars, added_by "
                "FROM policy_documents WHERE id = %s AND slot = 'shadow'",
                (shadow_id,),
            ).fetchone()
            if row is None:
                raise _unknown(shadow_id, "serving shadow ")
            shadow = _document(row)
            conn.execute(
                "UPDATE policy_documents SET slot = 'retired', retired_at = clock_timestamp() "
                "WHERE policy_id = %s AND slot IN ('live', 'shadow')",
                (shadow.policy_id,),
            )
            added = conn.execute(
                "INSERT INTO policy_documents "
                "(policy_id, version, slot, body, exemplars, added_by) "
                "VALUES (%s, %s, 'live', %s, %s, %s) "
                "RETURNING id, policy_id, version, slot, body, exemplars, added_by",
                (shadow.policy_id, shadow.version, body, Jsonb(shadow.exemplars), actor),
            ).fetchone()
        assert added is not None  # INSERT ... RETURNING returns its row
        return _document(added)
