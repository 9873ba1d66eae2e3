"""Reviewer sign-in, sessions and sign-out: the use case behind ``/review/login``, every signed-in
request, ``/review/logout`` and "end every session of this account".

Sessions are server-side (:class:`~moderation.ports.ReviewerSessions`): the cookie carries a
random token, the store keeps its hash with the account, the CSRF nonce and two clocks. A
session ends at sign-out, when an admin (or ``moderation review user logout``) ends the
account's sessions, when the account is disabled, after ``review.session_idle_s`` without a
request and ``review.session_ttl_s`` after sign-in. A copied cookie is worth nothing after any
of these.

Sign-in is throttled (:class:`~moderation.ports.LoginThrottle`, rules in
:class:`~moderation.core.reviewers.LoginPolicy`) per (account, client address), per address and,
more gently, per account: after a few failures each further one makes the next attempt wait
longer; many failures of one account *from one address*, or of one address, lock sign-in there
for a while. Failures of an account from many addresses only slow it down, never lock it: an
attacker cannot lock a reviewer (or the admin) out from everywhere. The attempt is reserved,
atomically, *before* the password is checked (counted as a failure, given back when it
succeeds), so concurrent attempts see each other and a throttled attempt costs no argon2 work;
even the right password is refused until the wait is over. At most ``max_concurrent_checks``
password checks run at once (argon2 is memory-hard: each takes tens of MiB); an attempt that
finds no free slot within ``check_wait_s`` is refused (429, ``review_login_busy``) unchecked. An
unknown user costs the same check as a known one (no enumeration by timing). Every checked
failure is counted in metrics and written to the audit log (kind ``security``, the account's
pseudonym as actor, the client address); so is every lockout and every "end all sessions".
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from moderation.core.audit import record_for_security
from moderation.core.audit.records import SecurityEvent
from moderation.core.reviewers import (
    LoginPolicy,
    ReviewerAccount,
    ReviewerSession,
    session_key,
)
from moderation.exceptions import LoginBusy, LoginThrottled, ModerationError, ReviewAuthError
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
        pair_policy: LoginPolicy | None = None,
        max_concurrent_checks: int = 4,
        check_wait_s: float = 1.0,
        audit: AuditSink | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``pair_policy`` (per account and address) defaults to ``account_policy``; the
        account as a whole then gets ``account_policy`` without its lockout."""
        self.users = users
        self.sessions = sessions
        self.throttle = throttle
        self.check_password = check_password
        self.pseudonym = pseudonym
        self.pair_policy = pair_policy or account_policy
        self.account_policy = replace(account_policy, lockout_after=None)
        self.address_policy = address_policy
        self.check_wait_s = check_wait_s
        self._checks = threading.BoundedSemaphore(max(1, max_concurrent_checks))
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
        scopes = (
            ("account", f"account:{name}", self.account_policy),
            ("pair", f"pair:{name}@{client}", self.pair_policy),
            ("address", f"address:{client}", self.address_policy),
        )
        wait, counts = self.throttle.reserve([(key, policy) for _, key, policy in scopes], now)
        if wait > 0:
            metrics().login_failures.labels("throttled").inc()
            raise LoginThrottled(
                f"too many failed sign-ins: try again in {_human(wait)}",
                retry_after_s=wait,
            )
        if not self._checks.acquire(timeout=self.check_wait_s):
            for _, key, _ in scopes[:2]:  # not the account's fault; the address keeps its count
                self.throttle.refund(key)
            metrics().login_failures.labels("busy").inc()
            raise LoginBusy("too many sign-ins at once: try again in a second", retry_after_s=1.0)
        try:
            account = self.check_password(self.users.get(name), password)
        except ReviewAuthError:
            self._failed(name, client, scopes, counts)
            raise
        finally:
            self._checks.release()
        self.throttle.clear(scopes[0][1])
        self.throttle.clear(scopes[1][1])
        self.throttle.refund(scopes[2][1])  # one good account is no alibi for the address
        token = secrets.token_urlsafe(32)
        session = ReviewerSession(
            username=account.username,
            created_at=now,
            last_seen=now,
            nonce=secrets.token_urlsafe(16),
        )
        self.sessions.create(session_key(token), session)
        return token, session

    def _failed(
        self,
        name: str,
        client: str,
        scopes: tuple[tuple[str, str, LoginPolicy], ...],
        counts: tuple[int, ...],
    ) -> None:
        metrics().login_failures.labels("bad_credentials").inc()
        for (scope, _, policy), failures in zip(scopes, counts, strict=True):
            if policy.lockout_after is not None and failures == policy.lockout_after:
                metrics().login_lockouts.labels(scope).inc()
                self._audit(
                    "login_locked",
                    name,
                    {
                        "client": client,
                        "scope": scope,
                        "failures": failures,
                        "for_s": policy.wait_after(failures),
                    },
                )
        by_scope = dict(zip([s for s, _, _ in scopes], counts, strict=True))
        self._audit(
            "login_failed",
            name,
            {
                "client": client,
                "account_failures": by_scope["account"],
                "pair_failures": by_scope["pair"],
                "address_failures": by_scope["address"],
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
