"""Fairness benchmark: tenant B's latency for single jobs, alone and while tenant A pushes a
sustained burst at its full rate limit. Prints one JSON object.

    python bench/fairness.py [--b-jobs 60] [--a-rate 400] [--a-batch 40] [--jobs-per-message 16]

The stack is the production shape on one host: an embedded Valkey, one API process and one
Celery worker process (the bundled test model), two tenants with their own keys. B submits one
job at a time and waits for it (``b_alone``); then A starts pushing batches as fast as its rate
limit (``--a-rate`` jobs/s, bursts of ``--a-batch``) lets it, retrying after each 429, and B
does the same again (``b_under_load``). A job's latency is its result's ``finished_at`` minus
its ``created_at`` (both stamped by the pipeline: the queue wait and the work, not the HTTP
round trip or the client's polling). The goal (issue 17): B's p99 under load within 2x its p99
alone. ``a_backlog_max`` shows that A's backlog really built up meanwhile (jobs not ended).

Run it under the suite lock on a shared machine: ``flock /work/notes/suite.lock python
bench/fairness.py``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

KEY_A = "tenant-a-" + "a" * 40
KEY_B = "tenant-b-" + "b" * 40


def _image(seed: int) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
    image = Image.fromarray(base).resize((320, 240), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def _latency_s(result: Any) -> float:
    assert result.created_at is not None and result.finished_at is not None
    return float((result.finished_at - result.created_at).total_seconds())


def _summary(latencies: list[float]) -> dict[str, float]:
    return {
        "jobs": len(latencies),
        "p50_s": round(_percentile(latencies, 50), 4),
        "p90_s": round(_percentile(latencies, 90), 4),
        "p99_s": round(_percentile(latencies, 99), 4),
        "max_s": round(max(latencies), 4),
    }


class _Pusher(threading.Thread):
    """Tenant A: submits batches as fast as its rate limit lets it, until stopped."""

    def __init__(self, base: str, images: list[bytes], batch: int) -> None:
        super().__init__(name="tenant-a", daemon=True)
        self.base = base
        self.images = images
        self.batch = batch
        self.stop = threading.Event()
        self.accepted = 0
        self.refused = 0

    def run(self) -> None:
        from moderation.client import ModerationClient
        from moderation.exceptions import JobRejected, RateLimited

        with ModerationClient(self.base, api_key=KEY_A, timeout=60) as client:
            n = 0
            while not self.stop.is_set():
                chunk = [self.images[(n + i) % len(self.images)] for i in range(self.batch)]
                ids = [f"a-{n + i}" for i in range(self.batch)]
                try:
                    client.submit_many(chunk, ids=ids, chunk=self.batch)
                except RateLimited as exc:
                    self.refused += 1
                    self.stop.wait(min(exc.retry_after_s, 1.0))
                    continue
                except JobRejected as exc:
                    if exc.status != 429:
                        raise
                    self.refused += 1
                    self.stop.wait(0.05)
                    continue
                n += self.batch
                self.accepted += self.batch


def _b_round(client: Any, images: list[bytes], n: int, tag: str, max_s: float = 1e9) -> list[float]:
    latencies = []
    stop_at = time.monotonic() + max_s
    for i in range(n):
        if time.monotonic() > stop_at:
            break
        job_id = client.submit(images[i % len(images)], id=f"b-{tag}-{i}")
        result = client.wait(job_id, timeout=600, poll_s=0.02)
        latencies.append(_latency_s(result))
    return latencies


def run(args: argparse.Namespace) -> dict[str, Any]:
    from pydantic import SecretStr

    from moderation import testmodel
    from moderation.adapters.embedded_redis import EmbeddedRedis
    from moderation.adapters.redis_jobs import RedisJobStore
    from moderation.adapters.redis_workers import RedisWorkerRegistry
    from moderation.client import ModerationClient
    from moderation.settings import ApiKey, Settings, TenantSettings

    tmp = Path(tempfile.mkdtemp(prefix="bench-fairness-"))
    base_settings = Settings(
        environment="development",
        model=testmodel.model_settings(),
        policy_paths=[testmodel.POLICY_PATH],
        cache_dir=tmp / "cache",
        api_keys=[
            ApiKey(tenant="tenant-a", key=SecretStr(KEY_A)),
            ApiKey(tenant="tenant-b", key=SecretStr(KEY_B)),
        ],
        tenants={
            "tenant-a": TenantSettings(
                rate_per_s=args.a_rate, burst=max(args.a_batch, args.a_preload, 1)
            ),
        },
    )
    q = base_settings.queue.model_copy(
        update={"jobs_per_message": args.jobs_per_message, "batch_size": args.batch_size}
    )
    base_settings = base_settings.model_copy(
        update={
            "queue": q,
            "audit": base_settings.audit.model_copy(
                update={"local_dir": tmp / "audit", "spool_dir": tmp / "spool"}
            ),
            "blobs": base_settings.blobs.model_copy(update={"local_dir": tmp / "blobs"}),
        }
    )
    images = [_image(seed) for seed in range(32)]
    with EmbeddedRedis(data_dir=tmp / "redis") as redis:
        settings = base_settings.model_copy(update={"redis_url": redis.url})
        env = settings.to_env()
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p
        )
        env["MODERATION_LOG_LEVEL"] = "WARNING"
        worker = subprocess.Popen(
            [sys.executable, "-m", "moderation.cli", "worker", "--loglevel", "WARNING"],
            env=env,
            cwd=ROOT,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
        )
        port = _free_port()
        api = subprocess.Popen(
            [sys.executable, "-m", "moderation.cli", "api", "--port", str(port)],
            env=env,
            cwd=ROOT,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
        )
        try:
            registry = RedisWorkerRegistry.from_url(redis.url, settings.queue)
            store = RedisJobStore.from_url(redis.url, settings.queue)
            deadline = time.monotonic() + 600
            while not registry.workers():
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the worker did not start")
                time.sleep(0.2)
            base = f"http://127.0.0.1:{port}"
            with ModerationClient(base, api_key=KEY_B, timeout=60) as b:
                while True:
                    try:
                        b.healthz()
                        break
                    except Exception:
                        if api.poll() is not None or time.monotonic() > deadline:
                            raise SystemExit("the API did not start") from None
                        time.sleep(0.2)
                _b_round(b, images, 5, "warm")
                alone = _b_round(b, images, args.b_jobs, "alone")
                if args.a_preload:
                    # A's burst: this many jobs queued at once (under its burst limit), then
                    # A keeps pushing at its rate limit while B measures.
                    with ModerationClient(base, api_key=KEY_A, timeout=120) as a:
                        ids = [f"a-pre-{i}" for i in range(args.a_preload)]
                        chunk = [images[i % len(images)] for i in range(args.a_preload)]
                        a.submit_many(chunk, ids=ids, chunk=500)
                pusher = _Pusher(base, images, args.a_batch)
                pusher.start()
                backlog_max = 0
                # Let A's backlog build before B's first job.
                settle = time.monotonic() + args.a_head_start_s
                while time.monotonic() < settle:
                    time.sleep(0.2)
                    backlog_max = max(backlog_max, _a_backlog(store))
                watcher_stop = threading.Event()
                peak = [backlog_max]

                def watch() -> None:
                    while not watcher_stop.wait(0.25):
                        peak[0] = max(peak[0], _a_backlog(store))

                watcher = threading.Thread(target=watch, daemon=True)
                watcher.start()
                started = time.monotonic()
                loaded = _b_round(b, images, args.b_jobs, "loaded", args.max_round_s)
                loaded_s = time.monotonic() - started
                watcher_stop.set()
                watcher.join()
                pusher.stop.set()
                pusher.join(timeout=60)
                a_backlog_end = _a_backlog(store)
        finally:
            for proc in (api, worker):
                proc.terminate()
            for proc in (api, worker):
                proc.wait(timeout=60)
    alone_s, loaded_summary = _summary(alone), _summary(loaded)
    return {
        "machine": f"{os.cpu_count()} vCPU, no GPU" if not _has_gpu() else "GPU host",
        "b_alone": alone_s,
        "b_under_load": loaded_summary,
        "p99_ratio": round(loaded_summary["p99_s"] / alone_s["p99_s"], 3),
        "p50_ratio": round(loaded_summary["p50_s"] / alone_s["p50_s"], 3),
        "goal_p99_ratio": 2.0,
        "a_rate_limit_per_s": args.a_rate,
        "a_preload": args.a_preload,
        "a_accepted": pusher.accepted,
        "a_accepted_per_s": round(pusher.accepted / (args.a_head_start_s + loaded_s), 1),
        "a_refused_429": pusher.refused,
        "a_backlog_max": peak[0],
        "a_backlog_at_end": a_backlog_end,
        "jobs_per_message": args.jobs_per_message,
        "batch_size": args.batch_size,
    }


def _a_backlog(store: Any) -> int:
    """Tenant A's jobs that have not ended (-1 on a build without per-tenant backlogs: the
    "before" checkout, where the bench is copied to compare)."""
    if not hasattr(store, "backlog"):
        return -1
    return int(store.backlog(["tenant-a"])["tenant-a"].depth)


def _has_gpu() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--b-jobs", type=int, default=60, help="B's single jobs per round")
    parser.add_argument("--a-rate", type=float, default=400.0, help="A's rate limit (jobs/s)")
    parser.add_argument("--a-batch", type=int, default=40, help="A's jobs per request")
    parser.add_argument("--a-head-start-s", type=float, default=3.0)
    parser.add_argument(
        "--max-round-s", type=float, default=180.0, help="B's loaded round stops after this"
    )
    parser.add_argument(
        "--a-preload", type=int, default=0, help="A's jobs queued at once before B measures"
    )
    parser.add_argument("--jobs-per-message", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    print(json.dumps(run(args), indent=2))


if __name__ == "__main__":
    main()
