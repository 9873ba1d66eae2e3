"""Reviewer sign-in: argon2id password hashes, signed session cookies, CSRF tokens.

Passwords are stored only as argon2id hashes. A session is a cookie ``base64(json).hmac`` signed
with ``settings.review.session_secret``; it carries the username, role, expiry and a random nonce.
The CSRF token of a session is ``HMAC(secret, "csrf:" + nonce)``: pages embed it and every
state-changing request must send it back (header ``X-CSRF-Token`` or form field ``csrf``). The
account is re-read on every request, so disabling a reviewer or changing a role takes effect at
once. Sign-in itself is protected by a pre-session nonce cookie (double submit).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from moderation.core.review import pseudonym
from moderation.core.reviewers import ReviewerAccount, Role
from moderation.exceptions import ReviewAuthError, ReviewError

__all__ = ["MIN_PASSWORD", "Session", "SessionCodec", "hash_password", "verify_password"]

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


@dataclass(frozen=True, slots=True)
class Session:
    username: str
    role: Role
    expires_at: float
    nonce: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionCodec:
    """Signs and checks session cookies, derives CSRF tokens and reviewer pseudonyms."""

    def __init__(self, *, session_secret: str, pseudonym_secret: str, ttl_s: int) -> None:
        self._key = hashlib.sha256(b"moderation-review-session:" + session_secret.encode()).digest()
        self._pseudonym_secret = pseudonym_secret
        self.ttl_s = ttl_s

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())

    def issue(self, account: ReviewerAccount, *, now: float) -> tuple[Session, str]:
        """A new session for ``account`` and its cookie value."""
        session = Session(
            username=account.username,
            role=account.role,
            expires_at=now + self.ttl_s,
            nonce=secrets.token_urlsafe(16),
        )
        body = _b64(
            json.dumps(
                {
                    "u": session.username,
                    "r": session.role.value,
                    "e": session.expires_at,
                    "n": session.nonce,
                },
                separators=(",", ":"),
            ).encode()
        )
        return session, f"{body}.{self._sign(body)}"

    def read(self, cookie: str | None, *, now: float) -> Session:
        """The session in a cookie.

        Raises:
            ReviewAuthError: missing, tampered with or expired.
        """
        if not cookie or "." not in cookie:
            raise ReviewAuthError("not signed in", code="review_not_signed_in")
        body, signature = cookie.rsplit(".", 1)
        if not hmac.compare_digest(signature, self._sign(body)):
            raise ReviewAuthError("invalid session", code="review_not_signed_in")
        try:
            data = json.loads(_unb64(body))
            session = Session(
                username=str(data["u"]),
                role=Role(data["r"]),
                expires_at=float(data["e"]),
                nonce=str(data["n"]),
            )
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise ReviewAuthError("invalid session", code="review_not_signed_in") from exc
        if session.expires_at <= now:
            raise ReviewAuthError("session expired", code="review_not_signed_in")
        return session

    def csrf_token(self, nonce: str) -> str:
        """The CSRF token bound to a session (or pre-session) nonce."""
        return self._sign("csrf:" + nonce)

    def check_csrf(self, nonce: str, token: str | None) -> None:
        """Raises:
        ReviewAuthError: the token is missing or does not belong to this session.
        """
        if not token or not hmac.compare_digest(token, self.csrf_token(nonce)):
            raise ReviewAuthError("missing or invalid CSRF token", code="review_csrf")

    def pseudonym(self, username: str) -> str:
        return pseudonym(self._pseudonym_secret, username)
