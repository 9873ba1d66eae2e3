"""Reviewer accounts on Redis (hashes ``user:<name>`` under the review key prefix)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import redis

from moderation.adapters.support.redis import connect, translated
from moderation.core.reviewers import ReviewerAccount, Role
from moderation.exceptions import ReviewError

__all__ = ["RedisReviewerStore"]


class RedisReviewerStore:
    """The :class:`~moderation.ports.ReviewerStore` on Redis."""

    def __init__(self, client: redis.Redis, *, prefix: str = "mod:review:") -> None:
        self._r = client
        self._p = prefix

    @classmethod
    def from_url(cls, url: str, *, prefix: str) -> RedisReviewerStore:
        return cls(connect(url, decode=True, socket_timeout=5.0), prefix=prefix)

    @translated("reviewer accounts")
    def create(self, account: ReviewerAccount) -> None:
        """Raises:
        ReviewError: the username is taken (code ``review_user_exists``).
        """
        key = self._p + "user:" + account.username
        created = self._r.hsetnx(key, "password_hash", account.password_hash)
        if not created:
            raise ReviewError(f"reviewer {account.username!r} exists", code="review_user_exists")
        self._r.hset(
            key,
            mapping={
                "role": account.role.value,
                "disabled": "1" if account.disabled else "0",
                "created_at": repr(account.created_at),
                "queues": ",".join(account.queues),
            },
        )
        self._r.sadd(self._p + "users", account.username)

    @translated("reviewer accounts")
    def get(self, username: str) -> ReviewerAccount | None:
        h = cast(dict[str, str], self._r.hgetall(self._p + "user:" + username))
        if "password_hash" not in h or "role" not in h:
            return None
        return ReviewerAccount(
            username=username,
            role=Role(h["role"]),
            password_hash=h["password_hash"],
            disabled=h.get("disabled") == "1",
            created_at=float(h.get("created_at", "0")),
            queues=tuple(q for q in h.get("queues", "").split(",") if q),
        )

    @translated("reviewer accounts")
    def all(self) -> list[ReviewerAccount]:
        names = sorted(cast(set[str], self._r.smembers(self._p + "users")))
        return [a for a in (self.get(n) for n in names) if a is not None]

    @translated("reviewer accounts")
    def set_disabled(self, username: str, disabled: bool) -> None:
        """Raises:
        ReviewError: no such reviewer (code ``review_unknown_user``).
        """
        if self.get(username) is None:
            raise ReviewError(f"no reviewer {username!r}", code="review_unknown_user")
        self._r.hset(self._p + "user:" + username, "disabled", "1" if disabled else "0")

    @translated("reviewer accounts")
    def set_queues(self, username: str, queues: Sequence[str]) -> None:
        """Raises:
        ReviewError: no such reviewer (code ``review_unknown_user``).
        """
        if self.get(username) is None:
            raise ReviewError(f"no reviewer {username!r}", code="review_unknown_user")
        self._r.hset(self._p + "user:" + username, "queues", ",".join(queues))
