"""Redis job store: job records, inline image bytes, results with a TTL and the outcome stream.
The delivery log (:mod:`moderation.adapters.redis_deliveries`) and the worker registry
(:mod:`moderation.adapters.redis_workers`) share this key layout
(:class:`~moderation.adapters.support.job_keys.JobKeys`).

Keys (``P`` = ``settings.queue.key_prefix``)::

    P job:<id>          the Job (JSON), created with SET NX: the idempotency key
    P inline:<id>       inline image bytes (TTL ``inline_ttl_s``)
    P result:<id>       the JobResult (JSON); a final result is never overwritten by another
    P deliveries:<id>   task starts of this job (poison-message detection)
    P effects:<id>      set once callback/review/audit side effects were dispatched
    P outcomes          stream: one entry per job that ended (job_id, status) - exactly once
    P dlq               hash job id -> dead-letter entry (JSON)
    P worker:<name>     heartbeat of a live worker (JSON, short TTL): model, policies, notes
    P pending           sorted set job id -> time it was (re)published; removed when it ends
    P lock:<name>       short-lived named locks (one worker at a time runs the lost-message sweep)
    P queued            hash job id -> bytes it holds (inline image + record) until it ends
    P queued_bytes      the sum of ``queued``: compared with ``queue.max_queued_bytes`` on create
    P queued_bytes:<t>  the same sum for tenant ``t`` only: compared with the tenant's share
    P backlog:<t>       sorted set job id -> creation time of tenant ``t``'s jobs that have not
                        ended (backlog depth and oldest job's age, per tenant, for the metrics)

Job ids here are scoped ids (``<tenant>/<id>``, :mod:`moderation.core.jobs`). Inline bytes are
dropped when a job ends, except for a REVIEW verdict (the reviewer needs them) and a dead letter
(``dlq requeue`` runs it again).

Why ``pending``: kombu's Redis transport pops a message (BRPOP) *before* it records it as
unacked, so a worker killed in that window loses the message for good (celery/celery#4354,
celery/kombu#305). The job record is the source of truth instead: a job still pending long after
it was published whose message is neither queued nor unacked was lost, and the lost-message sweep
(:mod:`moderation.pipeline.maintenance`) publishes it again. Tasks are idempotent, so a spurious
republish costs one no-op delivery.

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
from moderation.core.jobs import Job, JobResult, keeps_inline, tenant_of
from moderation.core.review import HumanDecision
from moderation.exceptions import QueueFull, QueueUnavailable, TenantQueueFull
from moderation.ports import SingleJobOps
from moderation.settings import QueueSettings

__all__ = ["RedisJobStore"]

T = TypeVar("T")

# 1: created; 0: the id exists; -1: over the cap on queued bytes; -2: over the tenant's share
# of them (ARGV[11]; negative: none) - nothing written.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local size = tonumber(ARGV[9])
local cap = tonumber(ARGV[11])
if cap >= 0 and tonumber(redis.call('GET', KEYS[7]) or '0') + size > cap then return -2 end
local total = tonumber(redis.call('GET', KEYS[6]) or '0')
if total + size > tonumber(ARGV[10]) then return -1 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
if ARGV[4] == '1' then redis.call('SET', KEYS[3], ARGV[5], 'EX', ARGV[6]) end
redis.call('ZADD', KEYS[4], ARGV[7], ARGV[8])
redis.call('HSET', KEYS[5], ARGV[8], size)
redis.call('INCRBY', KEYS[6], size)
redis.call('INCRBY', KEYS[7], size)
redis.call('ZADD', KEYS[8], ARGV[7], ARGV[8])
return 1
"""

# Write a final result unless one is already there; log the outcome once; the job's bytes no
# longer count as queued; drop the inline bytes unless they are still needed (ARGV[6] == '1').
_FINISH = """
local old = redis.call('GET', KEYS[1])
if old then
  local status = cjson.decode(old)['status']
  if status == 'done' or status == 'error' then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'job_id', ARGV[3], 'status', ARGV[4])
redis.call('ZREM', KEYS[3], ARGV[3])
local size = redis.call('HGET', KEYS[4], ARGV[3])
if size then
  redis.call('HDEL', KEYS[4], ARGV[3])
  redis.call('DECRBY', KEYS[5], size)
  if redis.call('DECRBY', KEYS[7], size) < 0 then redis.call('SET', KEYS[7], 0) end
end
redis.call('ZREM', KEYS[8], ARGV[3])
if ARGV[6] == '1' then redis.call('DEL', KEYS[6]) end
return 1
"""

