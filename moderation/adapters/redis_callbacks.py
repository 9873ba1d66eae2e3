"""The callback outbox on Redis (:class:`~moderation.ports.CallbackOutbox`).

Layout, under ``queue.key_prefix`` + ``cb:``::

    cb:tenants          SET   tenants that have had callbacks waiting
    cb:due:<tenant>     ZSET  callback id -> due time (unix s); a claim moves it to now + lease
    cb:item:<id>        STRING the callback as JSON (expires after ``queue.result_ttl_s``)

One due set per tenant, so a tenant with a million callbacks waiting never hides another
tenant's one from the deliverers (:class:`~moderation.pipeline.callback_dispatch.
CallbackDispatcher` takes each tenant in turn). A claim is one script (atomic across worker
processes); a deliverer that dies leaves its claims to come due again when their lease ends.

Redis errors become :class:`~moderation.exceptions.QueueUnavailable` (transient).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import redis

from moderation.adapters.support.redis import connect, redis_errors
from moderation.core.callbacks import PendingCallback
from moderation.settings import QueueSettings

__all__ = ["RedisCallbackOutbox"]

# KEYS[1] the tenant's due set; ARGV: now, limit, lease until, item key prefix.
_CLAIM = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, id in ipairs(ids) do
  local raw = redis.call('GET', ARGV[4] .. id)
  if raw then
    redis.call('ZADD', KEYS[1], ARGV[3], id)
    table.insert(out, raw)
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
"""


class RedisCallbackOutbox:
    """The :class:`~moderation.ports.CallbackOutbox` on Redis. Thread-safe."""

    def __init__(self, client: redis.Redis, settings: QueueSettings) -> None:
        self.redis = client
        self.settings = settings
        self.prefix = settings.key_prefix + "cb:"
        self._claim: Any = client.register_script(_CLAIM)

    @classmethod
    def from_url(cls, url: str, settings: QueueSettings) -> RedisCallbackOutbox:
        """Connect lazily (the first command opens the connection)."""
        return cls(connect(url), settings)

    def _due(self, tenant: str) -> str:
        return f"{self.prefix}due:{tenant}"

    def _item(self, callback_id: str) -> str:
        return f"{self.prefix}item:{callback_id}"

    def _write(self, pipe: Any, callback: PendingCallback) -> None:
        raw = json.dumps(
            {
                "id": callback.id,
                "tenant": callback.tenant,
                "job_id": callback.job_id,
                "url": callback.url,
                "body": callback.body.decode(),
                "attempts": callback.attempts,
            }
        )
        pipe.set(self._item(callback.id), raw, ex=self.settings.result_ttl_s)

    def send(self, job_id: str, url: str, body: bytes, *, tenant: str = "default") -> None:
        callback = PendingCallback(
            id=uuid.uuid4().hex, tenant=tenant, job_id=job_id, url=url, body=body
        )
        with redis_errors("callback outbox"):
            pipe = self.redis.pipeline(transaction=True)
            self._write(pipe, callback)
            pipe.zadd(self._due(tenant), {callback.id: time.time()})
            pipe.sadd(self.prefix + "tenants", tenant)
            pipe.execute()

    def tenants(self) -> list[str]:
        with redis_errors("callback outbox"):
            raw = self.redis.smembers(self.prefix + "tenants")
        return sorted(t.decode() if isinstance(t, bytes) else str(t) for t in raw)

    def claim(self, tenant: str, limit: int, *, lease_s: float) -> list[PendingCallback]:
        if limit <= 0:
            return []
        now = time.time()
        with redis_errors("callback outbox"):
            raw = self._claim(
                keys=[self._due(tenant)],
                args=[repr(now), limit, repr(now + lease_s), self.prefix + "item:"],
            )
        claimed = []
        for item in raw:
            data = json.loads(item)
            claimed.append(
                PendingCallback(
                    id=data["id"],
                    tenant=data["tenant"],
                    job_id=data["job_id"],
                    url=data["url"],
                    body=data["body"].encode(),
                    attempts=int(data["attempts"]),
                )
            )
        return claimed

    def done(self, callback: PendingCallback) -> None:
        with redis_errors("callback outbox"):
            pipe = self.redis.pipeline(transaction=True)
            pipe.zrem(self._due(callback.tenant), callback.id)
            pipe.delete(self._item(callback.id))
            pipe.execute()

    def retry_at(self, callback: PendingCallback, at: float) -> None:
        again = PendingCallback(
            id=callback.id,
            tenant=callback.tenant,
            job_id=callback.job_id,
            url=callback.url,
            body=callback.body,
            attempts=callback.attempts + 1,
        )
        with redis_errors("callback outbox"):
            pipe = self.redis.pipeline(transaction=True)
            self._write(pipe, again)
            pipe.zadd(self._due(callback.tenant), {callback.id: at})
            pipe.execute()

    def waiting(self) -> int:
        with redis_errors("callback outbox"):
            pipe = self.redis.pipeline(transaction=False)
            for tenant in self.tenants():
                pipe.zcard(self._due(tenant))
            return sum(int(n) for n in pipe.execute())
