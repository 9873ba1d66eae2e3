"""Decode + preprocess throughput per CPU core on ~500 KB photographic JPEGs.

naive:  ``PIL.Image.open(...).convert("RGB")`` + open_clip preprocess (full-size decode, one
        bicubic resize of the full image inside the preprocess).
ours:   ``moderation.adapters.images.decode_image(data, limits, min_side=<model input size>)``
        (all the safety checks, EXIF, mode conversion, JPEG draft mode: DCT-domain downscale
        to the smallest 1/2^k scale whose short side is still >= the model's input) + what
        ``ClipEncoder.prepare`` runs on the CPU (``CropPreprocess``: the same
        resize-shortest-side + center-crop with Pillow, computing only the cropped pixels, to
        uint8; normalisation happens per batch on the device).
ours + PDQ: the same and the PDQ hash of the decoded frame (what the worker does for every image
        by default, ``banks.hash_every_image``).
torchvision: ``torchvision.io.decode_jpeg`` (libjpeg-turbo, full size: it has no DCT-domain
        downscale) + the same resize and crop in torch: the other CPU decoder we could use.

One thread (torch pinned to 1), so the numbers are per core. Prints JSON::

    python bench/decode.py [--n-images 40] [--size-kb 500] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image


def make_jpegs(
    n: int, *, size_kb: int = 500, width: int = 1600, height: int = 1200, seed: int = 0
) -> list[bytes]:
    """Photographic-looking JPEGs (smooth colour fields + texture + sensor-like noise), with the
    noise level tuned so the files come out at about ``size_kb``."""
    rng = np.random.default_rng(seed)

    def one(sigma: float) -> bytes:
        base = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
        detail = Image.fromarray(rng.integers(0, 256, (150, 200, 3), dtype=np.uint8))
        pixels = (
            np.asarray(base.resize((width, height), Image.Resampling.BICUBIC), np.float32) * 0.7
            + np.asarray(detail.resize((width, height), Image.Resampling.BICUBIC), np.float32) * 0.3
            + rng.normal(0.0, sigma, (height, width, 3)).astype(np.float32)
        )
        buffer = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
        return buffer.getvalue()

    sigma, images = 5.0, []
    for _ in range(n):
        data = one(sigma)
        sigma = float(np.clip(sigma * (size_kb * 1024 / len(data)) ** 1.5, 0.5, 40.0))
        images.append(data)
    return images


def _rate(fn: Callable[[bytes], Any], images: list[bytes], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for data in images:
            fn(data)
        best = min(best, time.perf_counter() - started)
    return len(images) / best


def measure_decode(
    n_images: int = 40,
    size_kb: int = 500,
    *,
    architecture: str = "ViT-B-32",
    repeats: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """Images/s on one core of our decode+prepare vs the naive path (see module docstring).

    Returns:
        ``decode_images_per_s_per_core``, ``naive_decode_images_per_s_per_core``, ``ratio``,
        plus the image count, mean file size, and the mean abs difference of the two tensors.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _measure(n_images, size_kb, architecture, repeats, seed)
    finally:
        torch.set_num_threads(threads)


def _measure(
    n_images: int, size_kb: int, architecture: str, repeats: int, seed: int
) -> dict[str, Any]:
    import warnings

    import open_clip
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    from moderation.adapters.clip import standard_geometry
    from moderation.adapters.images import decode_image
    from moderation.adapters.support.preprocess import CropPreprocess, DeviceJpeg
    from moderation.settings import ImageLimits
    from moderation.signals.hash_bank import PDQ_SIDE, hash_frame

    cfg = open_clip.get_model_config(architecture)
    image_size = int(cfg["vision_cfg"]["image_size"]) if cfg else 224
    preprocess = open_clip.image_transform(image_size, is_train=False)
    geometry = standard_geometry(preprocess)
    assert geometry is not None
    _, mean, std = geometry
    crop = CropPreprocess(image_size)  # what ClipEncoder.prepare runs
    limits = ImageLimits()
    images = make_jpegs(n_images, size_kb=size_kb, seed=seed)
    mean_t, std_t = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    device_path = DeviceJpeg(image_size, limits, torch.device("cpu"))

    def naive(data: bytes) -> torch.Tensor:
        return preprocess(Image.open(io.BytesIO(data)).convert("RGB"))  # type: ignore[no-any-return]

    def ours(data: bytes) -> np.ndarray:
        return crop(decode_image(data, limits, min_side=image_size)[0])

    pdq_side = max(image_size, PDQ_SIDE)

    def ours_with_pdq(data: bytes) -> np.ndarray:
        frame = decode_image(data, limits, min_side=pdq_side)[0]
        hash_frame(frame)  # the PDQ hash every image gets (banks.hash_every_image)
        return crop(frame)

    def tv(data: bytes) -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            chw = decode_jpeg(
                torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB
            )
        return device_path._crop(chw)

    def as_model_input(pixels: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(pixels.copy()).permute(2, 0, 1).to(torch.float32)
        return (x / 255.0 - mean_t) / std_t

    naive(images[0]), ours(images[0]), tv(images[0])  # warm-up
    diffs = [float((naive(d) - as_model_input(ours(d))).abs().mean()) for d in images[:5]]
    naive_rate = _rate(naive, images, repeats)
    ours_rate = _rate(ours, images, repeats)
    pdq_rate = _rate(ours_with_pdq, images, repeats)
    tv_rate = _rate(tv, images, repeats)
    return {
        "decode_images_per_s_per_core": round(ours_rate, 1),
        "naive_decode_images_per_s_per_core": round(naive_rate, 1),
        "torchvision_decode_images_per_s_per_core": round(tv_rate, 1),
        "ratio": round(ours_rate / naive_rate, 2),
        # The same plus the PDQ hash of the decoded frame: the worker's whole CPU share per
        # image when every image is hashed (the default).
        "decode_and_pdq_images_per_s_per_core": round(pdq_rate, 1),
        "ratio_with_pdq": round(pdq_rate / naive_rate, 2),
        "n_images": n_images,
        "mean_kb": round(sum(map(len, images)) / len(images) / 1024, 1),
        "image_px": "1600x1200",
        "model_input": image_size,
        "mean_abs_diff_vs_naive": round(float(np.mean(diffs)), 4),
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=40)
    parser.add_argument("--size-kb", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--architecture", default="ViT-B-32")
    args = parser.parse_args()
    result = measure_decode(
        args.n_images, args.size_kb, architecture=args.architecture, repeats=args.repeats
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
