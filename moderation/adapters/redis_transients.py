"""What a job keeps in Redis while its durable record lives in PostgreSQL
(:class:`~moderation.ports.JobTransients`): inline image bytes, the pending index and the
queued-bytes accounting, in the key layout of :mod:`moderation.adapters.redis_jobs`
(``P inline:<key>``, ``P pending``, ``P queued``, ``P queued_bytes``, and per tenant
``P queued_bytes:<t>`` and ``P backlog:<t>``), so the delivery log, the lost-message sweep and
the per-tenant share and backlog metrics read the same keys as with the Redis job store.

No job record, no result and no outcome stream here: Redis memory is bounded by
``queue.max_queued_bytes`` (inline bytes and records of jobs that have not ended; an ended job's
bytes go at once, a REVIEW verdict's too: its reviewer sees the evidence in the object store),
plus dead letters' bytes kept for a requeue, not by traffic x retention.

Redis errors become :class:`~moderation.exceptions.QueueUnavailable` (transient).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import redis

from moderation.adapters.support.job_backlog import read_backlog
from moderation.adapters.support.job_keys import JobKeys
from moderation.adapters.support.redis import connect, redis_errors
from moderation.core.fairness import TenantBacklog
from moderation.core.jobs import Job, tenant_of
from moderation.exceptions import QueueFull, QueueUnavailable, TenantQueueFull
from moderation.settings import QueueSettings

__all__ = ["RedisJobTransients"]

T = TypeVar("T")

# The whole batch or nothing: {1} held; {-2, i} job i's tenant over its share (ARGV[4];
# negative: none); {-1} over the store's cap. Nothing is written unless held.
# KEYS: pending, queued, queued_bytes, then per job: inline key, tenant's queued_bytes:<t>,
# tenant's backlog:<t>.
# ARGV: cap, now, inline_ttl, tenant cap, then per job: id, size, has_inline ('1'/'0'), bytes,
# creation time.
_HOLD = """
local n = (#ARGV - 4) / 5
local add, by_tenant = 0, {}
for i = 0, n - 1 do
  local id, size = ARGV[5 + 5 * i], tonumber(ARGV[6 + 5 * i])
  if redis.call('HEXISTS', KEYS[2], id) == 0 then
    add = add + size
    local tk = KEYS[5 + 3 * i]
    by_tenant[tk] = (by_tenant[tk] or 0) + size
  end
end
local share = tonumber(ARGV[4])
if share >= 0 then
  for i = 0, n - 1 do
    local tk = KEYS[5 + 3 * i]
    if by_tenant[tk] and tonumber(redis.call('GET', tk) or '0') + by_tenant[tk] > share then
      return {-2, i}
    end
  end
end
if tonumber(redis.call('GET', KEYS[3]) or '0') + add > tonumber(ARGV[1]) then return {-1} end
for i = 0, n - 1 do
  local id, size = ARGV[5 + 5 * i], ARGV[6 + 5 * i]
  if redis.call('HSETNX', KEYS[2], id, size) == 1 then
    redis.call('INCRBY', KEYS[3], size)
    redis.call('INCRBY', KEYS[5 + 3 * i], size)
  end
  redis.call('ZADD', KEYS[1], ARGV[2], id)
  redis.call('ZADD', KEYS[6 + 3 * i], ARGV[9 + 5 * i], id)
  if ARGV[7 + 5 * i] == '1' then
    redis.call('SET', KEYS[4 + 3 * i], ARGV[8 + 5 * i], 'EX', ARGV[3])
  end
end
return {1}
"""

# KEYS: pending, queued, queued_bytes, then per job: inline key, tenant's queued_bytes:<t>,
# tenant's backlog:<t>. ARGV: per job: id, drop inline ('1'/'0').
_RELEASE = """
for i = 0, (#ARGV / 2) - 1 do
  local id = ARGV[1 + 2 * i]
  redis.call('ZREM', KEYS[1], id)
  local size = redis.call('HGET', KEYS[2], id)
  if size then
    redis.call('HDEL', KEYS[2], id)
    redis.call('DECRBY', KEYS[3], size)
    local tk = KEYS[5 + 3 * i]
    if redis.call('DECRBY', tk, size) < 0 then redis.call('SET', tk, 0) end
  end
  redis.call('ZREM', KEYS[6 + 3 * i], id)
  if ARGV[2 + 2 * i] == '1' then redis.call('DEL', KEYS[4 + 3 * i]) end
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

    def _job_keys(self, job_id: str, inline_key: str) -> list[str]:
        tenant = tenant_of(job_id)
        return [
            self.keys.key("inline", inline_key),
            self.keys.key("queued_bytes", tenant),
            self.keys.key("backlog", tenant),
        ]

    def hold_many(
        self, jobs: Sequence[tuple[Job, bytes | None]], *, tenant_cap: int | None = None
    ) -> None:
        """Hold new jobs' bytes, all or none (one script call).

        Raises:
            TenantQueueFull: a tenant's queued bytes would go over ``tenant_cap``.
            QueueFull: the store's would go over ``queue.max_queued_bytes``.
            QueueUnavailable: Redis is down.
        """
        if not jobs:
            return
        s = self.settings
        args: list[Any] = [
            s.max_queued_bytes,
            time.time(),
            s.inline_ttl_s,
            -1 if tenant_cap is None else tenant_cap,
        ]
        keys = self._shared()
        for job, inline in jobs:
            size = len(job.model_dump_json()) + (len(inline) if inline is not None else 0)
            args += [
                job.id,
                size,
                "1" if inline is not None else "0",
                inline or b"",
                job.created_at.timestamp(),
            ]
            keys += self._job_keys(job.id, _inline_key(job))
        won = self._call(lambda: self._hold(keys=keys, args=args))
        if int(won[0]) == -2:
            tenant = tenant_of(jobs[int(won[1])][0].id)
            raise TenantQueueFull(
                f"tenant {tenant} has {tenant_cap} bytes of jobs waiting for the workers, "
                "its share of the queue; retry when some of them have ended",
                retry_after_s=s.queue_full_retry_s,
            )
        if int(won[0]) == -1:
            raise QueueFull(
                f"too many bytes are waiting for the workers (cap {s.max_queued_bytes}); "
                "retry later",
                retry_after_s=s.queue_full_retry_s,
            )

    def release_many(self, ended: Sequence[tuple[str, bool]]) -> None:
        if not ended:
            return
        args: list[Any] = []
        keys = self._shared()
        for job_id, drop_inline in ended:
            args += [job_id, "1" if drop_inline else "0"]
            keys += self._job_keys(job_id, job_id)
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

    def queued_bytes(self, tenant: str | None = None) -> int:
        raw = self._call(lambda: self.redis.get(self.keys.key("queued_bytes", tenant or "")))
        return max(0, int(raw or 0))

    def backlog(self, tenants: Sequence[str]) -> dict[str, TenantBacklog]:
        """Per tenant: its jobs that have not ended, and when the oldest was created (one
        round trip).

        Raises:
            QueueUnavailable: Redis is down.
        """
        return self._call(lambda: read_backlog(self.redis, self.keys, tenants))

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
