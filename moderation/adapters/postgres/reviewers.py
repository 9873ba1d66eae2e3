"""Reviewer accounts on PostgreSQL (table ``reviewer_accounts``, ``migrations/0010_review.sql``):
the username, role, argon2id hash (never a password), whether the account is disabled, and when
it was created."""

from __future__ import annotations

from collections.abc import Sequence

import psycopg
from psycopg_pool import ConnectionPool

from moderation.adapters.postgres.errors import database_errors
from moderation.core.reviewers import ReviewerAccount, Role
from moderation.exceptions import ReviewError

__all__ = ["PostgresReviewerStore"]

_WHAT = "reviewer accounts"


def _account(row: tuple[str, str, str, bool, float, list[str]]) -> ReviewerAccount:
    username, role, password_hash, disabled, created_at, queues = row
    return ReviewerAccount(
        username=username,
        role=Role(role),
        password_hash=password_hash,
        disabled=bool(disabled),
        created_at=float(created_at),
        queues=tuple(queues or ()),
    )


class PostgresReviewerStore:
    """The :class:`~moderation.ports.ReviewerStore` on PostgreSQL."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    def create(self, account: ReviewerAccount) -> None:
        """Raises:
        ReviewError: the username is taken (code ``review_user_exists``).
        DatabaseUnavailable: the database is unreachable.
        """
        with database_errors(_WHAT), self._pool.connection() as conn:
            try:
                conn.execute(
                    "INSERT INTO reviewer_accounts"
                    " (username, role, password_hash, disabled, created_at, queues)"
                    " VALUES (%s, %s, %s, %s, %s, %s)",
                    (
                        account.username,
                        account.role.value,
                        account.password_hash,
                        account.disabled,
                        account.created_at,
                        list(account.queues),
                    ),
                )
            except psycopg.errors.UniqueViolation as exc:
                raise ReviewError(
                    f"reviewer {account.username!r} exists", code="review_user_exists"
                ) from exc

    def get(self, username: str) -> ReviewerAccount | None:
        with database_errors(_WHAT), self._pool.connection() as conn:
            row = conn.execute(
                "SELECT username, role, password_hash, disabled, created_at, queues"
                " FROM reviewer_accounts"
                " WHERE username = %s",
                (username,),
            ).fetchone()
        return _account(row) if row is not None else None

    def all(self) -> list[ReviewerAccount]:
        with database_errors(_WHAT), self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT username, role, password_hash, disabled, created_at, queues"
                " FROM reviewer_accounts"
                " ORDER BY username"
            ).fetchall()
        return [_account(r) for r in rows]

    def set_disabled(self, username: str, disabled: bool) -> None:
        """Raises:
        ReviewError: no such reviewer (code ``review_unknown_user``).
        """
        with database_errors(_WHAT), self._pool.connection() as conn:
            cur = conn.execute(
                "UPDATE reviewer_accounts SET disabled = %s WHERE username = %s",
                (disabled, username),
            )
            if cur.rowcount == 0:
                raise ReviewError(f"no reviewer {username!r}", code="review_unknown_user")

    def set_queues(self, username: str, queues: Sequence[str]) -> None:
        """Raises:
        ReviewError: no such reviewer (code ``review_unknown_user``).
        """
        with database_errors(_WHAT), self._pool.connection() as conn:
            cur = conn.execute(
                "UPDATE reviewer_accounts SET queues = %s WHERE username = %s",
                (list(queues), username),
            )
            if cur.rowcount == 0:
                raise ReviewError(f"no reviewer {username!r}", code="review_unknown_user")
