"""Bare image-encoder throughput by precision, batch size and tracing. Prints one JSON object.

    python bench/encoder.py [--model ViT-B-32|test] [--device auto] [--batches 32,128,256]
        [--precisions fp32,bf16,fp16] [--traced on,off] [--images 1024]

Random weights (``pretrained=None``): speed does not depend on their values. Inputs are
prepared uint8 crops (what the decode threads hand over), so this is the hand-off (copy into the
reused host buffer, to the device, normalise and cast there) plus the forward pass: the ceiling
the pipeline is compared with in ``bench/pipeline.py``. Two batches are kept in flight, as the
worker's micro-batcher does.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def run(encoder: Any, batch: int, images: int) -> float:
    """Images/s with two batches in flight."""
    import numpy as np

    rng = np.random.default_rng(0)
    size = encoder.image_size
    crops = list(rng.integers(0, 255, (batch, size, size, 3), dtype=np.uint8))
    encoder.start(crops).result()  # warm-up
    encoder.start(crops).result()
    n_batches = max(2, images // batch)
    started = time.perf_counter()
    pending = encoder.start(crops)
    for _ in range(n_batches - 1):
        following = encoder.start(crops)
        pending.result()
        pending = following
    pending.result()
    return n_batches * batch / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--batches", default="32,128,256")
    parser.add_argument("--precisions", default="fp32,bf16,fp16")
    parser.add_argument("--traced", default="on,off")
    parser.add_argument("--images", type=int, default=1024)
    args = parser.parse_args()

    import torch

    from moderation import testmodel
    from moderation.adapters.clip import load_clip
    from moderation.settings import ModelSettings

    results = []
    for precision in args.precisions.split(","):
        if precision != "fp32" and not torch.cuda.is_available():
            continue
        for traced in args.traced.split(","):
            settings = ModelSettings(
                architecture=args.model,
                pretrained=None,
                device=args.device,
                precision=precision,
                fallback_to_test_model=False,
                traced=traced == "on",
            )  # type: ignore[arg-type]
            if args.model == "test":
                settings = testmodel.model_settings(settings)
            encoder = load_clip(
                settings, config_path=testmodel.config_path_for(settings.architecture)
            )
            for batch in (int(b) for b in args.batches.split(",")):
                results.append(
                    {
                        "precision": precision,
                        "traced": encoder.traced,
                        "batch": batch,
                        "images_per_s": round(run(encoder, batch, args.images), 1),
                        "device": str(encoder.device),
                    }
                )
            del encoder
    print(json.dumps({"model": args.model, "results": results}, indent=2))


if __name__ == "__main__":
    main()
