"""The stores behind the hostile-proof edge, on a real valkey server and as in-memory twins,
held to the same contract: reviewer sessions (idle timeout, absolute lifetime, end, end all),
the sign-in throttle, per-tenant admission (token bucket and daily quota, Lua on the server's
clock) and the job store's queued-bytes cap and inline-byte rule."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from moderation.adapters.memory import (
    MemoryJobStore,
    MemoryLoginThrottle,
    MemoryRateLimiter,
    MemoryReviewerSessions,
)
from moderation.adapters.postgres.jobs import PostgresJobStore
from moderation.adapters.postgres.pool import open_pool
from moderation.adapters.redis_deliveries import RedisDeliveryLog
from moderation.adapters.redis_jobs import RedisJobStore
from moderation.adapters.redis_limits import RedisRateLimiter
from moderation.adapters.redis_sessions import RedisLoginThrottle, RedisReviewerSessions
from moderation.adapters.redis_transients import RedisJobTransients
from moderation.adapters.support.redis import connect
from moderation.core.admission import Tenant
from moderation.core.image_ref import ImageRef
from moderation.core.jobs import Job, JobError, JobResult
from moderation.core.reviewers import ReviewerSession
from moderation.exceptions import QueueFull
from moderation.settings import DatabaseSettings, QueueSettings


@pytest.fixture(params=["redis", "memory"])
def sessions(request: pytest.FixtureRequest) -> Iterator[Any]:
    if request.param == "memory":
        yield MemoryReviewerSessions(idle_s=60, max_s=300)
        return
    url = request.getfixturevalue("redis_url")
    client = connect(url, decode=True)
    yield RedisReviewerSessions(client, idle_s=60, max_s=300, prefix="t:")
    client.close()


def _session(name: str, now: float) -> ReviewerSession:
    return ReviewerSession(username=name, created_at=now, last_seen=now, nonce="n-" + name)


def test_sessions_time_out_and_end(sessions: Any) -> None:
    now = time.time()
    sessions.create("k1", _session("alice", now))
    touched = sessions.touch("k1", now + 59)
    assert touched is not None and touched.last_seen == pytest.approx(now + 59)
    assert touched.nonce == "n-alice" and touched.username == "alice"
    assert sessions.touch("k1", now + 118) is not None  # the idle clock restarted
    assert sessions.touch("k1", now + 178.5) is None  # 60 s idle: gone
    assert sessions.touch("k1", now + 179) is None
    sessions.create("k2", _session("alice", now))
    for step in range(1, 6):
        assert sessions.touch("k2", now + 55 * step) is not None
    assert sessions.touch("k2", now + 300) is None  # absolute lifetime, however active
    sessions.create("k3", _session("alice", now))
    sessions.create("k4", _session("alice", now))
    sessions.create("k5", _session("bob", now))
    assert sessions.count("alice") == 2
    assert sessions.end("k3") is True and sessions.end("k3") is False
    assert sessions.end_all("alice") == 1
    assert sessions.touch("k4", now + 1) is None
    assert sessions.touch("k5", now + 1) is not None and sessions.count("bob") == 1


def test_redis_keeps_no_usable_token_and_forgets_dead_sessions(redis_url: str) -> None:
    client = connect(redis_url, decode=True)
    store = RedisReviewerSessions(client, idle_s=2, max_s=300, prefix="t:")
    store.create("0" * 64, _session("alice", time.time()))
    assert 0 < int(client.ttl("t:session:" + "0" * 64)) <= 2  # Redis drops it when idle
    client.close()


@pytest.fixture(params=["redis", "memory"])
def throttle(request: pytest.FixtureRequest) -> Iterator[Any]:
    if request.param == "memory":
        yield MemoryLoginThrottle()
        return
    client = connect(request.getfixturevalue("redis_url"), decode=True)
    yield RedisLoginThrottle(client, prefix="t:")
    client.close()


def test_the_login_throttle_counts_blocks_and_clears(throttle: Any) -> None:
    now = time.time()
    assert [throttle.fail("account:alice", now, window_s=60) for _ in range(3)] == [1, 2, 3]
    assert throttle.fail("address:10.0.0.1", now, window_s=60) == 1
    assert throttle.blocked_for(["account:alice", "address:10.0.0.1"], now) == 0.0
    throttle.block("account:alice", now + 30)
    throttle.block("account:alice", now + 10)  # never shortened
    assert throttle.blocked_for(["account:alice", "address:10.0.0.1"], now) == pytest.approx(30)
    throttle.clear("account:alice")
    assert throttle.blocked_for(["account:alice"], now) == 0.0
    assert throttle.fail("account:alice", now, window_s=60) == 1


def test_the_login_throttle_reserves_attempts_atomically(throttle: Any) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from moderation.core.reviewers import LoginPolicy

    now = time.time()
    strict = LoginPolicy(free_failures=2, delay_s=5, max_delay_s=20, lockout_after=4)
    gentle = LoginPolicy(free_failures=2, delay_s=1, max_delay_s=2, lockout_after=None)
    assert strict.schedule() == (0.0, 0.0, 5.0, 900.0) and gentle.schedule() == (0, 0, 1, 2)
    keys = [("pair:bob@10.0.0.9", strict), ("account:bob", gentle)]
    # Twenty at once: each sees the others' reservations, so only free + 1 get through.
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: throttle.reserve(keys, now), range(20)))
    through = sorted(counts for wait, counts in answers if wait == 0)
    assert through == [(1, 1), (2, 2), (3, 3)], answers
    assert all(wait == pytest.approx(5.0) for wait, counts in answers if counts == ())
    # Waiting as told, the counts go on; the strict key locks, the gentle one never does.
    assert throttle.reserve(keys, now + 5) == (0.0, (4, 4))
    assert throttle.blocked_for(["pair:bob@10.0.0.9"], now + 5) == pytest.approx(900)
    assert throttle.blocked_for(["account:bob"], now + 5) == pytest.approx(2)
    throttle.refund("account:bob")
    throttle.refund("account:bob")
    assert throttle.reserve([("account:bob", gentle)], now + 8) == (0.0, (3,))


@pytest.fixture(params=["redis", "memory"])
def limiter(request: pytest.FixtureRequest) -> Iterator[Any]:
    if request.param == "memory":
        yield MemoryRateLimiter()
        return
    client = connect(request.getfixturevalue("redis_url"))
    yield RedisRateLimiter(client, prefix="t:")
    client.close()


def test_admission_is_a_token_bucket_and_a_daily_quota(limiter: Any) -> None:
    slow = Tenant("acme", rate_per_s=0.5, burst=3)
    assert limiter.admit(slow, 2).granted
    assert limiter.admit(slow, 1).granted
    refused = limiter.admit(slow, 1)
    assert not refused.granted and refused.reason == "rate"
    assert 1.5 < refused.retry_after_s <= 2.0  # one token at 0.5/s
    assert limiter.admit(Tenant("globex", rate_per_s=0.5, burst=3), 3).granted  # its own bucket
    quota = Tenant("initech", rate_per_s=1000.0, burst=1000, daily_jobs=5)
    assert limiter.admit(quota, 5).granted
    over = limiter.admit(quota, 1)
    assert not over.granted and over.reason == "quota"
    assert 0 < over.retry_after_s <= 86_400


@pytest.fixture(params=["redis", "memory", "postgres"])
def store(request: pytest.FixtureRequest) -> Iterator[Any]:
    settings = QueueSettings(max_queued_bytes=4000)
    if request.param == "memory":
        yield MemoryJobStore(max_queued_bytes=4000)
        return
    if request.param == "postgres":
        # Records and results in PostgreSQL; bytes and the pending index in valkey.
        url = request.getfixturevalue("pg_url")
        with open_pool(DatabaseSettings(), url=url) as pool:
            yield PostgresJobStore(
                pool,
                RedisJobTransients.from_url(request.getfixturevalue("redis_url"), settings),
            )
        return
    yield RedisJobStore.from_url(request.getfixturevalue("redis_url"), settings)


def _job(job_id: str, tenant: str = "default") -> Job:
    return Job(id=job_id, image=ImageRef.for_inline(job_id), tenant=tenant)


def test_queued_bytes_are_capped_and_freed_when_jobs_end(store: Any) -> None:
    a, b, c = _job("acme/a", "acme"), _job("acme/b", "acme"), _job("c")
    store.create(a, b"x" * 1500)
    store.create(b, b"x" * 1500)
    held = store.queued_bytes()
    assert held > 3000
    with pytest.raises(QueueFull):
        store.create(c, b"x" * 1500)
    assert store.get_job("c") is None and store.queued_bytes() == held
    assert store.create(a, b"x" * 1500)[1] is False  # a duplicate is never "full"
    assert store.get_jobs(["acme/a", "nope", "acme/b"])[0] == a
    assert store.get_jobs(["acme/a", "nope", "acme/b"])[1] is None
    error = JobResult.ended(a, error=JobError(code="image_corrupt", message="x"))
    assert store.finish(error)
    assert store.inline_bytes("acme/a") is None  # an error keeps no image bytes
    store.delete("acme/b")
    assert store.queued_bytes() == 0
    store.create(c, b"x" * 1500)
    poison = JobResult.ended(c, error=JobError(code="poison_message", message="x"))
    assert store.finish(poison)
    assert store.inline_bytes("c") == b"x" * 1500  # a dead letter keeps them for a requeue


def test_the_delivery_log_forgets_ended_jobs_after_a_short_grace(redis_url: str) -> None:
    """What keeps Redis from growing with the jobs that ended: once their message is done, a
    job's start counter goes and its effects mark expires after ``ended_grace_s`` (not
    ``result_ttl_s``)."""
    client = connect(redis_url)
    settings = QueueSettings(key_prefix=f"grace{time.time_ns()}:", ended_grace_s=30)
    log = RedisDeliveryLog(client, settings)
    assert log.count_deliveries(["a", "b"]) == [1, 1]
    log.mark_effects_done_many(["a", "b"])
    assert client.ttl(log.key("effects", "a")) > 30
    log.forget_ended(["a", "b"])
    log.forget_ended([])
    assert client.exists(log.key("deliveries", "a"), log.key("deliveries", "b")) == 0
    assert 0 < client.ttl(log.key("effects", "a")) <= 30
    assert log.effects_done_many(["a", "b", "c"]) == [True, True, False]  # within the grace
    client.close()
