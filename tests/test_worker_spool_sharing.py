"""Workers started at the same moment on one audit spool folder (a shared volume, or two
workers in one pod): each owns a chain of its own, none fails with ``cannot lock new audit
chain``, every one becomes ready, and every job has exactly one audit record in chains that
verify. A new chain is locked under a name no scan looks at before it is renamed, so a worker
starting beside it cannot take it for an orphan (moderation/adapters/audit_log.py)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

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

pytestmark = pytest.mark.xdist_group("worker_spool_sharing")


def test_workers_started_together_on_one_spool_each_own_a_chain(
    settings: Settings, redis_url: str, tmp_path: Path
) -> None:
    from moderation.testmodel import sample_images

    s = pipeline_settings(settings, redis_url, batch_size=4, concurrency=2)
    spool = s.audit.spool_dir
    store = RedisJobStore.from_url(redis_url, s.queue)
    workers = [WorkerProcess(s, tmp_path / f"w{i}.log") for i in range(3)]
    for worker in workers:  # back to back: their audit logs open at about the same time
        worker.start()
    # The API spools elsewhere: only the workers share the folder.
    api_settings = s.model_copy(
        update={"audit": s.audit.model_copy(update={"spool_dir": tmp_path / "api-spool"})}
    )
    server, base = start_api(api_settings)
    try:
        for worker in workers:
            worker.wait_ready(store)
        chains = sorted(p.name for p in spool.iterdir() if p.name.startswith("chain-"))
        assert len(chains) == len(workers), chains
        assert not [p for p in spool.iterdir() if p.name.startswith(".new-")]
        for worker in workers:
            assert "cannot lock new audit chain" not in worker.log()
        images = [png_bytes(img) for img, _ in sample_images("allow", 24, 7)]
        with ModerationClient(base) as client:
            ids = client.submit_many(images, ids=[f"s{i:02d}" for i in range(len(images))])
            results = client.wait_many(ids, timeout=120)
        assert all(r.status is JobStatus.DONE for r in results)
    finally:
        for worker in workers:
            worker.stop()
        stop_api(server)
    assert [w.proc.returncode for w in workers if w.proc is not None] == [0, 0, 0]
    segments = open_segment_store(s)
    records = [r for r in dedupe(r for _, r in iter_records(segments)) if r.kind == "automated"]
    assert Counter(r.job_id for r in records) == Counter(ids)
    report = verify_store(segments)
    assert report.ok, report.problems
