"""Reviewer accounts: who may review, with which role. Pure: no I/O.

Accounts are kept behind the :class:`~moderation.ports.ReviewerStore` port; passwords only as
argon2id hashes (:mod:`moderation.web.auth`). Outside the review system a reviewer is known only by
a keyed pseudonym (:func:`moderation.core.review.pseudonym`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from moderation.exceptions import ReviewError

__all__ = ["ReviewerAccount", "Role", "check_username"]

_USERNAME = re.compile(r"^[a-z][a-z0-9_.-]{1,63}$")


class Role(str, Enum):
    REVIEWER = "reviewer"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class ReviewerAccount:
    username: str
    role: Role
    password_hash: str
    disabled: bool
    created_at: float


def check_username(username: str) -> str:
    """Validate a username (lower case, 2-64 chars of ``a-z0-9_.-``, starting with a letter).

    Raises:
        ReviewError: the username is malformed (code ``review_bad_username``).
    """
    if not _USERNAME.match(username):
        raise ReviewError(
            f"invalid username {username!r}: use 2-64 of a-z 0-9 _ . - starting with a letter",
            code="review_bad_username",
        )
    return username
