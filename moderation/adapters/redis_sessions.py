"""Reviewer sessions and sign-in throttling on Redis.

Keys (``P`` = ``settings.review.key_prefix``)::

    P session:<key>        hash: username, created_at, last_seen, nonce; expires when the session
                           would time out (idle or absolute), so Redis forgets dead sessions
    P sessions:<username>  set of the account's session keys (for "end every session")
    P login_fail:<key>     failed (and reserved) sign-ins of ``account:<name>``,
                           ``pair:<name>@<ip>`` and ``address:<ip>`` (expires ``login_window_s``
                           after the last one)
    P login_block:<key>    unix time until which that key may not sign in

``<key>`` of a session is the SHA-256 of the cookie token
(:func:`moderation.core.reviewers.session_key`): the store never holds a usable cookie.
Redis errors become :class:`~moderation.exceptions.QueueUnavailable` (transient).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any, cast

import redis

from moderation.adapters.support.redis import connect, translated
from moderation.core.reviewers import LoginPolicy, ReviewerSession

__all__ = ["RedisLoginThrottle", "RedisReviewerSessions"]

# The rule of moderation.core.reviewers.session_alive, atomic with the last_seen update.
_TOUCH = """
local h = redis.call('HMGET', KEYS[1], 'username', 'created_at', 'last_seen', 'nonce')
if not h[1] then return nil end
local now, idle, max = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local created, last = tonumber(h[2]), tonumber(h[3])
if now - last >= idle or now - created >= max then
  redis.call('DEL', KEYS[1])
  return nil
end
redis.call('HSET', KEYS[1], 'last_seen', ARGV[1])
redis.call('EXPIRE', KEYS[1], math.max(1, math.ceil(math.min(idle, max - (now - created)))))
return {h[1], h[2], ARGV[1], h[4]}
"""

# LoginThrottle.reserve: KEYS = fail_1, block_1, fail_2, block_2, ...; ARGV = now, n, then per
# key: window_s, the length of its schedule, the schedule (LoginPolicy.schedule(): the wait after
# 1, 2, ... failures, the last value for every larger count). Refuses while any key is blocked;
# else counts the attempt as a failure of every key and blocks each as its schedule says.
_RESERVE = """
local now, n = tonumber(ARGV[1]), tonumber(ARGV[2])
local wait = 0
for i = 1, n do
  local until_ = tonumber(redis.call('GET', KEYS[2 * i]) or '0')
  if until_ - now > wait then wait = until_ - now end
end
-- Blocks are kept to the microsecond ('%.6f'): a wait under a millisecond is that rounding.
if wait >= 0.001 then return {string.format('%.6f', wait)} end
local out = {'0'}
local pos = 3
for i = 1, n do
  local window, len = tonumber(ARGV[pos]), tonumber(ARGV[pos + 1])
  local count = redis.call('INCR', KEYS[2 * i - 1])
  redis.call('EXPIRE', KEYS[2 * i - 1], math.max(1, math.ceil(window)))
  local pause = tonumber(ARGV[pos + 1 + math.min(count, len)])
  if pause > 0 then
    local current = tonumber(redis.call('GET', KEYS[2 * i]) or '0')
    if now + pause > current then
      redis.call('SET', KEYS[2 * i], string.format('%.6f', now + pause), 'EX', math.ceil(pause) + 1)
    end
  end
  out[i + 1] = count
  pos = pos + 2 + len
end
return out
"""

# LoginThrottle.refund: one failure fewer (never below zero).
_REFUND = """
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
if count > 0 then redis.call('DECR', KEYS[1]) end
return 1
"""

# Never shorten a block.
_BLOCK = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > current then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
end
return 1
"""


