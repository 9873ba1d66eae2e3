"""Admission of new jobs per tenant: the token bucket and the daily quota. Pure: no I/O.

A tenant's bucket holds at most ``burst`` tokens and refills at ``rate_per_s``; a submission of
``n`` jobs takes ``n`` tokens or none. With a daily quota, at most ``daily_jobs`` jobs are
admitted per UTC day. A refusal says how long to wait (``Retry-After``). The Redis adapter runs
the same arithmetic in one Lua script (atomic across API processes); the in-memory twin calls
:func:`take` directly.

::

    tokens(now) = min(burst, tokens(then) + (now - then) * rate_per_s)
    grant n     iff  n <= tokens(now)  and  used_today + n <= daily_jobs
    retry after (n - tokens(now)) / rate_per_s     (rate)
                seconds until the next UTC midnight (quota)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

__all__ = ["DAY_S", "Admission", "Bucket", "Tenant", "day_of", "take"]

DAY_S = 86_400


@dataclass(frozen=True, slots=True)
class Tenant:
    """A tenant as the submit use case sees it: its name, policy set and limits."""

    name: str
    #: Policy ids it may name, applied when a request names none (None: every active policy).
    policies: tuple[str, ...] | None = None
    rate_per_s: float = 1000.0
    burst: int = 5000
    daily_jobs: int | None = None
    #: Its share of the queue: the most bytes its unfinished jobs may hold (None: no own cap).
    max_queued_bytes: int | None = None
    #: Jobs per minute it may send with ``priority: "high"`` (0: none).
    high_per_minute: int = 60
    #: May it file trusted flaggers' notices (reviewed ahead of every tenant's items)?
    trusted_flagger_notices: bool = False

    def high_lane(self) -> Tenant | None:
        """The bucket of its priority jobs (``high_per_minute``, as a burst of as many), as a
        tenant of its own (``<name>:high``: no configured name has a colon); None if none."""
        if self.high_per_minute <= 0:
            return None
        return Tenant(
            name=f"{self.name}:high",
            rate_per_s=self.high_per_minute / 60.0,
            burst=self.high_per_minute,
            high_per_minute=0,
        )


@dataclass(frozen=True, slots=True)
class Admission:
    granted: bool
    retry_after_s: float = 0.0
    #: Why it was refused: the rate limit or the daily quota.
    reason: Literal["rate", "quota"] | None = None


@dataclass(frozen=True, slots=True)
class Bucket:
    """A tenant's stored state: tokens at ``updated_at``; jobs admitted on ``day``."""

    tokens: float
    updated_at: float
    day: int = 0
    used_today: int = 0


def day_of(now: float) -> int:
    """The UTC day number of a unix time."""
    return math.floor(now / DAY_S)


def take(bucket: Bucket | None, n: int, now: float, tenant: Tenant) -> tuple[Admission, Bucket]:
    """Admit ``n`` jobs or none. Returns the admission and the bucket to store."""
    if bucket is None:
        bucket = Bucket(tokens=float(tenant.burst), updated_at=now, day=day_of(now))
    elapsed = max(0.0, now - bucket.updated_at)
    tokens = min(float(tenant.burst), bucket.tokens + elapsed * tenant.rate_per_s)
    today = day_of(now)
    used = bucket.used_today if bucket.day == today else 0
    refreshed = Bucket(tokens=tokens, updated_at=now, day=today, used_today=used)
    if tenant.daily_jobs is not None and used + n > tenant.daily_jobs:
        wait = (today + 1) * DAY_S - now
        return Admission(False, max(1.0, wait), "quota"), refreshed
    if n > tokens:
        return Admission(False, (n - tokens) / tenant.rate_per_s, "rate"), refreshed
    return Admission(True), Bucket(
        tokens=tokens - n, updated_at=now, day=today, used_today=used + n
    )
