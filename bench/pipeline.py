"""Pipeline benchmark: bare image encoder vs the whole pipeline on the same images, model and
threads; plus decode throughput (from bench/decode.py). Prints one JSON object.

    python bench/pipeline.py [--images 256] [--model ViT-B-32] [--batch-size 32] [--device auto]

The encoder has random weights (``pretrained=None``): speed does not depend on their values.
``pipeline_images_per_s`` is client submit (inline JPEG bytes, batch endpoint) -> API -> Redis
(embedded valkey) -> Celery worker (thread pool + micro-batcher) -> verdict, timed from the first
submit to the last result. On a GPU the worker runs CUDA + bf16 automatically.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _images(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
        image = Image.fromarray(base).resize((640, 480), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def bench_encoder(
    model_settings: Any, images: list[bytes], batch_size: int, limits: Any
) -> dict[str, Any]:
    from moderation.adapters.clip import load_clip
    from moderation.adapters.images import decode_image

    encoder = load_clip(model_settings)
    prepared = [
        encoder.prepare(decode_image(data, limits, min_side=encoder.image_size)[0])
        for data in images
    ]
    encoder.encode_prepared(prepared[:batch_size])  # warm-up
    started = time.perf_counter()
    for i in range(0, len(prepared), batch_size):
        encoder.encode_prepared(prepared[i : i + batch_size])
    elapsed = time.perf_counter() - started
    return {
        "encoder_images_per_s": len(prepared) / elapsed,
        "device": str(encoder.device),
        "precision": encoder.precision,
    }


def bench_pipeline(
    settings: Any, images: list[bytes], tmp: Path, *, workers: int = 1
) -> dict[str, Any]:
    import subprocess

    from moderation.adapters.embedded_redis import EmbeddedRedis
    from moderation.adapters.redis_jobs import RedisJobStore
    from moderation.api import create_app
    from moderation.api.server import serve_in_thread
    from moderation.client import ModerationClient
    from moderation.compose import build_api
    from moderation.metrics import render

    metrics_dir = tmp / "metrics"
    metrics_dir.mkdir()
    with EmbeddedRedis(data_dir=tmp / "redis") as redis:
        settings = settings.model_copy(update={"redis_url": redis.url})
        env = settings.to_env()
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p
        )
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "moderation.cli", "worker", "--loglevel", "WARNING"],
                env=env,
                cwd=ROOT,
                start_new_session=True,
            )
            for _ in range(workers)
        ]
        try:
            store = RedisJobStore.from_url(redis.url, settings.queue)
            deadline = time.monotonic() + 600
            while len(store.workers()) < workers:
                if any(w.poll() is not None for w in procs) or time.monotonic() > deadline:
                    raise SystemExit("worker did not start")
                time.sleep(0.2)
            import socket

            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            api = build_api(settings)
            server = serve_in_thread(create_app(api), port)
            with ModerationClient(f"http://127.0.0.1:{port}", timeout=120) as client:
                warm = settings.queue.batch_size
                client.wait_many(client.submit_many(images[:warm]), timeout=600)
                before = _batch_totals(render(path=str(metrics_dir))[0].decode())
                started = time.perf_counter()
                ids = client.submit_many(images, chunk=100)
                results = client.wait_many(ids, timeout=1800)
                elapsed = time.perf_counter() - started
            after = _batch_totals(render(path=str(metrics_dir))[0].decode())
            server.should_exit = True
            api.close()
        finally:
            for worker in procs:
                worker.terminate()
            for worker in procs:
                worker.wait(timeout=30)
    batches = after[0] - before[0]
    errors = sum(r.error is not None for r in results)
    return {
        "pipeline_images_per_s": len(images) / elapsed,
        "pipeline_errors": errors,
        "batches": batches,
        "mean_batch_size": (after[1] - before[1]) / batches if batches else None,
    }


def _batch_totals(text: str) -> tuple[float, float]:
    values = dict(
        line.rsplit(" ", 1)
        for line in text.splitlines()
        if line.startswith("moderation_batch_size_")
    )
    return (
        float(values.get("moderation_batch_size_count", 0)),
        float(values.get("moderation_batch_size_sum", 0)),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default all)")
    parser.add_argument("--decode-images", type=int, default=40)
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes (scale-out: one per GPU or per few cores)",
    )
    args = parser.parse_args()

    from moderation import testmodel
    from moderation.settings import ModelSettings, Settings

    model = ModelSettings(
        architecture=args.model,
        pretrained=None,
        device=args.device,
        fallback_to_test_model=False,
        threads=args.threads,
    )
    tmp = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    settings = Settings(
        environment="development",  # embedded, open API
        model=model,
        policy_paths=[testmodel.POLICY_PATH],
        cache_dir=tmp / "cache",
        rate_limits={"rate_per_s": 1e9, "burst": 10**9},  # measure the pipeline, not a quota
    )
    settings = settings.model_copy(
        update={
            "queue": settings.queue.model_copy(
                update={
                    "batch_size": args.batch_size,
                    "batch_wait_ms": 20,
                    "concurrency": 2 * args.batch_size,
                    "visibility_timeout_s": 1800,
                }
            )
        }
    )
    images = _images(args.images)
    report: dict[str, Any] = {
        "images": args.images,
        "model": args.model,
        "batch_size": args.batch_size,
        "threads": args.threads or os.cpu_count(),
        "mean_jpeg_kb": sum(map(len, images)) / len(images) / 1024,
    }
    report.update(bench_encoder(model, images, args.batch_size, settings.images))
    report["workers"] = args.workers
    report.update(bench_pipeline(settings, images, tmp, workers=args.workers))
    report["pipeline_vs_encoder"] = report["pipeline_images_per_s"] / report["encoder_images_per_s"]
    try:
        from bench.decode import measure_decode

        decode = measure_decode(args.decode_images, architecture=args.model)
        report["decode_images_per_s_per_core"] = decode["decode_images_per_s_per_core"]
        report["naive_decode_images_per_s_per_core"] = decode["naive_decode_images_per_s_per_core"]
    except ImportError as exc:
        report["decode_error"] = f"bench/decode.py unavailable: {exc}"
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
