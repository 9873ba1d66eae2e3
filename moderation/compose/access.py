"""Who may do what: tenants and their limits, reviewer sign-in, and the production security
check (:class:`~moderation.exceptions.InsecureSettingsError`).
"""

from __future__ import annotations

import logging

from moderation.adapters.passwords import verify_password
from moderation.adapters.redis_sessions import RedisLoginThrottle
from moderation.compose.stores import open_reviewer_sessions, require_redis_url
from moderation.core.admission import Tenant
from moderation.core.fairness import queued_byte_shares
from moderation.core.review import pseudonym
from moderation.core.reviewers import LoginPolicy
from moderation.pipeline.signin import ReviewerAuth
from moderation.ports import (
    AuditSink,
    LoginThrottle,
    ReviewerSessions,
    ReviewerStore,
)
from moderation.settings import ReviewSettings, Settings

__all__ = ["build_reviewer_auth", "build_tenants", "enforce_security", "login_policies"]

log = logging.getLogger(__name__)


def build_tenants(settings: Settings) -> dict[str, Tenant]:
    """Every configured tenant, with its policy set and limits (``default`` as well when no API
    keys are configured: the open API of development mode)."""
    base = settings.rate_limits
    out: dict[str, Tenant] = {}
    shares = queued_byte_shares(
        settings.queue.max_queued_bytes,
        settings.tenant_weights(),
        {name: t.max_queued_bytes for name, t in settings.tenants.items()},
    )
    for name in settings.tenant_names():
        own = settings.tenants.get(name)
        high = own.high_priority_per_minute if own else None
        out[name] = Tenant(
            name=name,
            policies=tuple(own.policies) if own and own.policies is not None else None,
            rate_per_s=own.rate_per_s if own and own.rate_per_s is not None else base.rate_per_s,
            burst=own.burst if own and own.burst is not None else base.burst,
            daily_jobs=own.daily_jobs if own and own.daily_jobs is not None else base.daily_jobs,
            max_queued_bytes=shares[name],
            high_per_minute=high if high is not None else base.high_priority_per_minute,
            trusted_flagger_notices=own.trusted_flagger_notices if own else False,
        )
    return out


def login_policies(review: ReviewSettings) -> tuple[LoginPolicy, LoginPolicy, LoginPolicy]:
    """Sign-in throttling per account (slowed down, never locked), per (account, client
    address) and per client address."""

    def policy(lockout_after: int | None, max_delay_s: float) -> LoginPolicy:
        return LoginPolicy(
            free_failures=review.login_free_failures,
            delay_s=review.login_delay_s,
            max_delay_s=max_delay_s,
            lockout_after=lockout_after,
            lockout_s=float(review.login_lockout_s),
            window_s=float(review.login_window_s),
        )

    slowest = review.login_max_delay_s
    return (
        policy(None, min(slowest, review.login_account_max_delay_s)),
        policy(review.login_lockout_after, slowest),
        policy(review.login_lockout_after_address, slowest),
    )


def build_reviewer_auth(
    settings: Settings,
    users: ReviewerStore,
    *,
    sessions: ReviewerSessions | None = None,
    throttle: LoginThrottle | None = None,
    audit: AuditSink | None = None,
) -> ReviewerAuth:
    """Reviewer sign-in, sessions and throttling (Redis unless given).

    Raises:
        QueueUnavailable: no Redis URL configured (and no sessions or throttle given).
    """
    r = settings.review
    secret = r.pseudonym_secret.get_secret_value()
    account, pair, address = login_policies(r)
    return ReviewerAuth(
        users=users,
        sessions=sessions or open_reviewer_sessions(settings),
        throttle=throttle
        or RedisLoginThrottle.from_url(require_redis_url(settings), prefix=r.key_prefix),
        check_password=verify_password,
        pseudonym=lambda username: pseudonym(secret, username),
        account_policy=account,
        pair_policy=pair,
        address_policy=address,
        max_concurrent_checks=r.login_max_concurrent_checks,
        check_wait_s=r.login_check_wait_s,
        audit=audit,
    )


def enforce_security(settings: Settings) -> None:
    """Refuse an unsafe production configuration; warn loudly in development mode.

    Raises:
        InsecureSettingsError: production with weak secrets or keys.
    """
    for problem in settings.enforce_security():
        log.warning("DEVELOPMENT MODE: %s (refused in production)", problem)
