"""Reviewer accounts, sessions and sign-in throttling: the rules. Pure: no I/O.

Accounts are kept behind the :class:`~moderation.ports.ReviewerStore` port; passwords only as
argon2id hashes (:mod:`moderation.adapters.passwords`). Outside the review system a reviewer is
known only by a keyed pseudonym (:func:`moderation.core.review.pseudonym`).

Sessions are server-side (:class:`~moderation.ports.ReviewerSessions`): the cookie holds a random
token, the store keeps only its hash. A session ends at sign-out, when an admin ends the
account's sessions, after ``idle_s`` without a request, and ``max_s`` after sign-in whatever
happens (:func:`session_alive`).

Sign-in throttling (:class:`LoginPolicy`) counts failures per account, per (account, client
address) and per client address::

    failures f <= free            no wait
    free < f < lockout_after      next attempt waits min(max_delay_s, delay_s * 2 ** (f - free - 1))
    f >= lockout_after            locked for lockout_s (never, when lockout_after is None)

Only the (account, address) pair and the address are ever locked; the account as a whole is only
slowed down (its policy has no lockout), so an attacker cannot lock a reviewer out from every
address. An attempt is counted as a failure *before* its password is checked (and given back
when it succeeds), so concurrent attempts cannot all slip past the throttle.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from enum import Enum

from moderation.exceptions import ReviewError

__all__ = [
    "ROLE_QUEUES",
    "LoginPolicy",
    "ReviewerAccount",
    "ReviewerSession",
    "Role",
    "allowed_queues",
    "check_queue_name",
    "check_username",
    "session_alive",
    "session_key",
]

_USERNAME = re.compile(r"^[a-z][a-z0-9_.-]{1,63}$")


class Role(str, Enum):
    REVIEWER = "reviewer"
    #: A reviewer who also works the escalation queue.
    SENIOR = "senior"
    ADMIN = "admin"


#: The review queues each role may work without a grant (``review`` is every item's first
#: queue; ``escalation`` gets what a reviewer escalated; ``appeal``, the appeals, which a
#: reviewer works by a grant). Admins work every queue.
ROLE_QUEUES: dict[Role, tuple[str, ...]] = {
    Role.REVIEWER: ("review",),
    Role.SENIOR: ("review", "escalation", "appeal"),
    Role.ADMIN: ("review", "escalation", "appeal"),
}

_QUEUE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


def check_queue_name(name: str) -> str:
    """Validate a review queue name (1-32 of ``a-z0-9_-``, starting with a letter).

    Raises:
        ReviewError: the name is malformed (code ``review_bad_queue``).
    """
    if not _QUEUE_NAME.match(name):
        raise ReviewError(
            f"invalid queue name {name!r}: use 1-32 of a-z 0-9 _ - starting with a letter",
            code="review_bad_queue",
        )
    return name


@dataclass(frozen=True, slots=True)
class ReviewerAccount:
    username: str
    role: Role
    password_hash: str
    disabled: bool
    created_at: float
    #: Queues granted to this account on top of its role's (:data:`ROLE_QUEUES`).
    queues: tuple[str, ...] = ()


def allowed_queues(account: ReviewerAccount) -> tuple[str, ...]:
    """The review queues ``account`` may claim from: its role's, then its grants, in order."""
    out = list(ROLE_QUEUES[account.role])
    out.extend(q for q in account.queues if q not in out)
    return tuple(out)


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


@dataclass(frozen=True, slots=True)
class ReviewerSession:
    """A signed-in reviewer. ``nonce`` keys the session's CSRF token."""

    username: str
    created_at: float
    last_seen: float
    nonce: str


def session_key(token: str) -> str:
    """What the session store keeps for a cookie token (its SHA-256): a copy of the store gives
    no usable cookie."""
    return hashlib.sha256(token.encode()).hexdigest()


def session_alive(session: ReviewerSession, now: float, *, idle_s: float, max_s: float) -> bool:
    """Whether a session may still be used at ``now`` (idle timeout and absolute lifetime)."""
    return now - session.last_seen < idle_s and now - session.created_at < max_s


@dataclass(frozen=True, slots=True)
class LoginPolicy:
    """How failed sign-ins slow down the next attempt (see the module docstring)."""

    free_failures: int = 3
    delay_s: float = 1.0
    max_delay_s: float = 60.0
    #: None: never locked, only slowed down (up to ``max_delay_s``).
    lockout_after: int | None = 10
    lockout_s: float = 900.0
    #: Failures older than this are forgotten.
    window_s: float = 900.0

    def wait_after(self, failures: int) -> float:
        """Seconds the next attempt must wait after ``failures`` failures in the window."""
        if self.locked(failures):
            return self.lockout_s
        if failures <= self.free_failures:
            return 0.0
        steps = min(failures - self.free_failures - 1, 64)
        return float(min(self.max_delay_s, self.delay_s * 2**steps))

    def locked(self, failures: int) -> bool:
        return self.lockout_after is not None and failures >= self.lockout_after

    def schedule(self) -> tuple[float, ...]:
        """``wait_after(1), wait_after(2), ...`` up to the point where it stops changing: the
        last value holds for every larger count (what a store applies atomically)."""
        waits: list[float] = []
        failures = 0
        while True:
            failures += 1
            waits.append(self.wait_after(failures))
            settled = (
                self.locked(failures)
                if self.lockout_after is not None
                else failures > self.free_failures and waits[-1] >= self.max_delay_s
            )
            if settled or failures >= 4096:
                return tuple(waits)