# Forget a job's queued bytes (rollback of a create).
_UNQUEUE = """
local size = redis.call('HGET', KEYS[1], ARGV[1])
if size then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('DECRBY', KEYS[2], size)
  if redis.call('DECRBY', KEYS[3], size) < 0 then redis.call('SET', KEYS[3], 0) end
end
redis.call('ZREM', KEYS[4], ARGV[1])
return 1
"""


class RedisJobStore(SingleJobOps):
    """The :class:`~moderation.ports.JobStore` on Redis. Thread-safe (redis-py pools
    connections)."""

    def __init__(self, client: redis.Redis, settings: QueueSettings) -> None:
        self.redis = client
        self.settings = settings
        self.prefix = settings.key_prefix
        self.keys = JobKeys(settings.key_prefix)
        self._create = client.register_script(_CREATE)
        self._finish = client.register_script(_FINISH)
        self._unqueue = client.register_script(_UNQUEUE)

    @classmethod
    def from_url(cls, url: str, settings: QueueSettings) -> RedisJobStore:
        """Connect lazily (the first command opens the connection)."""
        return cls(connect(url), settings)

    def key(self, kind: str, job_id: str = "") -> str:
        return self.keys.key(kind, job_id)

    def _call(self, fn: Callable[[], T]) -> T:
        with redis_errors("job store"):
            return fn()

    # --- jobs --------------------------------------------------------------------------------

    def create_many(
        self, jobs: Sequence[tuple[Job, bytes | None]], *, tenant_cap: int | None = None
    ) -> list[tuple[Job, bool]]:
        """Store new jobs (and their inline bytes) unless their ids exist, in one round trip.

        Returns:
            Per job, the stored job (the existing one for a duplicate id) and whether it was
            created.

        Raises:
            TenantQueueFull: the jobs' bytes would take their tenant's queued bytes over
                ``tenant_cap`` (nothing was stored).
            QueueFull: the job's bytes would take the queued bytes over
                ``queue.max_queued_bytes`` (nothing was stored).
            QueueUnavailable: Redis is down.
        """
        now = time.time()

        def run() -> list[Any]:
            pipe = self.redis.pipeline(transaction=False)
            for job, inline in jobs:
                record = job.model_dump_json()
                size = len(record) + (len(inline) if inline is not None else 0)
                self._create(
                    keys=[
                        self.key("job", job.id),
                        self.key("result", job.id),
                        self.key("inline", job.image.inline_key if job.image.inline else job.id),
                        self.key("pending"),
                        self.key("queued"),
                        self.key("queued_bytes"),
                        self.key("queued_bytes", tenant_of(job.id)),
                        self.key("backlog", tenant_of(job.id)),
                    ],
                    args=[
                        record,
                        JobResult.queued(job).model_dump_json(),
                        self.settings.result_ttl_s,
                        "1" if inline is not None else "0",
                        inline or b"",
                        self.settings.inline_ttl_s,
                        now,
                        job.id,
                        size,
                        self.settings.max_queued_bytes,
                        -1 if tenant_cap is None else tenant_cap,
                    ],
                    client=pipe,
                )
            return [int(x) for x in pipe.execute()]

        created = self._call(run)
        if -1 in created or -2 in created:
            # Over a cap on queued bytes: the whole batch is refused, nothing stays.
            for (job, _), won in zip(jobs, created, strict=True):
                if won == 1:
                    self.delete(job.id)
        if -2 in created:
            refused = [job for (job, _), won in zip(jobs, created, strict=True) if won == -2]
            tenant = tenant_of(refused[0].id)
            raise TenantQueueFull(
                f"tenant {tenant} has {tenant_cap} bytes of jobs waiting for the workers, "
                "its share of the queue; retry when some of them have ended",
                retry_after_s=self.settings.queue_full_retry_s,
            )
        if -1 in created:
            raise QueueFull(
                "too many bytes are waiting for the workers "
                f"(cap {self.settings.max_queued_bytes}); retry later",
                retry_after_s=self.settings.queue_full_retry_s,
            )
        duplicates = [job.id for (job, _), won in zip(jobs, created, strict=True) if not won]
        existing = dict(zip(duplicates, self.get_jobs(duplicates), strict=True))
        return [
            (job, True) if won else (existing.get(job.id) or job, False)
            for (job, _), won in zip(jobs, created, strict=True)
        ]

    def delete(self, job_id: str) -> None:
        """Remove every trace of a job (rollback when it could not be enqueued)."""
        kinds = ("job", "inline", "result", "deliveries", "effects")

        def run() -> None:
            self.redis.delete(*(self.key(k, job_id) for k in kinds))
            self.redis.zrem(self.key("pending"), job_id)
            tenant = tenant_of(job_id)
            self._unqueue(
                keys=[
                    self.key("queued"),
                    self.key("queued_bytes"),
                    self.key("queued_bytes", tenant),
                    self.key("backlog", tenant),
                ],
                args=[job_id],
            )

        self._call(run)

    def _mget(self, kind: str, ids: Sequence[str]) -> list[Any]:
        if not ids:
            return []
        return list(self._call(lambda: self.redis.mget([self.key(kind, i) for i in ids])))

    def get_jobs(self, job_ids: Sequence[str]) -> list[Job | None]:
        return [Job.model_validate_json(raw) if raw else None for raw in self._mget("job", job_ids)]

    def queued_bytes(self, tenant: str | None = None) -> int:
        raw = self._call(lambda: self.redis.get(self.key("queued_bytes", tenant or "")))
        return max(0, int(raw or 0))

    def backlog(self, tenants: Sequence[str]) -> dict[str, TenantBacklog]:
        """Per tenant: its jobs that have not ended, and when the oldest was created (one
        round trip).

        Raises:
            QueueUnavailable: Redis is down.
        """
        return self._call(lambda: read_backlog(self.redis, self.keys, tenants))

    def keep_inline(self, key: str, ttl_s: int) -> None:
        """Keep inline bytes for ``ttl_s`` more seconds (e.g. while their job awaits review)."""
        self._call(lambda: self.redis.expire(self.key("inline", key), ttl_s))

    def inline_bytes_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return [raw if isinstance(raw, bytes) else None for raw in self._mget("inline", keys)]

    # --- results -----------------------------------------------------------------------------

    def get_results(self, job_ids: Sequence[str]) -> list[JobResult | None]:
        return [
            JobResult.model_validate_json(raw) if raw else None
            for raw in self._mget("result", job_ids)
        ]

    def result_json(self, job_ids: Sequence[str]) -> list[bytes | None]:
        """The stored results as their JSON bytes (what the API returns as is)."""
        return [raw if isinstance(raw, bytes) else None for raw in self._mget("result", job_ids)]

    def finish_many(self, results: Sequence[JobResult]) -> list[bool]:
        """Write final results unless their jobs already have one (a redelivered task), in one
        round trip; their bytes no longer count as queued, and their inline bytes go unless
        they are still needed (:func:`moderation.core.jobs.keeps_inline`).

        Returns:
            Per result: True when this call ended the job; False when it had already ended.

        Raises:
            QueueUnavailable: Redis is down.
        """

        def run() -> list[Any]:
            pipe = self.redis.pipeline(transaction=False)
            for result in results:
                self._finish(
                    keys=[
                        self.key("result", result.job_id),
                        self.key("outcomes"),
                        self.key("pending"),
                        self.key("queued"),
                        self.key("queued_bytes"),
                        self.key("inline", result.job_id),
                        self.key("queued_bytes", tenant_of(result.job_id)),
                        self.key("backlog", tenant_of(result.job_id)),
                    ],
                    args=[
                        result.model_dump_json(),
                        self.settings.result_ttl_s,
                        result.job_id,
                        result.status.value,
                        1_000_000,
                        "0" if keeps_inline(result) else "1",
                    ],
                    client=pipe,
                )
            return list(pipe.execute())

        return [bool(won) for won in self._call(run)] if results else []

    def set_human(self, job_id: str, human: HumanDecision) -> JobResult | None:
        """Attach a human decision to a job's result (replacing an earlier one for the same
        review). Returns the updated result, or None for an unknown job.

        Raises:
            QueueUnavailable: Redis is down.
        """
        key = self.key("result", job_id)

        def update(pipe: Any) -> JobResult | None:
            raw = pipe.get(key)
            if not raw:
                return None
            result = JobResult.model_validate_json(raw)
            updated = result.model_copy(update={"human": human})
            ttl = pipe.ttl(key)
            pipe.multi()
            pipe.set(
                key,
                updated.model_dump_json(),
                ex=ttl if ttl and ttl > 0 else self.settings.result_ttl_s,
            )
            return updated

        updated: Any = self._call(
            lambda: self.redis.transaction(update, key, value_from_callable=True)  # type: ignore[arg-type]
        )
        return updated if isinstance(updated, JobResult) else None

    def outcomes(self, count: int = 100_000) -> list[tuple[str, str]]:
        """(job_id, status) per ended job, oldest first, from the outcome stream."""
        entries: Any = self._call(lambda: self.redis.xrange(self.key("outcomes"), count=count))
        return [(f[b"job_id"].decode(), f[b"status"].decode()) for _, f in entries]

    def ping(self) -> bool:
        try:
            return bool(self._call(self.redis.ping))
        except QueueUnavailable:
            return False
