"""The pipeline with job records and results in PostgreSQL: a real ``moderation worker``
process and the API, both on a real PostgreSQL (pgserver) and a real valkey. Results are read
from PostgreSQL; Redis keeps no job record and no result (its memory does not grow with ended
jobs); a dead letter is requeued from the CLI and runs again; after a Redis FLUSHALL under
load, every accepted job still ends exactly once."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
import redis
from pydantic import SecretStr
from typer.testing import CliRunner

from moderation import testmodel
from moderation.adapters.redis_deliveries import RedisDeliveryLog
from moderation.adapters.redis_jobs import RedisJobStore
from moderation.cli import app as cli_app
from moderation.client import ModerationClient
from moderation.compose.stores import open_queue
from moderation.core.image_ref import ImageRef
from moderation.core.jobs import Job, JobStatus
from moderation.settings import Settings
from tests.pipeline_support import (
    WorkerProcess,
    pipeline_settings,
    png_bytes,
    start_api,
    stop_api,
)
from tests.servers import start_valkey

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("postgres")]


@dataclass
class Flow:
    settings: Settings
    redis: redis.Redis
    registry: RedisJobStore
    client: ModerationClient
    worker: WorkerProcess
    pg_url: str


@pytest.fixture(scope="module")
def flow(
    test_model_settings: Settings, tmp_path_factory: pytest.TempPathFactory, pg_url: str
) -> Iterator[Flow]:
    tmp = tmp_path_factory.mktemp("pg-flow")
    valkey = start_valkey()
    base = test_model_settings.model_copy(
        update={
            "cache_dir": tmp / "cache",
            "database": test_model_settings.database.model_copy(
                update={"url": SecretStr(pg_url), "pool_max_size": 4}
            ),
        }
    )
    # A lost message is looked for 3 s after its publish (the Redis FLUSHALL test).
    settings = pipeline_settings(base, valkey.connection_url, lost_after_s=3.0)
    registry = RedisJobStore.from_url(valkey.connection_url, settings.queue)
    worker = WorkerProcess(settings, tmp / "worker.log").start()
    server = None
    try:
        worker.wait_ready(registry)
        server, url = start_api(settings)
        with ModerationClient(url) as client:
            yield Flow(
                settings,
                redis.Redis.from_url(valkey.connection_url),
                registry,
                client,
                worker,
                pg_url,
            )
    finally:
        if server is not None:
            stop_api(server)
        worker.stop()
        valkey.stop()


def test_results_live_in_postgres_and_redis_keeps_no_record(flow: Flow) -> None:
    images = {
        band: png_bytes(testmodel.sample_images(band, 1, 7)[0][0])
        for band in ("block", "review", "allow")
    }
    ids = flow.client.submit_many(list(images.values()))
    results = flow.client.wait_many(ids, timeout=120)
    assert [r.verdict.decision.value for r in results if r.verdict] == ["block", "review", "allow"]
    # The same id again is the same job (idempotent), answered from PostgreSQL.
    again = flow.client.submit(images["allow"], id=results[2].job_id)
    assert again == results[2].job_id
    with psycopg.connect(flow.pg_url) as conn:
        rows = conn.execute(
            "SELECT status, decision FROM jobs WHERE id = ANY(%s) ORDER BY decision",
            (ids,),  # the default tenant's scoped ids are the plain ids
        ).fetchall()
    assert rows == [("done", "allow"), ("done", "block"), ("done", "review")]
    prefix = flow.settings.queue.key_prefix
    for kind in ("job", "result"):
        assert list(flow.redis.scan_iter(f"{prefix}{kind}:*")) == []
    assert not flow.redis.exists(f"{prefix}outcomes")
    assert flow.registry.queued_bytes() == 0
    assert flow.redis.zcard(f"{prefix}pending") == 0
    # No image stays in Redis, the REVIEW one included (its reviewer is shown the scored
    # bytes kept in the object store), and no job's start counter either.
    assert list(flow.redis.scan_iter(f"{prefix}inline:*")) == []
    # Start counters go just before the task that ended the job returns, which is before its
    # message is acknowledged (acks_late): once nothing is unacknowledged, none is left. (A
    # client can see the result before that, so wait for the acknowledgements.)
    deadline = time.monotonic() + 60
    while flow.redis.hlen("unacked") or flow.redis.llen(flow.settings.queue.queue_name):
        assert time.monotonic() < deadline, "messages still unacknowledged after 60 s"
        time.sleep(0.05)
    assert list(flow.redis.scan_iter(f"{prefix}deliveries:*")) == []


def test_inline_images_over_the_spill_size_never_enter_redis(flow: Flow) -> None:
    """An API with ``queue.inline_spill_bytes`` writes the bytes to the object store; the
    worker process reads them back by the ``spill:`` reference; Redis holds no inline key."""
    spilling = flow.settings.model_copy(
        update={"queue": flow.settings.queue.model_copy(update={"inline_spill_bytes": 1})}
    )
    server, url = start_api(spilling)
    try:
        images = [png_bytes(testmodel.sample_images(b, 1, 53)[0][0]) for b in ("block", "allow")]
        with ModerationClient(url) as client:
            ids = client.submit_many(images)
            results = client.wait_many(ids, timeout=120)
    finally:
        stop_api(server)
    assert [r.verdict.decision.value for r in results if r.verdict] == ["block", "allow"]
    prefix = flow.settings.queue.key_prefix
    assert [flow.redis.exists(f"{prefix}inline:{job_id}") for job_id in ids] == [0, 0]
    spilled = sorted(flow.settings.blobs.local_dir.glob("spill/*/*"))
    assert sorted(p.read_bytes() for p in spilled) == sorted(images)


def test_dead_letter_is_requeued_from_the_cli_and_reopened_in_postgres(flow: Flow) -> None:
    image = png_bytes(testmodel.sample_images("block", 1, 41)[0][0])
    from moderation.adapters.postgres.jobs import PostgresJobStore
    from moderation.adapters.postgres.pool import open_pool
    from moderation.adapters.redis_transients import RedisJobTransients

    with open_pool(flow.settings.database) as pool:
        store = PostgresJobStore(pool, RedisJobTransients(flow.registry.redis, flow.settings.queue))
        job = Job(id="pg-poison-1", image=ImageRef.for_inline("pg-poison-1"))
        store.create(job, image)
    deliveries = RedisDeliveryLog(flow.registry.redis, flow.settings.queue)
    for _ in range(flow.settings.queue.max_deliveries):  # as if it crashed the worker 4 times
        deliveries.count_delivery(job.id)
    open_queue(flow.settings).publish([job.id])
    dead = flow.client.wait("pg-poison-1", 60)
    assert dead.status is JobStatus.ERROR and dead.error is not None
    assert dead.error.code == "poison_message"
    runner = CliRunner()
    env = flow.settings.to_env(base={})
    listed = runner.invoke(cli_app, ["dlq", "list"], env=env)
    assert json.loads(listed.output.strip().splitlines()[-1])["job_id"] == job.id
    requeued = runner.invoke(cli_app, ["dlq", "requeue", job.id], env=env)
    assert requeued.exit_code == 0 and "requeued 1" in requeued.output, requeued.output
    result = flow.client.wait("pg-poison-1", 60)
    assert result.status is JobStatus.DONE and result.verdict is not None
    assert deliveries.dead_letters() == []


def test_redis_flushall_under_load_every_job_ends_exactly_once(flow: Flow) -> None:
    """Redis loses everything (queue, bindings, inline bytes, pending index) while jobs are
    queued: the pending jobs are found in PostgreSQL and published again; those whose inline
    bytes were only in Redis end with ``inline_expired``, the others with their verdict; none
    is lost and none ends twice. (Runs last in this module: it empties the module's Redis.)"""
    images = [png_bytes(testmodel.sample_images("allow", 1, 200 + i)[0][0]) for i in range(8)]
    ids: list[str] = []
    for round_ in range(4):
        ids += flow.client.submit_many(images)
        if round_ == 1:
            flow.redis.flushall()
    results = flow.client.wait_many(ids, timeout=240)
    assert all(r.status.final for r in results)
    errors = Counter(r.error.code for r in results if r.error is not None)
    assert set(errors) <= {"inline_expired"}, errors
    # Every job submitted after the flush ran normally.
    assert all(r.status is JobStatus.DONE for r in results[16:])
    with psycopg.connect(flow.pg_url) as conn:
        ended = conn.execute(
            "SELECT count(*), count(DISTINCT id) FROM jobs "
            "WHERE id = ANY(%s) AND finished_at IS NOT NULL",
            (ids,),
        ).fetchone()
        first_finish = dict(
            conn.execute("SELECT id, finished_at FROM jobs WHERE id = ANY(%s)", (ids,)).fetchall()
        )
    assert ended == (len(ids), len(ids))
    # Republished copies of ended jobs change nothing: a result is final once.
    queue = open_queue(flow.settings)
    queue.publish(ids[:4])
    deadline = time.monotonic() + 60
    while (queue.in_flight() or set()) & set(ids[:4]):  # until the worker has taken them
        assert time.monotonic() < deadline, "the republished messages were never consumed"
        time.sleep(0.1)
    again = flow.client.wait_many(ids[:4], timeout=60)
    assert [r.finished_at for r in again] == [r.finished_at for r in results[:4]]
    with psycopg.connect(flow.pg_url) as conn:
        rows = conn.execute(
            "SELECT id, finished_at FROM jobs WHERE id = ANY(%s)", (ids[:4],)
        ).fetchall()
    assert all(first_finish[i] == at for i, at in rows)
    assert flow.redis.zcard(f"{flow.settings.queue.key_prefix}pending") == 0
