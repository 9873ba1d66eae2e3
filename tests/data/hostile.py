"""Hostile and awkward image files, generated in memory.

Each function returns the bytes of one file. Nothing here touches disk or the network.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def photo(width: int = 320, height: int = 240, seed: int = 0) -> Image.Image:
    """A textured RGB image (smooth colour field + noise), so codecs have real work to do."""
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    pixels = np.asarray(base.resize((width, height), Image.Resampling.BICUBIC), np.float32)
    pixels += rng.normal(0, 6, pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    )


def png_claiming(width: int, height: int, *, bit_depth: int = 8, color_type: int = 2) -> bytes:
    """A tiny, valid-looking PNG whose header claims ``width`` x ``height`` (a decompression
    bomb: the IDAT holds a few rows of zeros; a naive decoder would allocate the whole canvas)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    row = b"\0" * (1 + min(width, 4096) * 3)
    idat = zlib.compress(row * 4, 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def gif_claiming(width: int, height: int) -> bytes:
    """A GIF whose logical screen and only frame claim ``width`` x ``height``."""
    header = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00"
    return header + frame + b"\x3b"


def animated_gif(n_frames: int, size: int = 16) -> bytes:
    """``n_frames`` solid frames; frame ``i`` has red channel ``round(i * 255 / (n - 1))``."""
    frames = [
        Image.new("RGB", (size, size), (round(i * 255 / max(1, n_frames - 1)), 40, 200))
        for i in range(n_frames)
    ]
    return encode(
        frames[0],
        "GIF",
        save_all=True,
        append_images=frames[1:],
        duration=20,
        loop=0,
        optimize=False,
        disposal=1,
    )


def exif_rotated_jpeg(orientation: int = 6) -> bytes:
    """40x20 stored pixels: left half red, right half blue, with an EXIF Orientation tag."""
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 20, 20))
    exif = image.getexif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", quality=95, exif=exif.tobytes())


def png16_gradient(width: int = 256, height: int = 4) -> bytes:
    """16-bit greyscale PNG spanning 0..65535 left to right."""
    row = np.linspace(0, 65535, width).astype(np.uint16)
    return encode(Image.fromarray(np.tile(row, (height, 1))), "PNG")


def cmyk_jpeg(cmyk: tuple[int, int, int, int] = (255, 0, 0, 0)) -> bytes:
    return encode(Image.new("CMYK", (16, 16), cmyk), "JPEG", quality=95)


def palette_with_transparency() -> bytes:
    """A P-mode PNG: left half palette index 1 (fully transparent), right half index 2 (red)."""
    image = Image.new("P", (20, 10), 2)
    image.putpalette([0, 0, 0, 0, 255, 0, 255, 0, 0] + [0] * (256 * 3 - 9))
    image.paste(1, (0, 0, 10, 10))
    return encode(image, "PNG", transparency=1)


def two_page_tiff(small: int = 10, large: int = 300) -> bytes:
    """A TIFF whose first page is tiny and whose second page is large."""
    first = Image.new("RGB", (small, small), (10, 20, 30))
    return encode(
        first, "TIFF", save_all=True, append_images=[Image.new("RGB", (large, large), (1, 2, 3))]
    )


NON_IMAGES: dict[str, bytes] = {
    "text": b"hello, this is definitely not an image\n" * 5,
    "html": b"<!DOCTYPE html><html><body><img src=x onerror=alert(1)></body></html>",
    "svg": b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
    b'<rect width="10" height="10"/></svg>',
    "pdf": b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n",
    "json": b'{"image": "s3://bucket/key.jpg"}',
    "elf": b"\x7fELF\x02\x01\x01" + b"\0" * 60,
}
