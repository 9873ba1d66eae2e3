"""Reviewer sign-in helpers: CSRF tokens and pseudonyms (password hashing lives in
:mod:`moderation.adapters.passwords`).

Passwords are stored only as argon2id hashes. Sessions are server-side
(:mod:`moderation.pipeline.signin`); the cookie is a random token. The CSRF token of a session is
``HMAC(secret, "csrf:" + nonce)`` with the session's server-side nonce: pages embed it and every
state-changing request must send it back (header ``X-CSRF-Token`` or form field ``csrf``). The
account is re-read on every request, so disabling a reviewer or changing a role takes effect at
once. Sign-in itself is protected by a pre-session nonce cookie (double submit).
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from moderation.core.review import pseudonym
from moderation.exceptions import ReviewAuthError

__all__ = ["SessionCodec"]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class SessionCodec:
    """Derives CSRF tokens (bound to a session's nonce) and reviewer pseudonyms. Sessions
    themselves are server-side (:mod:`moderation.pipeline.signin`)."""

    def __init__(self, *, session_secret: str, pseudonym_secret: str) -> None:
        self._key = hashlib.sha256(b"moderation-review-session:" + session_secret.encode()).digest()
        self._pseudonym_secret = pseudonym_secret

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())

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
