"""`kill -9` a worker in the middle of 300 jobs, start a new one: every job ends exactly once.

Proof of "exactly one": the job store's outcome stream gets one entry per job that *ended*
(compare-and-set on the result), so each of the 300 ids must appear there exactly once. The
messages the killed worker had reserved but not acknowledged are read from the broker's
``unacked`` hash right after the kill: each of them must be delivered again and end exactly once
(after the kill, unless it had ended before the kill and only its acknowledgement was lost).
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from moderation.adapters.redis_jobs import RedisJobStore
from moderation.client import ModerationClient
from moderation.core.jobs import JobStatus
from moderation.settings import Settings
from tests.pipeline_support import WorkerProcess, pipeline_settings, png_bytes, start_api, stop_api

pytestmark = pytest.mark.slow
N_JOBS = 300


def _small_images(n: int) -> list[bytes]:
    from moderation.testmodel import sample_images

    base = [img.resize((64, 64)) for img, _ in sample_images("allow", 10, 3)]
    return [png_bytes(base[i % len(base)]) for i in range(n)]


def _unacked_task_ids(store: RedisJobStore) -> set[str]:
    """Job ids of the messages in kombu's ``unacked`` hash: reserved by a worker and not
    acknowledged yet (each message carries a batch of job ids)."""
    from moderation.adapters.celery_queue import message_job_ids

    return {job for raw in store.redis.hvals("unacked") for job in message_job_ids(raw)}


def test_kill_9_mid_run_loses_and_duplicates_nothing(
    settings: Settings, redis_url: str, tmp_path: Path
) -> None:
    s = pipeline_settings(
        settings,
        redis_url,
        batch_size=8,
        concurrency=8,
        prefetch_multiplier=4,
        visibility_timeout_s=6,
    )
    # Two starts allowed: a job is dead-lettered at its third. One crash must cost one start, so
    # every job of the killed worker's batches still ends DONE (below), not dead-lettered.
    s = s.model_copy(update={"queue": s.queue.model_copy(update={"max_deliveries": 2})})
    store = RedisJobStore.from_url(redis_url, s.queue)
    first = WorkerProcess(s, tmp_path / "w1.log").start()
    server, base = start_api(s)
    second: WorkerProcess | None = None
    try:
        first.wait_ready(store)
        with ModerationClient(base) as client:
            names = [f"j{i:03d}" for i in range(N_JOBS)]
            ids = client.submit_many(_small_images(N_JOBS), ids=names)
            deadline = time.monotonic() + 120
            while len(store.outcomes()) < N_JOBS // 4:  # let it get going, then crash it
                assert time.monotonic() < deadline, first.log()
                time.sleep(0.05)
            first.kill9()
            ended_before_kill = {job for job, _ in store.outcomes()}
            unacked_at_kill = _unacked_task_ids(store)
            assert len(ended_before_kill) < N_JOBS, "the worker finished before it was killed"
            assert unacked_at_kill, "the killed worker held no unacknowledged message"
            second = WorkerProcess(s, tmp_path / "w2.log").start()
            results = client.wait_many(ids, timeout=180)
        assert all(r.status is JobStatus.DONE for r in results), [
            r.error for r in results if r.status is not JobStatus.DONE
        ][:3]
        ended = Counter(job for job, _ in store.outcomes())
        assert set(ended) == set(ids)  # none lost
        assert max(ended.values()) == 1  # none ended twice
        # Every message the dead worker held came back and its job ended once: after the kill,
        # or before it when only the acknowledgement was lost (then the redelivery is a no-op).
        assert unacked_at_kill <= set(ids)
        redelivered = unacked_at_kill - ended_before_kill
        assert redelivered, "no reserved-but-unfinished message to prove redelivery with"
        assert all(ended[j] == 1 for j in unacked_at_kill)
        # One crash costs one delivery: a job of a batch the dead worker had started counts two
        # starts, not three (the split of the redelivered batch is not counted as a crash). With
        # queue.max_deliveries=2 a third start would have dead-lettered it, and every job ended
        # DONE (above), the redelivered ones included. (The start counters themselves are
        # forgotten once a job's message is done, so they are not read here.)
        assert all(results[ids.index(j)].status is JobStatus.DONE for j in redelivered)
    finally:
        stop_api(server)
        first.stop()
        if second is not None:
            second.stop()


def test_a_job_whose_message_was_lost_is_published_again(
    settings: Settings, redis_url: str, tmp_path: Path
) -> None:
    """kombu pops a message before it records it as unacked, so a worker killed in between
    loses it. The job record is the source of truth: the sweeper publishes such a job again."""
    from moderation.core.image_ref import ImageRef
    from moderation.core.jobs import Job
    from tests.servers import free_port

    metrics_port = free_port()
    s = pipeline_settings(settings, redis_url, lost_after_s=1.0, worker_metrics_port=metrics_port)
    store = RedisJobStore.from_url(redis_url, s.queue)
    job = Job(id="lost-1", image=ImageRef.for_inline("lost-1"))
    _, created = store.create(job, _small_images(1)[0])  # recorded, but no message published
    assert created and store.redis.llen(s.queue.queue_name) == 0
    worker = WorkerProcess(s, tmp_path / "w.log").start()
    try:
        worker.wait_ready(store)
        deadline = time.monotonic() + 60
        while (result := store.get_result("lost-1")) is not None and not result.status.final:
            assert time.monotonic() < deadline, worker.log()
            time.sleep(0.1)
        assert result is not None and result.status is JobStatus.DONE
        assert "publishing them again" in worker.log()
        assert store.redis.zscore(store.key("pending"), "lost-1") is None
        scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        assert 'moderation_retries_total{code="lost_message"} 1.0' in scraped
    finally:
        worker.stop()
