"""The delivery log on Redis: delivery counters, side-effect marks, the pending index and the
dead-letter list, in the key layout of :mod:`moderation.adapters.redis_jobs`.

Redis errors become :class:`~moderation.exceptions.QueueUnavailable` (transient).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import redis

from moderation.adapters.support.job_keys import JobKeys
from moderation.adapters.support.redis import connect, redis_errors
from moderation.core.jobs import Job, JobResult
from moderation.ports import DeadLetter, PendingIndex, SingleDeliveryOps
from moderation.settings import QueueSettings

__all__ = ["RedisDeliveryLog"]

T = TypeVar("T")

#: DECR that stops at zero and leaves a missing (expired) counter missing.
_DECR_TO_ZERO = """
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n > 0 then redis.call('DECR', KEYS[1]) end
return n
"""


class RedisDeliveryLog(SingleDeliveryOps):
    """The :class:`~moderation.ports.DeliveryLog` on Redis. Thread-safe."""

    def __init__(
        self,
        client: redis.Redis,
        settings: QueueSettings,
        *,
        reopen: Callable[[str], Job | None] | None = None,
        pending: PendingIndex | None = None,
    ) -> None:
        self.redis = client
        self.settings = settings
        self.keys = JobKeys(settings.key_prefix)
        #: Where the pending index lives when not in Redis (PostgreSQL: the job records).
        self.pending = pending
        #: Where job records live elsewhere (PostgreSQL): makes an ended job runnable again
        #: there (result back to queued, back in the pending index) and returns it.
        self.reopen = reopen

    @classmethod
    def from_url(
        cls,
        url: str,
        settings: QueueSettings,
        *,
        reopen: Callable[[str], Job | None] | None = None,
        pending: PendingIndex | None = None,
    ) -> RedisDeliveryLog:
        """Connect lazily (the first command opens the connection)."""
        return cls(connect(url), settings, reopen=reopen, pending=pending)

    def key(self, kind: str, job_id: str = "") -> str:
        return self.keys.key(kind, job_id)

    def _call(self, fn: Callable[[], T]) -> T:
        with redis_errors("job store"):
            return fn()

    # --- deliveries and side effects ---------------------------------------------------------

    def count_deliveries(self, job_ids: Sequence[str]) -> list[int]:
        """Count one more start of each job; returns the counts (one round trip)."""

        def run() -> list[int]:
            pipe = self.redis.pipeline(transaction=False)
            for job_id in job_ids:
                key = self.key("deliveries", job_id)
                pipe.incr(key)
                pipe.expire(key, self.settings.result_ttl_s)
            return [int(n) for n in pipe.execute()[::2]]

        return self._call(run) if job_ids else []

    def uncount_deliveries(self, job_ids: Sequence[str]) -> None:
        """Take back one counted start of each job (one round trip; never below zero)."""

        def run() -> None:
            pipe = self.redis.pipeline(transaction=False)
            for job_id in job_ids:
                pipe.eval(_DECR_TO_ZERO, 1, self.key("deliveries", job_id))
            pipe.execute()

        if job_ids:
            self._call(run)

    def effects_done_many(self, job_ids: Sequence[str]) -> list[bool]:
        if not job_ids:
            return []
        raw = self._call(lambda: self.redis.mget([self.key("effects", i) for i in job_ids]))
        return [value is not None for value in raw]

    def mark_effects_done_many(self, job_ids: Sequence[str]) -> None:
        def run() -> None:
            pipe = self.redis.pipeline(transaction=False)
            for job_id in job_ids:
                pipe.set(self.key("effects", job_id), b"1", ex=self.settings.result_ttl_s)
            pipe.execute()

        if job_ids:
            self._call(run)

    def reset(self, job_id: str) -> None:
        """Delete the job's start counter and side-effect mark (it runs again from the start)."""
        self._call(
            lambda: self.redis.delete(self.key("deliveries", job_id), self.key("effects", job_id))
        )

    def forget_ended(self, job_ids: Sequence[str]) -> None:
        """Delete the jobs' start counters; their effect marks expire after
        ``ended_grace_s`` (one round trip)."""

        def run() -> None:
            pipe = self.redis.pipeline(transaction=False)
            pipe.delete(*(self.key("deliveries", i) for i in job_ids))
            for job_id in job_ids:
                pipe.expire(self.key("effects", job_id), self.settings.ended_grace_s)
            pipe.execute()

        if job_ids:
            self._call(run)

    # --- dead letters ------------------------------------------------------------------------

    def dead_letter(self, job_id: str, *, reason: str, deliveries: int) -> None:
        entry = DeadLetter(
            job_id=job_id, reason=reason, deliveries=deliveries, at=datetime.now(UTC)
        )
        self._call(lambda: self.redis.hset(self.key("dlq"), job_id, entry.model_dump_json()))

    def dead_letters(self) -> list[DeadLetter]:
        raw = self._call(lambda: self.redis.hgetall(self.key("dlq")))
        entries = [DeadLetter.model_validate_json(v) for v in raw.values()]
        return sorted(entries, key=lambda e: e.at)

    def take_dead_letter(self, job_id: str) -> Job | None:
        """Remove a job from the dead-letter list and make it runnable again (result back to
        queued, delivery count reset). Returns the job, or None when it is not dead-lettered or
        its record expired.

        Raises:
            QueueUnavailable: Redis is down.
        """
        if not self._call(lambda: self.redis.hdel(self.key("dlq"), job_id)):
            return None
        if self.reopen is not None:
            reopened = self.reopen(job_id)
            if reopened is not None:
                self._call(
                    lambda: self.redis.delete(
                        self.key("deliveries", job_id), self.key("effects", job_id)
                    )
                )
            return reopened
        raw = self._call(lambda: self.redis.get(self.key("job", job_id)))
        if not raw:
            return None
        job = Job.model_validate_json(raw)

        def reset() -> None:
            pipe = self.redis.pipeline()
            pipe.set(
                self.key("result", job_id),
                JobResult.queued(job).model_dump_json(),
                ex=self.settings.result_ttl_s,
            )
            pipe.delete(self.key("deliveries", job_id), self.key("effects", job_id))
            pipe.zadd(self.key("pending"), {job_id: time.time()})
            pipe.execute()

        self._call(reset)
        return job

    def purge_dead_letters(self) -> int:
        def run() -> int:
            pipe = self.redis.pipeline()
            pipe.hlen(self.key("dlq"))
            pipe.delete(self.key("dlq"))
            return int(pipe.execute()[0])

        return self._call(run)

    def dead_letter_count(self) -> int:
        """Raises:
        QueueUnavailable: Redis is down.
        """
        return int(self._call(lambda: self.redis.hlen(self.key("dlq"))))

    # --- the pending index -------------------------------------------------------------------

    def stale_pending(self, older_than_s: float, limit: int = 1000) -> list[str]:
        """Jobs published more than ``older_than_s`` ago that have not ended.

        Raises:
            QueueUnavailable: Redis is down.
        """
        if self.pending is not None:
            return self.pending.stale_pending(older_than_s, limit)
        raw: Any = self._call(
            lambda: self.redis.zrangebyscore(
                self.key("pending"), 0, time.time() - older_than_s, start=0, num=limit
            )
        )
        return [j.decode() if isinstance(j, bytes) else str(j) for j in raw]

    def oldest_pending_age(self) -> float | None:
        """Seconds since the oldest job that has not ended was (last) published.

        Raises:
            QueueUnavailable: Redis is down.
        """
        if self.pending is not None:
            return self.pending.oldest_pending_age()
        raw: Any = self._call(lambda: self.redis.zrange(self.key("pending"), 0, 0, withscores=True))
        return max(0.0, time.time() - float(raw[0][1])) if raw else None

    def mark_republished(self, job_id: str) -> None:
        """Restart the lost-message clock of a job that was published again."""
        if self.pending is not None:
            self.pending.mark_republished(job_id)
            return
        self._call(lambda: self.redis.zadd(self.key("pending"), {job_id: time.time()}, xx=True))

    def forget_pending(self, job_id: str) -> None:
        if self.pending is not None:
            self.pending.forget_pending(job_id)
        self._call(lambda: self.redis.zrem(self.key("pending"), job_id))
