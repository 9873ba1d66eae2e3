"""The worker registry on a real valkey: heartbeats in one hash and one sorted set (the
server's clock), read without SCAN; expired heartbeats are dropped on read."""

from __future__ import annotations

import redis

from moderation.adapters.redis_workers import RedisWorkerRegistry
from moderation.settings import QueueSettings


def test_heartbeats_live_in_two_keys_and_expire_on_the_servers_clock(redis_url: str) -> None:
    registry = RedisWorkerRegistry.from_url(redis_url, QueueSettings(key_prefix="reg:"))
    registry.heartbeat("w-live", {"name": "w-live", "policies": {"p": 2}}, ttl_s=60)
    registry.heartbeat("w-gone", {"name": "w-gone", "policies": {"q": 1}}, ttl_s=0)
    assert [w["name"] for w in registry.workers()] == ["w-live"]
    assert registry.known_policies() == {"p": 2}
    client = redis.Redis.from_url(redis_url)
    assert sorted(client.keys("reg:*")) == [b"reg:workers", b"reg:workers:expiry"]
    assert client.hkeys("reg:workers") == [b"w-live"]  # the expired one was dropped on read
    registry.heartbeat("w-live", {"name": "w-live", "policies": {"p": 3}}, ttl_s=60)
    assert registry.known_policies() == {"p": 3}  # a beat replaces the worker's entry
    assert registry.try_lock("sweep", 5) and not registry.try_lock("sweep", 5)