class RedisReviewerSessions:
    """The :class:`~moderation.ports.ReviewerSessions` on Redis. Thread-safe."""

    def __init__(
        self, client: redis.Redis, *, idle_s: float, max_s: float, prefix: str = "mod:review:"
    ) -> None:
        self._r = client
        self._p = prefix
        self.idle_s = idle_s
        self.max_s = max_s
        self._touch = client.register_script(_TOUCH)

    @classmethod
    def from_url(
        cls, url: str, *, idle_s: float, max_s: float, prefix: str
    ) -> RedisReviewerSessions:
        client = connect(url, decode=True, socket_timeout=5.0)
        return cls(client, idle_s=idle_s, max_s=max_s, prefix=prefix)

    def _key(self, key: str) -> str:
        return f"{self._p}session:{key}"

    def _set(self, username: str) -> str:
        return f"{self._p}sessions:{username}"

    @translated("reviewer sessions")
    def create(self, key: str, session: ReviewerSession) -> None:
        ttl = max(1, math.ceil(min(self.idle_s, self.max_s)))
        pipe = self._r.pipeline()
        pipe.hset(
            self._key(key),
            mapping={
                "username": session.username,
                "created_at": repr(session.created_at),
                "last_seen": repr(session.last_seen),
                "nonce": session.nonce,
            },
        )
        pipe.expire(self._key(key), ttl)
        pipe.sadd(self._set(session.username), key)
        pipe.expire(self._set(session.username), max(1, math.ceil(self.max_s)))
        pipe.execute()

    @translated("reviewer sessions")
    def touch(self, key: str, now: float) -> ReviewerSession | None:
        reply: Any = self._touch(
            keys=[self._key(key)], args=[repr(now), repr(self.idle_s), repr(self.max_s)]
        )
        if not reply:
            return None
        username, created, last, nonce = reply
        return ReviewerSession(
            username=str(username),
            created_at=float(created),
            last_seen=float(last),
            nonce=str(nonce),
        )

    @translated("reviewer sessions")
    def end(self, key: str) -> bool:
        username = self._r.hget(self._key(key), "username")
        removed = int(self._r.delete(self._key(key)))
        if username:
            self._r.srem(self._set(str(username)), key)
        return removed > 0

    @translated("reviewer sessions")
    def end_all(self, username: str) -> int:
        keys = cast(set[str], self._r.smembers(self._set(username)))
        removed = int(self._r.delete(*(self._key(k) for k in keys))) if keys else 0
        self._r.delete(self._set(username))
        return removed

    @translated("reviewer sessions")
    def count(self, username: str) -> int:
        keys = sorted(cast(set[str], self._r.smembers(self._set(username))))
        if not keys:
            return 0
        pipe = self._r.pipeline()
        for k in keys:
            pipe.exists(self._key(k))
        alive = pipe.execute()
        dead = [k for k, ok in zip(keys, alive, strict=True) if not ok]
        if dead:
            self._r.srem(self._set(username), *dead)
        return len(keys) - len(dead)


class RedisLoginThrottle:
    """The :class:`~moderation.ports.LoginThrottle` on Redis. Thread-safe."""

    def __init__(self, client: redis.Redis, *, prefix: str = "mod:review:") -> None:
        self._r = client
        self._p = prefix
        self._block = client.register_script(_BLOCK)
        self._reserve = client.register_script(_RESERVE)
        self._refund = client.register_script(_REFUND)

    @classmethod
    def from_url(cls, url: str, *, prefix: str) -> RedisLoginThrottle:
        return cls(connect(url, decode=True, socket_timeout=5.0), prefix=prefix)

    @translated("sign-in throttle")
    def blocked_for(self, keys: Sequence[str], now: float) -> float:
        if not keys:
            return 0.0
        values = cast(list[str | None], self._r.mget([f"{self._p}login_block:{k}" for k in keys]))
        return max([0.0, *(float(v) - now for v in values if v)])

    @translated("sign-in throttle")
    def fail(self, key: str, now: float, *, window_s: float) -> int:
        name = f"{self._p}login_fail:{key}"
        pipe = self._r.pipeline()
        pipe.incr(name)
        pipe.expire(name, max(1, math.ceil(window_s)))
        return int(pipe.execute()[0])

    @translated("sign-in throttle")
    def block(self, key: str, until: float) -> None:
        ttl = max(1, math.ceil(until - time.time()) + 1)
        self._block(keys=[f"{self._p}login_block:{key}"], args=[repr(until), ttl])

    @translated("sign-in throttle")
    def clear(self, key: str) -> None:
        self._r.delete(f"{self._p}login_fail:{key}", f"{self._p}login_block:{key}")

    @translated("sign-in throttle")
    def reserve(
        self, keys: Sequence[tuple[str, LoginPolicy]], now: float
    ) -> tuple[float, tuple[int, ...]]:
        names: list[str] = []
        args: list[str | int] = [repr(now), len(keys)]
        for key, policy in keys:
            names += [f"{self._p}login_fail:{key}", f"{self._p}login_block:{key}"]
            waits = policy.schedule()
            args += [repr(policy.window_s), len(waits), *(repr(w) for w in waits)]
        reply: Any = self._reserve(keys=names, args=args)
        wait = float(reply[0])
        if wait > 0:
            return wait, ()
        return 0.0, tuple(int(c) for c in reply[1:])

    @translated("sign-in throttle")
    def refund(self, key: str) -> None:
        self._refund(keys=[f"{self._p}login_fail:{key}"])
