"""Bare image-encoder throughput by precision and batch size. Prints one JSON object.

    python bench/encoder.py [--model ViT-B-32] [--device auto] [--batches 32,128,256]
        [--precisions fp32,bf16,fp16] [--images 1024]

Random weights (``pretrained=None``): speed does not depend on their values. Inputs are
already-preprocessed tensors, so this is the forward pass alone (the ceiling the pipeline is
compared with in ``bench/pipeline.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--batches", default="32,128,256")
    parser.add_argument("--precisions", default="fp32,bf16,fp16")
    parser.add_argument("--images", type=int, default=1024)
    args = parser.parse_args()

    import torch

    from moderation.adapters.clip import load_clip
    from moderation.settings import ModelSettings

    results = []
    for precision in args.precisions.split(","):
        settings = ModelSettings(
            architecture=args.model,
            pretrained=None,
            device=args.device,
            precision=precision,
            fallback_to_test_model=False,
        )  # type: ignore[arg-type]
        if precision != "fp32" and not torch.cuda.is_available():
            continue
        encoder = load_clip(settings)
        x = torch.randn(3, encoder.image_size, encoder.image_size)
        for batch in (int(b) for b in args.batches.split(",")):
            prepared = [x] * batch
            encoder.encode_prepared(prepared)  # warm-up
            if encoder.device.type == "cuda":
                torch.cuda.synchronize()
            n_batches = max(1, args.images // batch)
            started = time.perf_counter()
            for _ in range(n_batches):
                encoder.encode_prepared(prepared)
            elapsed = time.perf_counter() - started
            results.append(
                {
                    "precision": precision,
                    "batch": batch,
                    "images_per_s": round(n_batches * batch / elapsed, 1),
                    "device": str(encoder.device),
                }
            )
        del encoder
    print(json.dumps({"model": args.model, "results": results}, indent=2))


if __name__ == "__main__":
    main()
