"""The embedded server of ``moderation demo`` keeps its data: append-only file in its folder."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from moderation.adapters.embedded_redis import EmbeddedRedis
from moderation.exceptions import QueueUnavailable


def _wait_for_aof_written(client: redis.Redis, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while client.info("persistence")["aof_buffer_length"] != 0:
        assert time.monotonic() < deadline, client.info("persistence")
        time.sleep(0.05)


def test_acknowledged_writes_survive_kill_9_and_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "redis"
    server = EmbeddedRedis(data_dir=data, persist=True)
    url = server.start()
    assert not server.had_data
    try:
        client = redis.Redis.from_url(url)
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
        for i in range(100):
            client.set(f"mod:result:j{i}", b"{}")
        client.rpush("moderation", b"message")
        # What survives a process crash is what Redis has written to its append-only file. With
        # `appendfsync everysec`, Redis postpones that write (up to 2 s) while an earlier fsync
        # is still running on a slow disk: wait until its AOF buffer is empty, as a crash
        # after that point is what the guarantee covers.
        _wait_for_aof_written(client)
        with pytest.raises(QueueUnavailable, match="another embedded Redis"):
            EmbeddedRedis(data_dir=data, persist=True).start()  # one server per data folder
    finally:
        server._server.terminate()  # SIGKILL: a crash, no shutdown save
        server._server = None
        server._unlock()
    again = EmbeddedRedis(data_dir=data, persist=True)
    url = again.start()
    try:
        assert again.had_data
        client = redis.Redis.from_url(url)
        assert sum(1 for _ in client.scan_iter(match="mod:result:*")) == 100
        assert client.lrange("moderation", 0, -1) == [b"message"]
    finally:
        again.stop()


def test_without_persistence_nothing_is_kept(tmp_path: Path) -> None:
    """Benchmarks and throwaway servers: no append-only file (as before)."""
    for server in (EmbeddedRedis(), EmbeddedRedis(data_dir=tmp_path / "redis")):
        url = server.start()
        try:
            assert redis.Redis.from_url(url).config_get("appendonly") == {"appendonly": "no"}
        finally:
            server.stop()
