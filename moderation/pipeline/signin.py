"""Reviewer sign-in, sessions and sign-out: the use case behind ``/review/login``, every signed-in
request, ``/review/logout`` and "end every session of this account".

Sessions are server-side (:class:`~moderation.ports.ReviewerSessions`): the cookie carries a
random token, the store keeps its hash with the account, the CSRF nonce and two clocks. A
session ends at sign-out, when an admin (or ``moderation review user logout``) ends the
account's sessions, when the account is disabled, after ``review.session_idle_s`` without a
request and ``review.session_ttl_s`` after sign-in. A copied cookie is worth nothing after any
of these.

Sign-in is throttled per account and per client address (:class:`~moderation.ports.
LoginThrottle`, rules in :class:`~moderation.core.reviewers.LoginPolicy`): after a few failures
each further one makes the next attempt wait longer, and many failures lock sign-in for a while.
A throttled attempt is refused *before* the password is checked, so it costs no argon2 work and
even the right password is refused until the wait is over. Every checked failure is counted in
metrics and written to the audit log (kind ``security``, the account's pseudonym as actor, the
client address); so is every lockout and every "end all sessions".
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Callable

from moderation.core.audit import record_for_security
from moderation.core.audit.records import SecurityEvent
from moderation.core.reviewers import (
    LoginPolicy,
    ReviewerAccount,
    ReviewerSession,
    session_key,
)
from moderation.exceptions import LoginThrottled, ModerationError, ReviewAuthError
from moderation.metrics import metrics
from moderation.ports import AuditSink, LoginThrottle, ReviewerSessions, ReviewerStore

__all__ = ["CheckPassword", "ReviewerAuth"]

log = logging.getLogger(__name__)

#: Checks a password against an account (None: unknown user, still take the time of a check).
#: Raises ReviewAuthError on a mismatch or a disabled account.
CheckPassword = Callable[[ReviewerAccount | None, str], ReviewerAccount]


class ReviewerAuth:
    """Signs reviewers in and out and resolves their sessions. Thread-safe if its ports are."""

    def __init__(
        self,
        *,
        users: ReviewerStore,
        sessions: ReviewerSessions,
        throttle: LoginThrottle,
        check_password: CheckPassword,
        pseudonym: Callable[[str], str],
        account_policy: LoginPolicy,
        address_policy: LoginPolicy,
        audit: AuditSink | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.users = users
        self.sessions = sessions
        self.throttle = throttle
        self.check_password = check_password
        self.pseudonym = pseudonym
        self.account_policy = account_policy
        self.address_policy = address_policy
        self.audit = audit
        self.clock = clock

    def sign_in(self, username: str, password: str, *, client: str) -> tuple[str, ReviewerSession]:
        """A new session for the account: (cookie token, session).

        Raises:
            LoginThrottled: too many recent failures for this account or address (the password
                was not checked).
            ReviewAuthError: wrong username or password, or a disabled account (one message).
            QueueUnavailable: the session store cannot be reached.
        """
        name = username.strip().lower()
        now = self.clock()
        keys = [f"account:{name}", f"address:{client}"]
        wait = self.throttle.blocked_for(keys, now)
        if wait > 0:
            metrics().login_failures.labels("throttled").inc()
            raise LoginThrottled(
                f"too many failed sign-ins: try again in {_human(wait)}",
                retry_after_s=wait,
            )
        try:
            account = self.check_password(self.users.get(name), password)
        except ReviewAuthError:
            self._failed(name, client, now)
            raise
        self.throttle.clear(keys[0])  # the address keeps its count: one good account is no alibi
        token = secrets.token_urlsafe(32)
        session = ReviewerSession(
            username=account.username,
            created_at=now,
            last_seen=now,
            nonce=secrets.token_urlsafe(16),
        )
        self.sessions.create(session_key(token), session)
        return token, session

    def _failed(self, name: str, client: str, now: float) -> None:
        metrics().login_failures.labels("bad_credentials").inc()
        counts: dict[str, int] = {}
        for scope, key, policy in (
            ("account", f"account:{name}", self.account_policy),
            ("address", f"address:{client}", self.address_policy),
        ):
            failures = self.throttle.fail(key, now, window_s=policy.window_s)
            counts[scope] = failures
            wait = policy.wait_after(failures)
            if wait > 0:
                self.throttle.block(key, now + wait)
            if failures == policy.lockout_after:
                metrics().login_lockouts.labels(scope).inc()
                self._audit(
                    "login_locked",
                    name,
                    {"client": client, "scope": scope, "failures": failures, "for_s": wait},
                )
        self._audit(
            "login_failed",
            name,
            {
                "client": client,
                "account_failures": counts["account"],
                "address_failures": counts["address"],
            },
        )

    def _audit(self, event: SecurityEvent, username: str, details: dict[str, object]) -> None:
        if self.audit is None:
            return
        try:
            self.audit.write(
                record_for_security(event, actor=self.pseudonym(username), details=details)
            )
        except ModerationError as exc:  # a sign-in answer does not wait for the audit log
            log.warning("audit record of %s not written: %s", event, exc)

    def session(self, token: str | None) -> tuple[ReviewerSession, ReviewerAccount]:
        """The live session of a cookie token, and its (enabled) account; the session's idle
        clock restarts.

        Raises:
            ReviewAuthError: no token, or the session ended, timed out, or its account was
                disabled or removed (code ``review_not_signed_in``).
            QueueUnavailable: the session store cannot be reached.
        """
        if not token:
            raise ReviewAuthError("not signed in", code="review_not_signed_in")
        key = session_key(token)
        session = self.sessions.touch(key, self.clock())
        if session is None:
            raise ReviewAuthError(
                "your session ended or expired: sign in again", code="review_not_signed_in"
            )
        account = self.users.get(session.username)
        if account is None or account.disabled:
            self.sessions.end(key)
            raise ReviewAuthError("account disabled or removed", code="review_not_signed_in")
        return session, account

    def sign_out(self, token: str | None) -> None:
        """End the session of a cookie token (nothing when there is none)."""
        if token:
            self.sessions.end(session_key(token))

    def end_sessions(self, username: str, *, by: str) -> int:
        """End every session of ``username`` (an admin's action; ``by`` says who: a reviewer
        pseudonym or ``cli``). Returns how many there were.

        Raises:
            QueueUnavailable: the session store cannot be reached.
        """
        ended = self.sessions.end_all(username)
        self._audit("sessions_ended", username, {"by": by, "sessions": ended})
        return ended


def _human(seconds: float) -> str:
    whole = max(1, math.ceil(seconds))
    if whole < 120:
        return f"{whole} s"
    return f"{math.ceil(whole / 60)} min"
