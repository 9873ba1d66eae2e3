"""The photo pipeline with 10% videos in the traffic: do videos slow the photos down?

Runs of the whole pipeline (:func:`bench.pipeline.bench_pipeline`: client -> API -> Redis ->
Celery worker processes, the test model) in each round, interleaved so that machine noise hits
all of them: **photos** only (N JPEGs, one worker), then per worker set-up (``--modes``) a
**mixed** run (the same N JPEGs with M short H.264 clips spread among them,
M = N x share / (1 - share)) and a **videos** only run (the M clips). Set-ups: ``shared``
(videos on the photo lanes, one worker: before the video lanes), ``lanes`` (video lanes, one
worker consuming both, photo lanes first) and ``video-worker`` (video lanes, a photo worker and
a video worker: the deployed shape). For the photo share of each mixed run:

* ``photo_images_per_s``: N / the time until the last photo's result was written;
* ``photo_worker_cpu_ms_per_image``: (CPU of the workers in the mixed run - in the videos-only
  run) / N: what the photos cost once the videos' own cost is taken out.

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


def _settings(tmp: Path, batch_size: int, *, lanes: bool) -> Any:
    from moderation import testmodel
    from moderation.settings import Settings

    settings = Settings(
        environment="development",
        model=testmodel.model_settings(),
        policy_paths=[testmodel.POLICY_PATH],
        cache_dir=tmp / "cache",
        rate_limits={"rate_per_s": 1e9, "burst": 10**9},
    )
    update: dict[str, Any] = {
        "batch_size": batch_size,
        "batch_wait_ms": 20,
        "concurrency": 2 * batch_size,
        "visibility_timeout_s": 1800,
    }
    if not lanes:  # before: videos share the photo lanes
        update["video_queue_name"] = None
    return settings.model_copy(update={"queue": settings.queue.model_copy(update=update)})


#: How the workers are set up in each mode: ``shared``, videos on the photo lanes (before);
#: ``lanes``, one worker consuming both kinds of lanes (photo lanes first); ``video-worker``,
#: a photo worker and a video worker (the deployed shape: deploy/k8s).
MODES: dict[str, tuple[bool, list[dict[str, str]]]] = {
    "shared": (False, [{}]),
    "lanes": (True, [{}]),
    "video-worker": (
        True,
        [
            {"MODERATION_QUEUE__WORKER_LANES": "photos"},
            {"MODERATION_QUEUE__WORKER_LANES": "videos"},
        ],
    ),
}


def _run(items: list[bytes], batch_size: int, mode: str) -> dict[str, Any]:
    lanes, worker_env = MODES[mode]
    tmp = Path(tempfile.mkdtemp(prefix="bench-video-mix-"))
    return bench_pipeline(
        _settings(tmp, batch_size, lanes=lanes),
        items,
        tmp,
        finish_times=True,
        workers=len(worker_env),
        worker_env=worker_env,
    )


def _worker_cpu(run: dict[str, Any]) -> float:
    """CPU ms per item of every worker process together."""
    return float(sum(v for k, v in run["cpu_ms_per_image"].items() if k.startswith("worker-")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--share", type=float, default=0.10, help="share of videos in the mix")
    parser.add_argument("--clip-seconds", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}"
    )
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
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
        only = _run(photos, args.batch_size, "shared")
        only_rate = len(photos) / max(t for t in only["finished_s"] if t is not None)
        cpu_only = _worker_cpu(only)
        row: dict[str, Any] = {
            "photos_only_images_per_s": round(only_rate, 1),
            "photos_only_worker_cpu_ms_per_image": round(cpu_only, 3),
        }
        for mode in modes:
            mix = _run(mixed, args.batch_size, mode)
            videos = _run(clips, args.batch_size, mode)
            photo_done = max(t for t, p in zip(mix["finished_s"], is_photo, strict=True) if p)
            video_done = max(t for t, p in zip(mix["finished_s"], is_photo, strict=True) if not p)
            cpu_photo = (_worker_cpu(mix) * len(mixed) - _worker_cpu(videos) * len(clips)) / len(
                photos
            )
            rate = len(photos) / photo_done
            row[mode] = {
                "photo_images_per_s": round(rate, 1),
                "photo_images_per_s_vs_photos_only": round(rate / only_rate, 3),
                "last_video_done_s": round(video_done, 2),
                "photo_worker_cpu_ms_per_image": round(cpu_photo, 3),
                "photo_worker_cpu_vs_photos_only": round(cpu_photo / cpu_only, 3),
                "videos_only_worker_cpu_ms_per_video": round(_worker_cpu(videos), 1),
                # The photo worker's own CPU per photo where it takes photos only (video-worker)
                "worker_0_cpu_ms_per_photo": round(
                    mix["cpu_ms_per_image"]["worker-0"] * len(mixed) / len(photos), 3
                ),
                "errors": mix["pipeline_errors"],
            }
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
            "photos_only_images_per_s": statistics.median(
                r["photos_only_images_per_s"] for r in rounds
            ),
            **{
                mode: {
                    key: statistics.median(r[mode][key] for r in rounds)
                    for key in (
                        "photo_images_per_s",
                        "photo_images_per_s_vs_photos_only",
                        "photo_worker_cpu_vs_photos_only",
                        "last_video_done_s",
                    )
                }
                for mode in modes
            },
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
