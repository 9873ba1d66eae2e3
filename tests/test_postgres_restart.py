"""PostgreSQL restarted under load, with a real worker process and the API: while it is down
the API answers 503 problem details (``database_unavailable``) and workers retry; once it is
back every accepted job ends exactly once, nothing is lost, and the audit log verifies."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import httpx
import psycopg
import pytest
from pydantic import SecretStr

from moderation import testmodel
from moderation.adapters.postgres.embedded import EmbeddedPostgres
from moderation.adapters.redis_jobs import RedisJobStore
from moderation.client import ModerationClient
from moderation.compose.stores import open_segment_store
from moderation.core.audit import dedupe
from moderation.core.jobs import JobStatus
from moderation.pipeline.audit import iter_records, verify_store
from moderation.settings import Settings
from tests.pipeline_support import (
    WorkerProcess,
    pipeline_settings,
    png_bytes,
    start_api,
    stop_api,
)
from tests.servers import start_valkey

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("postgres-restart")]


def test_postgres_restart_under_load_loses_and_doubles_nothing(
    test_model_settings: Settings, tmp_path: Path
) -> None:
    root = Path(tempfile.mkdtemp(prefix="moderation-pg-restart-"))  # see tests/servers.py
    postgres = EmbeddedPostgres(data_dir=root / "data")
    valkey = start_valkey()
    worker = server = None
    try:
        url = postgres.start()
        base = test_model_settings.model_copy(
            update={
                "cache_dir": tmp_path / "cache",
                # Its own audit log: the verification below reads every chain in it.
                "audit": test_model_settings.audit.model_copy(
                    update={"local_dir": tmp_path / "audit", "spool_dir": tmp_path / "spool"}
                ),
                "database": test_model_settings.database.model_copy(
                    update={"url": SecretStr(url), "pool_timeout_s": 2.0, "connect_timeout_s": 1}
                ),
            }
        )
        settings = pipeline_settings(base, valkey.connection_url, lost_after_s=3.0)
        worker = WorkerProcess(settings, tmp_path / "worker.log").start()
        worker.wait_ready(RedisJobStore.from_url(valkey.connection_url, settings.queue))
        server, api = start_api(settings)
        images = [png_bytes(testmodel.sample_images("allow", 1, 300 + i)[0][0]) for i in range(8)]
        with ModerationClient(api) as client:
            before = client.submit_many(images)
            postgres.stop()  # under load: the worker is taking these jobs
            answer = httpx.get(f"{api}/v1/jobs/{before[0]}")
            assert answer.status_code == 503, answer.text
            assert answer.json()["code"] == "database_unavailable"
            assert "Retry-After" in answer.headers
            assert httpx.get(f"{api}/readyz").status_code == 503
            postgres.start()
            deadline = time.monotonic() + 60
            while True:  # the pools find the server again (a stale connection fails once)
                try:
                    after = client.submit_many(images)
                    break
                except Exception:
                    assert time.monotonic() < deadline, "the API never recovered"
                    time.sleep(0.2)
            results = client.wait_many(before + after, timeout=180)
        assert all(r.status is JobStatus.DONE for r in results), [r.error for r in results]
        with psycopg.connect(url) as conn:
            row = conn.execute(
                "SELECT count(*), count(DISTINCT id) FROM jobs "
                "WHERE id = ANY(%s) AND finished_at IS NOT NULL",
                (before + after,),
            ).fetchone()
        assert row == (len(before) + len(after), len(before) + len(after))
        # The audit log: every job's automated decision is there, and the chains verify (the
        # API and the worker flush their spools when they stop).
        stop_api(server)
        server = None
        worker.stop()
        worker = None
        log = open_segment_store(settings)
        report = verify_store(log)
        assert report.ok, report.problems
        audited = {
            r.job_id for r in dedupe(r for _, r in iter_records(log)) if r.kind == "automated"
        }
        assert audited >= {r.job_id for r in results}
    finally:
        if server is not None:
            stop_api(server)
        if worker is not None:
            worker.stop()
        valkey.stop()
        postgres.stop()
        shutil.rmtree(root, ignore_errors=True)
