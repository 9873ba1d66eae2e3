"""Reviewer passwords: argon2id hashes (the only form in which a password is stored) and the
sign-in check, timed the same for an unknown user as for a wrong password."""

from __future__ import annotations

import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from moderation.core.reviewers import ReviewerAccount
from moderation.exceptions import ReviewAuthError, ReviewError

__all__ = ["MIN_PASSWORD", "hash_password", "verify_password"]

MIN_PASSWORD = 10


def _hasher() -> PasswordHasher:
    return PasswordHasher()  # argon2id with the library's current recommended parameters


def hash_password(password: str) -> str:
    """The argon2id hash of ``password``.

    Raises:
        ReviewError: the password is shorter than 10 characters (code ``review_weak_password``).
    """
    if len(password) < MIN_PASSWORD:
        raise ReviewError(
            f"password must have at least {MIN_PASSWORD} characters", code="review_weak_password"
        )
    return _hasher().hash(password)


# Verifying against this keeps the time of "no such user" close to "wrong password".
_DUMMY_HASH: list[str] = []


def verify_password(account: ReviewerAccount | None, password: str) -> ReviewerAccount:
    """Check a sign-in attempt.

    Raises:
        ReviewAuthError: unknown user, wrong password or disabled account (one message for all).
    """
    hasher = _hasher()
    if account is None:
        if not _DUMMY_HASH:
            _DUMMY_HASH.append(hasher.hash(secrets.token_hex(16)))
        target = _DUMMY_HASH[0]
    else:
        target = account.password_hash
    try:
        hasher.verify(target, password)
        ok = account is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        ok = False
    if not ok or account is None or account.disabled:
        raise ReviewAuthError("wrong username or password", code="review_bad_credentials")
    return account
