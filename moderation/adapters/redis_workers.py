"""The worker registry on Redis: heartbeats (``P worker:<name>``, JSON with a short TTL) and
short named locks (``P lock:<name>``), in the key layout of :mod:`moderation.adapters.redis_jobs`.

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


class RedisWorkerRegistry:
    """The :class:`~moderation.ports.WorkerRegistry` on Redis. Thread-safe."""

    def __init__(self, client: redis.Redis, settings: QueueSettings) -> None:
        self.redis = client
        self.keys = JobKeys(settings.key_prefix)

    @classmethod
    def from_url(cls, url: str, settings: QueueSettings) -> RedisWorkerRegistry:
        """Connect lazily (the first command opens the connection)."""
        return cls(connect(url), settings)

    def _call(self, fn: Callable[[], T]) -> T:
        with redis_errors("job store"):
            return fn()

    def heartbeat(self, name: str, info: dict[str, Any], ttl_s: int = 30) -> None:
        payload = json.dumps({**info, "at": time.time()})
        self._call(lambda: self.redis.set(self.keys.key("worker", name), payload, ex=ttl_s))

    def workers(self) -> list[dict[str, Any]]:
        def run() -> list[dict[str, Any]]:
            keys = list(self.redis.scan_iter(match=self.keys.key("worker", "*"), count=100))
            values = self.redis.mget(keys) if keys else []
            return [json.loads(v) for v in values if v]

        return self._call(run)

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
