"""Soak benchmark of the state tier (issue 18): many jobs through the real pipeline with the
test model, job records and results in PostgreSQL, and what Redis holds meanwhile. Prints one
JSON object (and writes it to ``--out`` when given).

    python bench/soak.py [--jobs 200000] [--wave 2000] [--batch-size 128] [--workers 1]
        [--side 64] [--hash-every-image] [--out bench/results/soak.json]

The processes are the production ones, as in ``bench/pipeline.py``: an embedded Valkey, an
embedded PostgreSQL 16 (pgserver), one API process (uvicorn) and ``--workers`` Celery worker
processes; this process is the client. It uploads tiny JPEGs (``--side`` pixels, the test
model's input size) in waves of ``--wave`` jobs, keeping at most two waves in flight (the
next is submitted before the previous one's results are awaited), and after each wave reads
Valkey's ``INFO memory``. PDQ hashing of every image is off unless ``--hash-every-image``
(``banks.hash_every_image``: worker CPU, not state; off, the 200,000 jobs fit a busy 2-core
machine in about a quarter of an hour). What it reports:

- ``valkey_used_memory``: ``used_memory`` after warm-up (``start``), when half the jobs have
  ended (``middle``) and at the end (``end``), plus every sample. Flat is the goal: Redis holds
  only jobs that have not ended (inline bytes, the pending index, the broker's messages), so its
  memory must not grow with the number of jobs that ended.
- ``valkey_keys``: keys by prefix at the start and the end (one SCAN each, outside the timed
  loop): what would be growing if the memory were.
- ``postgres``: rows and ``pg_total_relation_size`` of the ``jobs`` partitions (indexes and
  TOAST included) per stored job, and of the id index ``job_days``; rows written (inserted +
  updated, from ``pg_stat_database``) per second over the run.
- ``jobs_per_s``: jobs ended per second, first submit to last result.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.pipeline import _cpu_s, _free_port, _pid_listening  # noqa: E402


def _images(n: int, side: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(base).resize((side, side), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        out.append(buffer.getvalue())
    return out


def _redis_memory(client: Any) -> dict[str, int]:
    info = client.info("memory")
    return {
        "used_memory": int(info["used_memory"]),
        "used_memory_dataset": int(info.get("used_memory_dataset", 0)),
        "used_memory_rss": int(info["used_memory_rss"]),
    }


def _redis_keys(client: Any) -> dict[str, int]:
    """Keys by prefix (the key up to its last ``:``-separated part that looks like an id)."""
    counts: dict[str, int] = {}
    for key in client.scan_iter(count=1000):
        text = key.decode(errors="replace")
        parts = text.split(":")
        prefix = ":".join(parts[:-1]) + ":*" if len(parts) > 2 else text
        counts[prefix] = counts.get(prefix, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def _pg_written(conn: Any) -> int:
    row = conn.execute(
        "SELECT tup_inserted + tup_updated FROM pg_stat_database WHERE datname = current_database()"
    ).fetchone()
    return int(row[0]) if row else 0


def _pg_sizes(conn: Any) -> dict[str, Any]:
    conn.execute("VACUUM (ANALYZE) jobs")
    row = conn.execute(
        "SELECT (SELECT count(*) FROM jobs), sum(pg_total_relation_size(i.inhrelid)), count(*) "
        "FROM pg_inherits i WHERE i.inhparent = 'jobs'::regclass"
    ).fetchone()
    jobs, size, partitions = (int(row[0]), int(row[1] or 0), int(row[2])) if row else (0, 0, 0)
    out: dict[str, Any] = {
        "jobs_rows": jobs,
        "jobs_partitions": partitions,
        "jobs_bytes": size,
        "bytes_per_job": round(size / jobs, 1) if jobs else None,
    }
    if conn.execute("SELECT to_regclass('job_days') IS NOT NULL").fetchone()[0]:
        conn.execute("VACUUM (ANALYZE) job_days")
        index_bytes = int(
            conn.execute("SELECT pg_total_relation_size('job_days')").fetchone()[0] or 0
        )
        out["job_days_bytes"] = index_bytes
        out["bytes_per_job_with_id_index"] = round((size + index_bytes) / jobs, 1) if jobs else None
    out["database_bytes"] = int(
        conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    )
    return out


def soak(
    settings: Any,
    *,
    jobs: int,
    wave: int,
    workers: int,
    side: int,
    tmp: Path,
    progress: bool = True,
) -> dict[str, Any]:
    import psycopg
    from pydantic import SecretStr

    from moderation.adapters.embedded_redis import EmbeddedRedis
    from moderation.adapters.postgres.embedded import EmbeddedPostgres
    from moderation.adapters.redis_workers import RedisWorkerRegistry
    from moderation.adapters.support.redis import connect
    from moderation.client import ModerationClient

    pool = _images(64, side)
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(EmbeddedRedis(data_dir=tmp / "redis"))
        postgres = stack.enter_context(EmbeddedPostgres(data_dir=tmp / "pg", delete=True))
        settings = settings.model_copy(
            update={
                "redis_url": redis.url,
                "database": settings.database.model_copy(update={"url": SecretStr(postgres.url)}),
            }
        )
        env = settings.to_env()
        env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp / "metrics")
        (tmp / "metrics").mkdir()
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p
        )
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "moderation.cli", "worker", "--loglevel", "WARNING"],
                env={**env, "MODERATION_WORKER_SLOT": str(i)},
                cwd=ROOT,
                start_new_session=True,
                stdout=subprocess.DEVNULL,
            )
            for i in range(workers)
        ]
        port = _free_port()
        api = subprocess.Popen(
            [sys.executable, "-m", "moderation.cli", "api", "--port", str(port), "--ops-port", "0"],
            env={**env, "MODERATION_LOG_LEVEL": "WARNING"},
            cwd=ROOT,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
        )
        stack.callback(_stop, [api, *procs])
        rclient = connect(redis.url)
        registry = RedisWorkerRegistry.from_url(redis.url, settings.queue)
        deadline = time.monotonic() + 600
        while len(registry.workers()) < workers:
            if any(w.poll() is not None for w in procs) or time.monotonic() > deadline:
                raise SystemExit("worker did not start")
            time.sleep(0.2)
        pg = stack.enter_context(psycopg.connect(postgres.url, autocommit=True))
        with ModerationClient(f"http://127.0.0.1:{port}", timeout=300) as client:
            while True:
                try:
                    client.healthz()
                    break
                except Exception:
                    if api.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit("the API did not start") from None
                    time.sleep(0.2)
            # Warm-up: one wave, so the start sample has every connection, script and
            # structure the steady state has.
            warm = client.wait_many(client.upload_many(pool * (wave // len(pool) + 1))[:wave])
            warm_errors = sum(r.error is not None for r in warm)
            keys_start = _redis_keys(rclient)
            start_memory = _redis_memory(rclient)
            pids = {
                "api": api.pid,
                **{f"worker-{i}": w.pid for i, w in enumerate(procs)},
                "redis": _pid_listening(redis.url),
                "postgres": postgres.pid,
            }
            cpu_before = {name: _cpu_s(pid) for name, pid in pids.items()}
            written_before = _pg_written(pg)
            samples: list[dict[str, Any]] = []
            errors = 0
            ended = 0
            started = time.perf_counter()
            in_flight: list[str] | None = None
            waves = -(-jobs // wave)
            for k in range(waves + 1):
                ids: list[str] | None = None
                if k < waves:
                    n = min(wave, jobs - k * wave)
                    batch = [pool[(k * wave + i) % len(pool)] for i in range(n)]
                    ids = client.upload_many(batch, chunk=500)
                if in_flight is not None:
                    results = client.wait_many(in_flight, timeout=1800)
                    errors += sum(r.error is not None for r in results)
                    ended += len(results)
                    sample = {
                        "jobs_ended": ended,
                        "s": round(time.perf_counter() - started, 1),
                        **_redis_memory(rclient),
                    }
                    samples.append(sample)
                    if progress:
                        print(
                            f"soak: {ended}/{jobs} ended, {sample['s']} s, "
                            f"valkey used_memory {sample['used_memory'] / 2**20:.2f} MiB",
                            file=sys.stderr,
                        )
                in_flight = ids
            elapsed = time.perf_counter() - started
        cpu = {name: _cpu_s(pid) - cpu_before[name] for name, pid in pids.items()}
        # Statistics reach pg_stat_database within a second of a transaction's end.
        time.sleep(1.5)
        written = _pg_written(pg) - written_before
        keys_end = _redis_keys(rclient)
        end_memory = _redis_memory(rclient)
        sizes = _pg_sizes(pg)
    middle = min(samples, key=lambda s: abs(s["jobs_ended"] - jobs / 2))
    used = [s["used_memory"] for s in samples]
    half = len(used) // 2
    return {
        "jobs": jobs,
        "errors": errors,
        "warmup_errors": warm_errors,
        "elapsed_s": round(elapsed, 1),
        "jobs_per_s": round(jobs / elapsed, 1),
        "valkey_used_memory": {
            "start": start_memory["used_memory"],
            "middle": middle["used_memory"],
            "end": samples[-1]["used_memory"],
            "after_drain": end_memory["used_memory"],
            "median_first_half": statistics.median(used[:half]) if half else None,
            "median_second_half": statistics.median(used[half:]),
            "max": max(used),
        },
        "valkey_keys": {"start": keys_start, "end": keys_end},
        "postgres": {
            **sizes,
            "rows_written": written,
            "rows_written_per_s": round(written / elapsed, 1),
        },
        "cpu_ms_per_job": {name: round(v * 1000 / jobs, 3) for name, v in cpu.items()},
        "cpu_cores_busy": round(sum(cpu.values()) / elapsed, 2),
        "samples": samples,
    }


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=200_000)
    parser.add_argument("--wave", type=int, default=2000, help="jobs per submitted wave")
    parser.add_argument("--batch-size", type=int, default=128, help="images per forward pass")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--side", type=int, default=64, help="image side in pixels")
    parser.add_argument(
        "--hash-every-image", action="store_true", help="PDQ-hash every image (worker CPU)"
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()

    from moderation import testmodel
    from moderation.settings import ModelSettings, Settings

    tmp = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    settings = Settings(
        environment="development",  # embedded, open API
        model=testmodel.model_settings(
            ModelSettings(pretrained=None, device="cpu", fallback_to_test_model=False)
        ),
        policy_paths=[testmodel.POLICY_PATH],
        cache_dir=tmp / "cache",
        rate_limits={"rate_per_s": 1e9, "burst": 10**9},  # measure the state tier, not a quota
    )
    settings = settings.model_copy(
        update={
            "banks": settings.banks.model_copy(update={"hash_every_image": args.hash_every_image}),
            "queue": settings.queue.model_copy(
                update={
                    "batch_size": args.batch_size,
                    "batch_wait_ms": 20,
                    "concurrency": 2 * args.batch_size,
                    "visibility_timeout_s": 1800,
                }
            ),
        }
    )
    report: dict[str, Any] = {
        "bench": "soak",
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": os.cpu_count(),
        "wave": args.wave,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "side": args.side,
        "hash_every_image": args.hash_every_image,
    }
    report.update(
        soak(
            settings,
            jobs=args.jobs,
            wave=args.wave,
            workers=args.workers,
            side=args.side,
            tmp=tmp,
        )
    )
    text = json.dumps(report, indent=2)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
