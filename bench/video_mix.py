"""The photo pipeline with 10% videos in the traffic: do videos slow the photos down?

Three runs of the whole pipeline (:func:`bench.pipeline.bench_pipeline`: client -> API ->
Redis -> Celery worker process, the test model) in each round, interleaved so that machine
noise hits all of them: **photos** only (N JPEGs), **mixed** (the same N JPEGs with M short
H.264 clips spread among them, M = N x share / (1 - share)), and **videos** only (the M clips).
For the photo share of the mixed run:

* ``photo_images_per_s``: N / the time until the last photo's result was written;
* ``photo_cpu_ms_per_image``: per process, (CPU of the mixed run - CPU of the videos-only run)
  / N: what the photos cost once the videos' own cost is taken out.

Both are compared with the photos-only run (``*_vs_photos_only``, goal: within 10%). Medians over
``--rounds``. Run under the suite lock; prints JSON::

    flock /work/notes/suite.lock .venv/bin/python bench/video_mix.py [--images 400] [--rounds 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.pipeline import _images, bench_pipeline  # noqa: E402
from bench.video import make_clip  # noqa: E402


def _settings(tmp: Path, batch_size: int) -> Any:
    from moderation import testmodel
    from moderation.settings import Settings

    settings = Settings(
        environment="development",
        model=testmodel.model_settings(),
        policy_paths=[testmodel.POLICY_PATH],
        cache_dir=tmp / "cache",
        rate_limits={"rate_per_s": 1e9, "burst": 10**9},
    )
    return settings.model_copy(
        update={
            "queue": settings.queue.model_copy(
                update={
                    "batch_size": batch_size,
                    "batch_wait_ms": 20,
                    "concurrency": 2 * batch_size,
                    "visibility_timeout_s": 1800,
                }
            )
        }
    )


def _run(items: list[bytes], batch_size: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-video-mix-"))
    return bench_pipeline(_settings(tmp, batch_size), items, tmp, finish_times=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--share", type=float, default=0.10, help="share of videos in the mix")
    parser.add_argument("--clip-seconds", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    photos = _images(args.images)
    n_videos = max(1, round(args.images * args.share / (1 - args.share)))
    clips = [make_clip(640, 360, args.clip_seconds, 30, 60) for _ in range(1)] * n_videos
    step = max(1, len(photos) // n_videos)
    mixed: list[bytes] = []
    is_photo: list[bool] = []
    for k, photo in enumerate(photos):
        mixed.append(photo)
        is_photo.append(True)
        if k % step == step - 1 and len(mixed) - sum(is_photo) < n_videos:
            mixed.append(clips[0])
            is_photo.append(False)
    while len(mixed) - sum(is_photo) < n_videos:
        mixed.append(clips[0])
        is_photo.append(False)
    rounds: list[dict[str, Any]] = []
    for _ in range(args.rounds):
        only = _run(photos, args.batch_size)
        mix = _run(mixed, args.batch_size)
        videos = _run(clips, args.batch_size)
        photo_done = max(t for t, p in zip(mix["finished_s"], is_photo, strict=True) if p)
        only_rate = len(photos) / max(t for t in only["finished_s"] if t is not None)
        cpu_only = only["cpu_ms_per_image"]
        cpu_photo = {
            name: round(
                (
                    mix["cpu_ms_per_image"][name] * len(mixed)
                    - videos["cpu_ms_per_image"][name] * len(clips)
                )
                / len(photos),
                3,
            )
            for name in ("api", "worker-0", "redis")
        }
        row = {
            "photos_only_images_per_s": round(only_rate, 1),
            "photo_images_per_s": round(len(photos) / photo_done, 1),
            "photos_only_cpu_ms_per_image": {k: cpu_only[k] for k in cpu_photo},
            "photo_cpu_ms_per_image": cpu_photo,
            "videos_only_cpu_ms_per_video": {
                k: round(videos["cpu_ms_per_image"][k], 1) for k in cpu_photo
            },
            "errors": {"photos_only": only["pipeline_errors"], "mixed": mix["pipeline_errors"]},
        }
        row["photo_images_per_s_vs_photos_only"] = round(
            row["photo_images_per_s"] / row["photos_only_images_per_s"], 3
        )
        row["photo_worker_cpu_vs_photos_only"] = round(
            cpu_photo["worker-0"] / cpu_only["worker-0"], 3
        )
        print(json.dumps(row), flush=True)
        rounds.append(row)
    report = {
        "benchmark": "video_mix",
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "note": "shared, busy development machine; figures are medians of interleaved rounds",
        },
        "photos": len(photos),
        "videos": len(clips),
        "clip": f"640x360 H.264, {args.clip_seconds} s at 30 fps, keyframe every 2 s",
        "rounds": rounds,
        "median": {
            key: statistics.median(r[key] for r in rounds)
            for key in (
                "photos_only_images_per_s",
                "photo_images_per_s",
                "photo_images_per_s_vs_photos_only",
                "photo_worker_cpu_vs_photos_only",
            )
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
