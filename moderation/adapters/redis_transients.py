"""What a job keeps in Redis while its durable record lives in PostgreSQL
(:class:`~moderation.ports.JobTransients`): inline image bytes, the pending index and the
queued-bytes accounting, in the key layout of :mod:`moderation.adapters.redis_jobs`
(``P inline:<key>``, ``P pending``, ``P queued``, ``P queued_bytes``), so the Redis delivery
log and the lost-message sweep read the same pending index.

No job record, no result and no outcome stream here: Redis memory is bounded by
``queue.max_queued_bytes`` (inline bytes and records of jobs that have not ended) plus the
review images kept for reviewers, not by traffic x retention.

Redis errors become :class:`~moderation.exceptions.QueueUnavailable` (transient).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import redis

from moderation.adapters.support.job_keys import JobKeys
from moderation.adapters.support.redis import connect, redis_errors
from moderation.core.jobs import Job
from moderation.exceptions import QueueFull, QueueUnavailable
from moderation.settings import QueueSettings

__all__ = ["RedisJobTransients"]

T = TypeVar("T")

# The whole batch or nothing: 1 held; -1 over the cap (nothing written).
# KEYS: pending, queued, queued_bytes, then one inline key per job.
# ARGV: cap, now, inline_ttl, then per job: id, size, has_inline ('1'/'0'), bytes.
_HOLD = """
local n = (#ARGV - 3) / 4
local total = tonumber(redis.call('GET', KEYS[3]) or '0')
local add = 0
for i = 0, n - 1 do
  if redis.call('HEXISTS', KEYS[2], ARGV[4 + 4 * i]) == 0 then
    add = add + tonumber(ARGV[5 + 4 * i])
  end
end
if total + add > tonumber(ARGV[1]) then return -1 end
for i = 0, n - 1 do
  local id = ARGV[4 + 4 * i]
  if redis.call('HSETNX', KEYS[2], id, ARGV[5 + 4 * i]) == 1 then
    redis.call('INCRBY', KEYS[3], ARGV[5 + 4 * i])
  end
  redis.call('ZADD', KEYS[1], ARGV[2], id)
  if ARGV[6 + 4 * i] == '1' then
    redis.call('SET', KEYS[4 + i], ARGV[7 + 4 * i], 'EX', ARGV[3])
  end
end
return 1
"""

# KEYS: pending, queued, queued_bytes, then one inline key per job.
# ARGV: per job: id, drop inline ('1'/'0').
_RELEASE = """
for i = 0, (#ARGV / 2) - 1 do
  local id = ARGV[1 + 2 * i]
  redis.call('ZREM', KEYS[1], id)
  local size = redis.call('HGET', KEYS[2], id)
  if size then
    redis.call('HDEL', KEYS[2], id)
    redis.call('DECRBY', KEYS[3], size)
  end
  if ARGV[2 + 2 * i] == '1' then redis.call('DEL', KEYS[4 + i]) end
end
return 1
"""


class RedisJobTransients:
    """:class:`~moderation.ports.JobTransients` on Redis. Thread-safe."""

    def __init__(self, client: redis.Redis, settings: QueueSettings) -> None:
        self.redis = client
        self.settings = settings
        self.keys = JobKeys(settings.key_prefix)
        self._hold = client.register_script(_HOLD)
        self._release = client.register_script(_RELEASE)

    @classmethod
    def from_url(cls, url: str, settings: QueueSettings) -> RedisJobTransients:
        return cls(connect(url), settings)

    def _call(self, fn: Callable[[], T]) -> T:
        with redis_errors("job store (Redis)"):
            return fn()

    def _shared(self) -> list[str]:
        return [self.keys.key(k) for k in ("pending", "queued", "queued_bytes")]

    def hold_many(self, jobs: Sequence[tuple[Job, bytes | None]]) -> None:
        if not jobs:
            return
        args: list[Any] = [self.settings.max_queued_bytes, time.time(), self.settings.inline_ttl_s]
        inline_keys = []
        for job, inline in jobs:
            size = len(job.model_dump_json()) + (len(inline) if inline is not None else 0)
            args += [job.id, size, "1" if inline is not None else "0", inline or b""]
            inline_keys.append(self.keys.key("inline", _inline_key(job)))
        won = self._call(lambda: self._hold(keys=[*self._shared(), *inline_keys], args=args))
        if int(won) == -1:
            raise QueueFull(
                "too many bytes are waiting for the workers "
                f"(cap {self.settings.max_queued_bytes}); retry later",
                retry_after_s=self.settings.queue_full_retry_s,
            )

    def release_many(self, ended: Sequence[tuple[str, bool]]) -> None:
        if not ended:
            return
        args: list[Any] = []
        for job_id, drop_inline in ended:
            args += [job_id, "1" if drop_inline else "0"]
        keys = [*self._shared(), *(self.keys.key("inline", job_id) for job_id, _ in ended)]
        self._call(lambda: self._release(keys=keys, args=args))

    def drop(self, job_id: str, inline_key: str | None = None) -> None:
        self.release_many([(job_id, True)])
        if inline_key and inline_key != job_id:
            self._call(lambda: self.redis.delete(self.keys.key("inline", inline_key)))
        self._call(
            lambda: self.redis.delete(
                self.keys.key("deliveries", job_id), self.keys.key("effects", job_id)
            )
        )

    def queued_bytes(self) -> int:
        return int(self._call(lambda: self.redis.get(self.keys.key("queued_bytes"))) or 0)

    def inline_bytes_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        raw = self._call(lambda: self.redis.mget([self.keys.key("inline", k) for k in keys]))
        return [v if isinstance(v, bytes) else None for v in raw]

    def keep_inline(self, key: str, ttl_s: int) -> None:
        self._call(lambda: self.redis.expire(self.keys.key("inline", key), ttl_s))

    def ping(self) -> bool:
        try:
            return bool(self._call(self.redis.ping))
        except QueueUnavailable:
            return False


def _inline_key(job: Job) -> str:
    return job.image.inline_key if job.image.inline else job.id
