"""Video clips and animations of the test world, made on the fly with PyAV's bundled encoders
(libx264 and friends): for tests, benchmarks and the demo. Nothing here is committed as a binary.

A clip is a list of *shots*: (seconds, image). Each shot's image is shown for its seconds at the
clip's frame rate; a little per-frame noise keeps the encoder honest (P-frames carry data).
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import av
import numpy as np
from av.video.stream import VideoStream
from PIL import Image

from moderation.testmodel.world import sample_images

__all__ = [
    "VPDQ_FIXTURE_CLIPS",
    "Shot",
    "allow_image",
    "animation",
    "block_image",
    "clip",
    "vpdq_fixture_clip",
]


@dataclass(frozen=True, slots=True)
class Shot:
    seconds: float
    image: Image.Image


def block_image(seed: int = 0) -> Image.Image:
    """A clear red star (the test-world policy blocks it)."""
    return sample_images("block", 1, seed)[0][0]


def allow_image(seed: int = 0) -> Image.Image:
    """A harmless look-alike (the test-world policy allows it)."""
    return sample_images("allow", 1, seed)[0][0]


def background_image(seed: int = 3) -> Image.Image:
    """An empty background (allowed), unlike the star's picture: a scene cut between them."""
    return sample_images("allow", 8, seed)[7][0]


def clip(
    shots: Sequence[Shot],
    *,
    fps: int = 10,
    size: tuple[int, int] = (64, 64),
    codec: str = "libx264",
    container: str = "mp4",
    gop: int | None = None,
    noise: float = 2.0,
    seed: int = 0,
    faststart: bool = False,
    threads: int | None = None,
) -> bytes:
    """Encode ``shots`` as one video file (``container``: mp4, mov, matroska, webm).

    ``gop``: frames between keyframes (None: the encoder's default, with keyframes at cuts).
    ``faststart``: MP4/MOV with the index before the data (as streaming sites serve them).
    ``threads``: the encoder's threads (1: the same bytes on every run and machine load).
    """
    if faststart:  # the muxer rewrites the file to move its index: it needs a real file
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"clip.{container}"
            _encode(
                str(path), shots, fps, size, codec, container, gop, noise, seed, faststart, threads
            )
            return path.read_bytes()
    buffer = io.BytesIO()
    _encode(buffer, shots, fps, size, codec, container, gop, noise, seed, faststart, threads)
    return buffer.getvalue()


def _encode(
    target: str | io.BytesIO,
    shots: Sequence[Shot],
    fps: int,
    size: tuple[int, int],
    codec: str,
    container: str,
    gop: int | None,
    noise: float,
    seed: int,
    faststart: bool,
    threads: int | None = None,
) -> None:
    rng = np.random.default_rng(seed)
    muxer = {"movflags": "+faststart"} if faststart else {}
    with av.open(target, "w", format=container, options=muxer) as output:
        stream = cast("VideoStream", output.add_stream(codec, rate=fps))
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        options: dict[str, str] = {"crf": "20"} if codec in {"libx264", "libx265"} else {}
        if gop is not None:
            stream.codec_context.gop_size = gop
            if codec == "libx264":
                options["x264-params"] = f"keyint={gop}:min-keyint={gop}:scenecut=0"
        if threads is not None:
            options["threads"] = str(threads)
        stream.options = dict(options)
        for shot in shots:
            base = np.asarray(shot.image.convert("RGB").resize(size), dtype=np.float32)
            for _ in range(round(shot.seconds * fps)):
                noisy = base + rng.normal(0.0, noise, base.shape) if noise else base
                pixels = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
                frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
                for packet in stream.encode(frame):
                    output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)


def animation(shots: Sequence[Shot], *, fmt: str = "GIF", frame_ms: int = 100) -> bytes:
    """An animated GIF, PNG (APNG) or WebP of ``shots``, one frame per ``frame_ms``."""
    frames: list[Image.Image] = []
    for shot in shots:
        frames += [shot.image.convert("RGB")] * max(1, round(shot.seconds * 1000 / frame_ms))
    buffer = io.BytesIO()
    options: dict[str, object] = {"save_all": True, "append_images": frames[1:]}
    options["duration"] = frame_ms
    options["loop"] = 0
    if fmt == "WEBP":
        options["lossless"] = True
    frames[0].save(buffer, format=fmt, **options)
    return buffer.getvalue()


#: Generated clips whose reference vPDQ hashes (Meta's ``vpdq``, every frame) ``tests/data/vpdq/``
#: keeps: four test-world scenes of 1.5 s each (``bench/vpdq_agreement.py --write-fixtures``).
VPDQ_FIXTURE_CLIPS: dict[str, dict[str, Any]] = {
    "scenes-256": {"size": (256, 256), "seed": 1, "threads": 1},
    "scenes-256-15fps": {"size": (256, 256), "fps": 15, "noise": 4.0, "seed": 3, "threads": 1},
}


def vpdq_fixture_clip(name: str) -> bytes:
    """One of :data:`VPDQ_FIXTURE_CLIPS`, encoded (deterministic for a given PyAV wheel)."""
    from moderation.testmodel.robustness import world_images

    scenes = world_images(4, seed=11, size=256)
    return clip([Shot(1.5, s) for s in scenes], **VPDQ_FIXTURE_CLIPS[name])
