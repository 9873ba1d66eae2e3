"""Per-tenant admission on Redis: the token bucket and daily quota of
:mod:`moderation.core.admission`, as one Lua script (atomic across every API process, on the
Redis server's clock).

Keys (``P`` = ``settings.queue.key_prefix``)::

    P admission:<tenant>   hash: tokens, at (unix time), day (UTC day number), used (jobs that day)

Redis errors become :class:`~moderation.exceptions.QueueUnavailable` (transient).
"""

from __future__ import annotations

from typing import Any

import redis

from moderation.adapters.support.redis import connect, redis_errors
from moderation.core.admission import DAY_S, Admission, Tenant

__all__ = ["RedisRateLimiter"]

# The arithmetic of moderation.core.admission.take, on the server's clock.
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local daily = tonumber(ARGV[3])
local n = tonumber(ARGV[4])
local day_s = tonumber(ARGV[5])
local h = redis.call('HMGET', KEYS[1], 'tokens', 'at', 'day', 'used')
local tokens = tonumber(h[1]) or burst
local at = tonumber(h[2]) or now
local day = tonumber(h[3]) or -1
local used = tonumber(h[4]) or 0
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local today = math.floor(now / day_s)
if day ~= today then used = 0 end
local granted, retry, reason = 0, 0, ''
if daily >= 0 and used + n > daily then
  retry = math.max(1, (today + 1) * day_s - now)
  reason = 'quota'
elseif n > tokens then
  retry = (n - tokens) / rate
  reason = 'rate'
else
  tokens = tokens - n
  used = used + n
  granted = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now),
           'day', tostring(today), 'used', tostring(used))
redis.call('EXPIRE', KEYS[1], 2 * day_s)
return {granted, tostring(retry), reason}
"""


class RedisRateLimiter:
    """The :class:`~moderation.ports.RateLimiter` on Redis. Thread-safe."""

    def __init__(self, client: redis.Redis, *, prefix: str = "mod:") -> None:
        self.redis = client
        self.prefix = prefix
        self._admit = client.register_script(_ADMIT)

    @classmethod
    def from_url(cls, url: str, *, prefix: str) -> RedisRateLimiter:
        return cls(connect(url, socket_timeout=5.0), prefix=prefix)

    def admit(self, tenant: Tenant, n: int) -> Admission:
        """Admit ``n`` new jobs of ``tenant``, or none.

        Raises:
            QueueUnavailable: Redis is down.
        """
        with redis_errors("rate limiter"):
            reply: Any = self._admit(
                keys=[f"{self.prefix}admission:{tenant.name}"],
                args=[
                    repr(float(tenant.rate_per_s)),
                    tenant.burst,
                    -1 if tenant.daily_jobs is None else tenant.daily_jobs,
                    n,
                    DAY_S,
                ],
            )
        granted, retry, reason = reply
        if int(granted):
            return Admission(True)
        why = reason.decode() if isinstance(reason, bytes) else str(reason)
        return Admission(False, float(retry), "quota" if why == "quota" else "rate")
