"""Safe image decoding: hostile bytes in, RGB ``PIL.Image`` frames out, or a clear ImageError.

Defences, in order: byte cap; format allowlist (sniffed from content, never from a file name);
pixel-count and side caps read from the header *before* any pixel is decoded (decompression
bombs); JPEG draft mode (DCT-domain downscale, the cheap part of decoding huge photos); EXIF
orientation applied; palette / alpha / CMYK / 16-bit / greyscale / bilevel converted to RGB
(alpha composited on white, 16-bit scaled, not clipped); animated images: ``max_frames`` frames
evenly spaced (1 = the first frame only).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from moderation.exceptions import ImageDecodeError, ImageTooLargeError, UnsupportedImageFormat
from moderation.settings import ImageLimits

__all__ = ["decode_image", "to_rgb"]

ImageFile.LOAD_TRUNCATED_IMAGES = False


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB correctly."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}:
        array = np.asarray(image, dtype=np.float64)
        if mode.startswith("I;16"):
            array = array / 257.0
        else:
            low, high = float(array.min()), float(array.max())
            array = (array - low) * (255.0 / (high - low)) if high > low else array * 0.0
        return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "P":
        image = image.convert("RGBA") if "transparency" in image.info else image.convert("RGB")
        mode = image.mode
    if mode in {"RGBA", "LA", "PA", "RGBa", "La"}:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "CMYK":
        return image.convert("RGB")
    return image.convert("RGB")  # L, 1, YCbCr, LAB, HSV


def _frame_indices(n_frames: int, wanted: int) -> list[int]:
    if wanted <= 1 or n_frames <= 1:
        return [0]
    wanted = min(wanted, n_frames)
    return sorted({round(i * (n_frames - 1) / (wanted - 1)) for i in range(wanted)})


def _frames(image: Image.Image, limits: ImageLimits) -> Iterator[Image.Image]:
    n_frames = int(getattr(image, "n_frames", 1) or 1)
    for index in _frame_indices(n_frames, limits.max_frames):
        if index:
            image.seek(index)
        yield image


def _downscale(image: Image.Image, target: int) -> Image.Image:
    """Shrink so the short side is about ``target`` (never below): the model crops anyway."""
    short = min(image.size)
    if target <= 0 or short <= target * 1.25:
        return image
    scale = target / short
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)


def decode_image(data: bytes, limits: ImageLimits) -> list[Image.Image]:
    """Decode untrusted bytes into RGB frames (one unless ``limits.max_frames`` > 1).

    Raises:
        ImageTooLargeError: too many bytes, pixels, or too long a side (decompression bomb).
        UnsupportedImageFormat: the content is an image format outside ``limits.formats``.
        ImageDecodeError: empty, truncated, corrupt, or not an image at all.
    """
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    if len(data) > limits.max_bytes:
        raise ImageTooLargeError(f"{len(data)} bytes exceeds the {limits.max_bytes}-byte limit")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=None)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"decompression bomb refused: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError("not a recognised image (unknown or corrupt header)") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageDecodeError(f"corrupt image header: {exc}") from exc
    try:
        fmt = (image.format or "").upper()
        if fmt not in {f.upper() for f in limits.formats}:
            raise UnsupportedImageFormat(
                f"format {fmt or 'unknown'} is not allowed (allowed: {', '.join(limits.formats)})"
            )
        width, height = image.size
        if width <= 0 or height <= 0:
            raise ImageDecodeError(f"invalid dimensions {width}x{height}")
        if max(width, height) > limits.max_side or width * height > limits.max_pixels:
            raise ImageTooLargeError(
                f"{width}x{height} = {width * height} pixels exceeds the limit "
                f"({limits.max_pixels} pixels, {limits.max_side} px a side): refusing to decode"
            )
        if fmt == "JPEG" and limits.draft_size > 0:
            image.draft("RGB", (limits.draft_size, limits.draft_size))
        frames: list[Image.Image] = []
        for frame in _frames(image, limits):
            frame.load()
            oriented = ImageOps.exif_transpose(frame) if frame is image else frame
            frames.append(_downscale(to_rgb(oriented.copy()), limits.draft_size))
        return frames
    except (UnsupportedImageFormat, ImageTooLargeError, ImageDecodeError):
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"decompression bomb refused: {exc}") from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        raise ImageDecodeError(f"corrupt or truncated image: {exc}") from exc
    except MemoryError as exc:
        raise ImageTooLargeError("image needs too much memory to decode") from exc
    finally:
        image.close()
