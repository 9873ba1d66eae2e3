"""Sample inputs of the test world for the demo, tests and benchmarks: images per band, encoded
as files, plus hostile inputs (a truncated JPEG, a decompression bomb, a text file)."""

from __future__ import annotations

import io
import struct
import zlib

from moderation.testmodel.world import sample_images

__all__ = ["bomb_png", "demo_inputs", "encoded"]


def encoded(image: object, fmt: str = "PNG", **options: object) -> bytes:
    """A PIL image as file bytes (``fmt``: PNG, JPEG, ...)."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)  # type: ignore[attr-defined]
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def bomb_png(side: int = 60_000) -> bytes:
    """A tiny PNG whose header claims ``side`` x ``side`` RGB pixels (a decompression bomb)."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    body = zlib.compress(b"\0" * 4096, 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", body)
        + _png_chunk(b"IEND", b"")
    )


def demo_inputs(n_per_band: int = 2, seed: int = 7) -> list[tuple[str, str, bytes]]:
    """(label, expected decision, bytes): test-world samples per band plus hostile inputs."""
    items: list[tuple[str, str, bytes]] = []
    for band in ("block", "review", "allow"):
        for image, label in sample_images(band, n_per_band, seed):
            items.append((label, band, encoded(image)))
    jpeg = encoded(sample_images("block", 1, seed + 1)[0][0], "JPEG", quality=90)
    items.append(("truncated JPEG", "error", jpeg[: len(jpeg) // 3]))
    items.append(("decompression bomb (60000x60000 PNG)", "error", bomb_png()))
    items.append(("not an image (text)", "error", b"hello, this is not an image\n" * 10))
    return items
