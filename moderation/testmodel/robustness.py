"""How robust PDQ bank matching is on test-world images: the match rate of a banked image after
each usual transform, and how far apart different images are. Used by the tests and by
``bench/banks.py``.

Each image is drawn by :func:`moderation.testmodel.render` (64 px) and enlarged to ``size``
pixels (bicubic), the size of an ordinary upload; it is hashed exactly as a worker hashes it
(safe decode, then :func:`moderation.signals.hash_bank.hash_frame`). Images whose hash quality is
below PDQ's threshold (flat, featureless: they never match) are left out and counted.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from itertools import combinations

import numpy as np
from PIL import Image, ImageOps

from moderation.adapters.images import SafeDecoder
from moderation.pipeline.banks import image_feature
from moderation.settings import ImageLimits
from moderation.signals.hash_bank import MATCH_THRESHOLD, QUALITY_THRESHOLD, PdqFeature
from moderation.testmodel.world import COLOURS, SHAPES, render

__all__ = ["TRANSFORMS", "distance", "pdq_robustness", "world_images"]


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _crop(image: Image.Image, fraction: float) -> Image.Image:
    dx, dy = round(image.width * fraction), round(image.height * fraction)
    return image.crop((dx, dy, image.width - dx, image.height - dy))


#: name -> (what it does, the transformed image's bytes)
TRANSFORMS: dict[str, tuple[str, Callable[[Image.Image], bytes]]] = {
    "jpeg_q50": ("re-encoded as JPEG at quality 50", lambda im: _jpeg(im, 50)),
    "half_size": (
        "resized to half width and height (bicubic)",
        lambda im: _png(im.resize((im.width // 2, im.height // 2), Image.Resampling.BICUBIC)),
    ),
    "crop_1pct": ("1% cut off each edge", lambda im: _png(_crop(im, 0.01))),
    "crop_2pct": ("2% cut off each edge", lambda im: _png(_crop(im, 0.02))),
    "border_2px": (
        "a 2-pixel white border added",
        lambda im: _png(ImageOps.expand(im, 2, fill=(255, 255, 255))),
    ),
    "greyscale": ("converted to greyscale", lambda im: _png(ImageOps.grayscale(im))),
}


def world_images(n: int, *, seed: int = 0, size: int = 512) -> list[Image.Image]:
    """``n`` different test-world images (every colour and shape, varied backgrounds)."""
    out = []
    for i in range(n):
        colour = list(COLOURS)[i % len(COLOURS)]
        shape = SHAPES[(i // len(COLOURS)) % len(SHAPES)]
        image = render(colour, shape, seed=seed * 100_003 + i)
        out.append(image.resize((size, size), Image.Resampling.BICUBIC) if size != 64 else image)
    return out


def distance(a: PdqFeature, b: PdqFeature) -> int:
    """Hamming distance between two images' hashes: the nearest over their variants (frame,
    frame without border), as matching does."""
    best = 256
    for x, _, _ in a.queries():
        for y, _, _ in b.queries():
            diff = np.bitwise_xor(np.frombuffer(x, np.uint8), np.frombuffer(y, np.uint8))
            best = min(best, int(np.unpackbits(diff).sum()))
    return best


def pdq_robustness(
    n: int = 48, *, seed: int = 0, size: int = 512, max_distance: int = MATCH_THRESHOLD
) -> dict[str, object]:
    """Match rates per transform (a banked original against its transformed copy), and the
    false matches between different images.

    Returns:
        ``{"images", "low_quality", "size", "max_distance", "transforms": {name: {"match_rate",
        "median_distance", "max_distance", "what"}}, "different_images": {"pairs",
        "false_matches", "min_distance"}}``
    """
    decoder = SafeDecoder(ImageLimits())
    banked: list[tuple[Image.Image, PdqFeature]] = []
    low = 0
    for image in world_images(n, seed=seed, size=size):
        feature = image_feature(decoder, _png(image))
        if feature.quality < QUALITY_THRESHOLD:
            low += 1
            continue
        banked.append((image, feature))
    transforms: dict[str, dict[str, object]] = {}
    for name, (what, apply) in TRANSFORMS.items():
        distances = []
        for image, original in banked:
            copy = image_feature(decoder, apply(image))
            # The query side: only hashes of usable quality are searched.
            usable = copy.quality >= QUALITY_THRESHOLD or (
                copy.trimmed is not None and copy.trimmed[1] >= QUALITY_THRESHOLD
            )
            distances.append(distance(copy, original) if usable else 256)
        d = np.array(distances)
        transforms[name] = {
            "what": what,
            "match_rate": round(float((d <= max_distance).mean()), 4) if len(d) else None,
            "median_distance": float(np.median(d)) if len(d) else None,
            "max_distance": int(d.max()) if len(d) else None,
        }
    cross = [distance(a, b) for (_, a), (_, b) in combinations(banked, 2)]
    return {
        "images": len(banked),
        "low_quality": low,
        "size": size,
        "max_distance": max_distance,
        "transforms": transforms,
        "different_images": {
            "pairs": len(cross),
            "false_matches": sum(d <= max_distance for d in cross),
            "min_distance": min(cross) if cross else None,
        },
    }
