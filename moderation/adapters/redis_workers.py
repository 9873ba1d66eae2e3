"""The worker registry on Redis: heartbeats in one hash (``P workers``: name -> JSON) with their
expiry times in one sorted set (``P workers:expiry``, the server's clock), and short named locks
(``P lock:<name>``), in the key layout of :mod:`moderation.adapters.redis_jobs`.

Reading the live workers (every submission's policy check, ``/readyz``, every scrape) is one
script over those two keys: expired heartbeats are dropped and the rest returned. No SCAN: its
cost follows the number of workers, not the number of keys in Redis.

Redis errors become :class:`~moderation.exceptions.QueueUnavailable` (transient).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis

from moderation.adapters.support.job_keys import JobKeys
from moderation.adapters.support.redis import connect, redis_errors
from moderation.settings import QueueSettings

__all__ = ["RedisWorkerRegistry"]

T = TypeVar("T")

# KEYS: workers hash, expiry zset. ARGV: name, JSON, ttl seconds.
_BEAT = """
local now = redis.call('TIME')
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now[1] + now[2] / 1e6 + tonumber(ARGV[3]), ARGV[1])
return 1
"""

# KEYS: workers hash, expiry zset. Drops the expired heartbeats, returns the live ones.
_LIVE = """
local now = redis.call('TIME')
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now[1] + now[2] / 1e6)
for i = 1, #dead do
  redis.call('ZREM', KEYS[2], dead[i])
  redis.call('HDEL', KEYS[1], dead[i])
end
return redis.call('HVALS', KEYS[1])
"""


class RedisWorkerRegistry:
    """The :class:`~moderation.ports.WorkerRegistry` on Redis. Thread-safe."""

    def __init__(self, client: redis.Redis, settings: QueueSettings) -> None:
        self.redis = client
        self.keys = JobKeys(settings.key_prefix)
        self._beat = client.register_script(_BEAT)
        self._live = client.register_script(_LIVE)
        self._registry = [self.keys.key("workers"), self.keys.key("workers:expiry")]

    @classmethod
    def from_url(cls, url: str, settings: QueueSettings) -> RedisWorkerRegistry:
        """Connect lazily (the first command opens the connection)."""
        return cls(connect(url), settings)

    def _call(self, fn: Callable[[], T]) -> T:
        with redis_errors("job store"):
            return fn()

    def heartbeat(self, name: str, info: dict[str, Any], ttl_s: int = 30) -> None:
        payload = json.dumps({**info, "at": time.time()})
        self._call(lambda: self._beat(keys=self._registry, args=[name, payload, ttl_s]))

    def workers(self) -> list[dict[str, Any]]:
        """The live workers' heartbeats (one script call; expired ones are dropped)."""
        values: Any = self._call(lambda: self._live(keys=self._registry))
        return [json.loads(v) for v in values if v]

    def known_policies(self) -> dict[str, int]:
        """Policy id -> version, as loaded by the live workers."""
        known: dict[str, int] = {}
        for worker in self.workers():
            known.update({str(k): int(v) for k, v in worker.get("policies", {}).items()})
        return known

    def try_lock(self, name: str, ttl_s: float) -> bool:
        return bool(
            self._call(
                lambda: self.redis.set(
                    self.keys.key("lock", name), b"1", nx=True, px=max(1, int(ttl_s * 1000))
                )
            )
        )
