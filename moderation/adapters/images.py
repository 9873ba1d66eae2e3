"""Safe image decoding: hostile bytes in, RGB ``PIL.Image`` frames out, or a clear ImageError.

Defences, in order:

1. **Byte cap** (``limits.max_bytes``); empty input refused.
2. **Format allowlist** (``limits.formats``), sniffed from the content, never from a name or a
   Content-Type: Pillow is only allowed to try the allowlisted parsers, so PDF/EPS/PSD/SVG and
   friends never reach a parser. A refused file gets a message saying what it looks like.
   HEIC/HEIF (iPhone photos) decode through the pillow-heif plugin (format ``HEIF``; ``HEIC`` in
   the allowlist means the same), registered on first use without thumbnails, depth or
   auxiliary images and with libheif's own security limits on; AVIF through Pillow's built-in
   plugin. Both go through every limit below like any other format.
3. **Pixel-count and side caps** read from the header *before* any pixel is decoded
   (decompression bombs: a 100 KB PNG that claims 50000×50000), checked again for every frame
   or page that is decoded (a TIFF's second page may be larger than its first). For JPEGs the
   pixel cap applies to the draft-mode size actually decoded (see 4), so a 60 Mpx camera photo
   is fine on the scoring path.
4. **Fast downscale while decoding**: JPEG/MPO draft mode (libjpeg's DCT-domain scaling, 1/2,
   1/4 or 1/8: the IDCT and colour conversion run on the small image) to the smallest scale
   whose short side is still ≥ the target; other formats get an integer box reduction
   (``Image.reduce``). Either way the short side ends in ``[target, 2·target)`` and the model's
   own bicubic resize + crop (``ClipEncoder.prepare``) does the last, < 2× step. Pass the
   model's input size as the target (``min_side=encoder.image_size``) on the scoring path.
5. **EXIF orientation** applied (``ImageOps.exif_transpose``), so a phone photo is upright.
6. **Mode conversion** to 8-bit RGB (:func:`to_rgb`): palette (with or without transparency),
   alpha (composited on white: transparent pixels must not hide content as black), CMYK (Adobe
   inverted CMYK handled by Pillow), 16-bit and 32-bit greyscale (scaled, not clipped),
   greyscale, bilevel.
7. **Animated images** (GIF, APNG, animated WebP) are sampled like video by default
   (``video.sample_animations``; :mod:`moderation.core.sampling`): one frame per
   ``1 / video.sample_fps`` seconds of the animation's own timing plus scene cuts, so a harmless
   first frame cannot hide the rest. Without video settings (or with ``sample_animations``
   off), ``limits.max_frames == 1`` decodes the first frame only and ``max_frames = k > 1``
   samples ``k`` frames evenly spaced (first and last included). Multi-page TIFFs always use
   ``max_frames``. Either way at most the first ``_MAX_SCANNED_FRAMES`` frames are looked at;
   the caller scores each sample and keeps the most severe verdict.
8. **Video** (MP4/MOV, Matroska/WebM, sniffed here like every other format) goes to the video
   decoder given to :class:`SafeDecoder` (:mod:`moderation.adapters.video`, wired by the
   composition root): its samples are the frames. Without one, a video is refused as a format.

Every failure is an :class:`~moderation.exceptions.ImageError`; Pillow's parsers raise a zoo of
exception types on malformed input, and all of them are translated here.
"""

from __future__ import annotations

import io
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from moderation.core.decision import Timeline
from moderation.core.media import is_video_container
from moderation.core.payload import MediaFile, Payload
from moderation.core.sampling import FrameSampler, SamplingRules, grid_signature, plan_samples
from moderation.exceptions import (
    ImageDecodeError,
    ImageError,
    ImageTooLargeError,
    UnsupportedFormatError,
    UnsupportedImageFormat,
)
from moderation.ports import DecodedMedia
from moderation.settings import ImageLimits, VideoSettings

__all__ = [
    "VIDEO_KINDS",
    "FrameStill",
    "VideoFrames",
    "allowed_formats",
    "decode_image",
    "decode_media",
    "is_video",
    "sniff_format",
    "to_rgb",
    "unsupported_kind",
]

_JPEG_LIKE = frozenset({"JPEG", "MPO"})
#: Formats whose frames are an animation with a timing (sampled like video).
_ANIMATIONS = frozenset({"GIF", "PNG", "WEBP"})
_RASTER_FORMATS = frozenset(
    {
        "JPEG",
        "PNG",
        "GIF",
        "BMP",
        "TIFF",
        "WEBP",
        "PSD",
        "ICO",
        "HEIC",
        "HEIF",
        "AVIF",
        "JPEG2000",
        "QOI",
        "EPS",
    }
)
_MAX_SCANNED_FRAMES = 10_000
#: Allowlist spellings that name the same Pillow format.
_ALIASES = {"HEIC": "HEIF", "JPG": "JPEG", "TIF": "TIFF"}
_plugins_lock = threading.Lock()
_plugins_ready: list[bool] = []


def _register_plugins() -> None:
    """Register the HEIF plugin with Pillow once per process (on first decode, not at import)."""
    if _plugins_ready:
        return
    with _plugins_lock:
        if _plugins_ready:
            return
        Image.init()  # Pillow's own plugins (AVIF among them) first
        try:
            from pillow_heif import register_heif_opener
        except ImportError:  # pragma: no cover - a declared dependency
            pass
        else:
            register_heif_opener(
                thumbnails=False, depth_images=False, aux_images=False, decode_threads=1
            )
        _plugins_ready.append(True)


def allowed_formats(limits: ImageLimits) -> list[str]:
    """The allowlist as Pillow format names (aliases resolved, upper case)."""
    return list(dict.fromkeys(_ALIASES.get(f.upper(), f.upper()) for f in limits.formats))


# Magic numbers of things people upload instead of images (and image formats Pillow reads but
# the allowlist may exclude): used only to word the error message.
_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\xff\xd8\xff", "JPEG"),
    (0, b"\x89PNG\r\n\x1a\n", "PNG"),
    (0, b"GIF87a", "GIF"),
    (0, b"GIF89a", "GIF"),
    (0, b"BM", "BMP"),
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
    (8, b"WEBP", "WEBP"),
    (0, b"8BPS", "PSD"),
    (0, b"\x00\x00\x01\x00", "ICO"),
    (4, b"ftypheic", "HEIF"),
    (4, b"ftypheix", "HEIF"),
    (4, b"ftyphevc", "HEIF"),
    (4, b"ftypheim", "HEIF"),
    (4, b"ftypheis", "HEIF"),
    (4, b"ftypmsf1", "HEIF"),
    (4, b"ftypavif", "AVIF"),
    (4, b"ftypavis", "AVIF"),
    (4, b"ftypmif1", "HEIF"),
    (0, b"\x00\x00\x00\x0cjP  ", "JPEG2000"),
    (0, b"\xff\x4f\xff\x51", "JPEG2000"),
    (0, b"qoif", "QOI"),
    (0, b"%!PS", "EPS"),
    (0, b"\xc5\xd0\xd3\xc6", "EPS"),
    # video containers (after the HEIF/AVIF brands, which share the ``ftyp`` box)
    (4, b"ftyp", "MP4/MOV video"),
    (4, b"moov", "MP4/MOV video"),
    (0, b"\x1a\x45\xdf\xa3", "Matroska/WebM video"),
    (8, b"AVI ", "AVI video"),
    (0, b"FLV\x01", "FLV video"),
    (0, b"\x00\x00\x01\xba", "MPEG video"),
    (0, b"%PDF", "PDF document"),
    (0, b"PK\x03\x04", "ZIP archive"),
    (0, b"\x1f\x8b", "gzip archive"),
    (0, b"\x7fELF", "executable"),
    # More kinds that are not images (the last word of a name is its kind: see unsupported_kind)
    (0, b"\x00\x00\x01\xb3", "MPEG video"),
    (8, b"WAVE", "WAV audio"),
    (0, b"OggS", "Ogg audio"),
    (0, b"ID3", "MP3 audio"),
    (0, b"fLaC", "FLAC audio"),
    (0, b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "Office document"),
    (0, b"7z\xbc\xaf\x27\x1c", "7z archive"),
    (0, b"Rar!\x1a\x07", "RAR archive"),
)
#: The last word of a sniffed name that makes it a well-formed file of a kind that is not an
#: image (``unsupported_format``, not ``image_corrupt``).
_OTHER_KINDS = frozenset({"video", "audio", "document", "archive", "executable"})


def unsupported_kind(name: str | None) -> bool:
    """Whether a :func:`sniff_format` name is a well-formed file of a kind that is not an image
    (a video, audio, a document, an archive, an executable). Supporting a kind (video) means
    routing it before the image decoder; a new kind is one row of ``_MAGIC``."""
    return name is not None and name.rsplit(" ", 1)[-1] in _OTHER_KINDS


#: What :func:`sniff_format` calls the containers the video decoder reads.
VIDEO_KINDS = frozenset({"MP4/MOV video", "Matroska/WebM video"})
#: Animation frames with no or a tiny delay show for this long (as browsers do), seconds.
_DEFAULT_FRAME_S = 0.1


class VideoFrames(Protocol):
    """The video decoder :class:`SafeDecoder` hands videos to: bytes in, sampled RGB frames and
    their timeline out (``ImageError`` subclasses with ``video_*`` codes on failure)."""

    def media(self, data: bytes | Path, *, min_side: int) -> DecodedMedia: ...


def is_video(data: bytes) -> bool:
    """Whether ``data`` looks like a video container the video decoder reads (the rule the
    lanes route by: :func:`moderation.core.media.is_video_container`)."""
    return is_video_container(data[:12])


def sniff_format(data: bytes) -> str | None:
    """A human name for what ``data`` looks like (image format or common non-image), or None."""
    for offset, magic, name in _MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return name
    head = data[:512].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in data[:4096].lower()):
        return "SVG"
    if head.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "HTML"
    if head.startswith(b"<"):
        return "XML/HTML"
    try:
        text = data[:1024].decode("utf-8")
    except UnicodeDecodeError:
        return None
    if text and sum(ch.isprintable() or ch.isspace() for ch in text) / len(text) > 0.95:
        return "text"
    return None


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB correctly.

    Raises:
        ValueError: a mode Pillow cannot convert (translated by :func:`decode_image`).
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16") or mode in {"I", "F"}:
        array = np.asarray(image, dtype=np.float64)
        low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
        if mode.startswith("I;16") or (mode == "I" and low >= 0 and high <= 65535 and high > 255):
            array = array / 257.0  # 16-bit range: scale, do not clip
        elif mode == "F" and low >= 0.0 and high <= 1.0:
            array = array * 255.0
        elif not (low >= 0 and high <= 255):
            array = (array - low) * (255.0 / (high - low)) if high > low else array * 0.0
        grey = Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), "L")
        return grey.convert("RGB")
    if mode == "P":
        palette_mode = image.palette.mode if image.palette is not None else "RGB"
        has_alpha = "transparency" in image.info or palette_mode == "RGBA"
        image = image.convert("RGBA") if has_alpha else image.convert("RGB")
        if image.mode == "RGB":
            return image
        mode = image.mode
    if mode in {"RGBA", "LA", "PA", "RGBa", "La"}:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "1":
        return image.convert("L").convert("RGB")
    return image.convert("RGB")  # L, CMYK, YCbCr, LAB, HSV, RGBX


def _frame_indices(n_frames: int, wanted: int) -> list[int]:
    if wanted <= 1 or n_frames <= 1:
        return [0]
    wanted = min(wanted, n_frames)
    return sorted({round(i * (n_frames - 1) / (wanted - 1)) for i in range(wanted)})


def _count_frames(image: Image.Image) -> int:
    if not getattr(image, "is_animated", False):
        return 1
    return max(1, min(int(getattr(image, "n_frames", 1) or 1), _MAX_SCANNED_FRAMES))


def _check_size(width: int, height: int, limits: ImageLimits, *, pixels: bool = True) -> None:
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"invalid dimensions {width}x{height}")
    if max(width, height) > limits.max_side or (pixels and width * height > limits.max_pixels):
        raise ImageTooLargeError(
            f"{width}x{height} = {width * height} pixels exceeds the limit "
            f"({limits.max_pixels} pixels, {limits.max_side} px a side): refusing to decode"
        )


def _shrink(image: Image.Image, target: int) -> Image.Image:
    """Integer box reduction (``Image.reduce``) while the short side stays >= ``target``.

    Cheap and alias-free; leaves the short side in ``[target, 2 * target)`` so the model's own
    bicubic resize (a < 2x step) still sees enough pixels.
    """
    factor = min(image.size) // target if target > 0 else 0
    return image.reduce(factor) if factor >= 2 else image


def _oriented(image: Image.Image) -> Image.Image:
    """A copy turned upright per its EXIF Orientation; a corrupt EXIF block is ignored (the
    pixels are fine, only the rotation hint is lost)."""
    try:
        return ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, KeyError, IndexError, TypeError, struct.error):
        return image.copy()


def _open(data: bytes, limits: ImageLimits) -> Image.Image:
    allowed = allowed_formats(limits)
    _register_plugins()
    # MPO has no opener of its own (the JPEG opener returns MPO files); _decode re-checks.
    openers = [
        f
        for f in dict.fromkeys([*allowed, *(["JPEG"] if "MPO" in allowed else [])])
        if f in Image.OPEN
    ]
    try:
        return Image.open(io.BytesIO(data), formats=openers)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"decompression bomb refused: {exc}") from exc
    except UnidentifiedImageError as exc:
        looks_like = sniff_format(data)
        if unsupported_kind(looks_like):
            raise UnsupportedFormatError(
                f"this is a {looks_like}, not an image: only images are moderated"
            ) from exc
        if looks_like in _RASTER_FORMATS and looks_like not in allowed:
            raise UnsupportedImageFormat(
                f"format {looks_like} is not allowed (allowed: {', '.join(limits.formats)})"
            ) from exc
        if looks_like is not None and looks_like in allowed:
            raise ImageDecodeError(f"corrupt {looks_like} header") from exc
        what = f" (looks like {looks_like})" if looks_like else ""
        raise ImageDecodeError(f"not a recognised image{what}") from exc
    except MemoryError as exc:
        raise ImageTooLargeError("image header needs too much memory") from exc
    except Exception as exc:  # any parser failure on hostile bytes is "corrupt"
        raise ImageDecodeError(f"corrupt image header: {type(exc).__name__}: {exc}") from exc


def _animation_samples(
    image: Image.Image, limits: ImageLimits, target: int, video: VideoSettings
) -> DecodedMedia:
    """Frames of an animation sampled by its own timing, as a video is (one a cell, plus scene
    cuts; :mod:`moderation.core.sampling`). Two passes: the frame delays first (to plan the
    cells over the whole animation), then the samples."""
    n_frames = _count_frames(image)
    budget = video.max_pixels * video.max_samples  # the pixels of the largest video's samples
    if n_frames * image.size[0] * image.size[1] > budget:
        raise ImageTooLargeError(
            f"animation of {n_frames} frames of {image.size[0]}x{image.size[1]} pixels is "
            f"over {budget} pixels to walk (video.max_pixels x video.max_samples): refused"
        )
    starts: list[float] = []
    elapsed = 0.0
    for index in range(n_frames):
        image.seek(index)
        starts.append(elapsed)
        if image.info.get("duration") is None:  # WebP sets it when the frame is loaded
            image.load()
        delay = float(image.info.get("duration") or 0) / 1000.0
        elapsed += delay if delay > 0.01 else _DEFAULT_FRAME_S
    rules = SamplingRules(
        sample_fps=video.sample_fps,
        max_samples=video.max_samples,
        scene_cuts=video.scene_cuts,
        scene_cut_threshold=video.scene_cut_threshold,
        max_scene_cuts=video.max_scene_cuts,
    )
    sampler = FrameSampler(plan_samples(elapsed, rules))
    ends = [*starts[1:], elapsed]
    frames: list[Image.Image] = []
    shown: list[float] = []
    numbers: list[int] = []
    for index, (start, end) in enumerate(zip(starts, ends, strict=True)):
        if not video.scene_cuts and not sampler.needs(start, end):
            continue
        image.seek(index)
        _check_size(*image.size, limits)
        image.load()
        rgb = to_rgb(_oriented(image) if index == 0 else image.copy())
        signature = None
        if video.scene_cuts:
            small = rgb.resize((8, 8), Image.Resampling.BOX)
            signature = grid_signature(np.asarray(small))
        if sampler.offer(start, signature, end) is not None:
            frames.append(_shrink(rgb, target))
            shown.append(start)
            numbers.append(index)
    return DecodedMedia(frames, Timeline("animation", elapsed, tuple(shown), tuple(numbers)))


def _decode(
    image: Image.Image, limits: ImageLimits, target: int, video: VideoSettings | None = None
) -> DecodedMedia:
    fmt = (image.format or "").upper()
    if fmt not in allowed_formats(limits):  # defence in depth: open() filtered
        raise UnsupportedImageFormat(
            f"format {fmt or 'unknown'} is not allowed (allowed: {', '.join(limits.formats)})"
        )
    drafting = fmt in _JPEG_LIKE and target > 0 and image.mode in {"RGB", "L", "CMYK", "YCbCr"}
    _check_size(*image.size, limits, pixels=not drafting)
    if drafting:
        image.draft(image.mode, (target, target))  # smallest DCT scale with short side >= target
        # The pixel cap bounds memory and work, so it applies to what is actually decoded: a
        # 60 Mpx camera JPEG decodes at 1/8 scale; the same file at full size would be refused.
        _check_size(*image.size, limits)
    animated = fmt in _ANIMATIONS and getattr(image, "is_animated", False)
    if animated and video is not None and video.sample_animations:
        return _animation_samples(image, limits, target, video)
    indices = (
        [0] if limits.max_frames <= 1 else _frame_indices(_count_frames(image), limits.max_frames)
    )
    frames: list[Image.Image] = []
    for index in indices:
        if index:
            image.seek(index)
            _check_size(*image.size, limits)
        image.load()
        oriented = _oriented(image) if index == 0 else image.copy()
        frames.append(_shrink(to_rgb(oriented), target))
    return DecodedMedia(frames)


def decode_image(
    data: bytes,
    limits: ImageLimits,
    *,
    min_side: int | None = None,
    video: VideoSettings | None = None,
    video_frames: VideoFrames | None = None,
) -> list[Image.Image]:
    """:func:`decode_media`'s frames."""
    return decode_media(
        data, limits, min_side=min_side, video=video, video_frames=video_frames
    ).frames


def decode_media(
    data: Payload,
    limits: ImageLimits,
    *,
    min_side: int | None = None,
    video: VideoSettings | None = None,
    video_frames: VideoFrames | None = None,
) -> DecodedMedia:
    """Decode untrusted bytes into RGB frames (one for a still image; samples of an animation
    or a video).

    Args:
        data: the raw file, or a local file holding it (a video in a file is decoded from
            the file; anything else is read, within ``limits.max_bytes``).
        limits: byte / pixel / side caps, format allowlist, frame sampling.
        min_side: shrink (cheaply, never enlarging) while the short side stays >= this;
            default ``limits.draft_size``; 0 keeps full size. Pass the model's input size
            (``encoder.image_size``) on the scoring path: decoding is then several times
            faster, and the model's preprocess does the final exact resize.
        video: animations are sampled by these rules (None: ``limits.max_frames``).
        video_frames: the decoder of videos (None: a video is refused as a format).

    Returns:
        One RGB image, or the sampled frames of an animation or a video with their timeline.

    Raises:
        ImageTooLargeError: too many bytes, pixels, or too long a side (decompression bomb).
        UnsupportedImageFormat: the content is an image format outside ``limits.formats``.
        UnsupportedFormatError: well-formed content of another kind (video, audio, PDF,
            archive; code ``unsupported_format``).
        ImageDecodeError: empty, truncated, corrupt, or not an image at all.
        (video) the ``video_*`` subclasses of these three.
    """
    target = limits.draft_size if min_side is None else min_side
    if isinstance(data, MediaFile):
        head = _head(data.path)
        if video_frames is not None and is_video(head):
            return video_frames.media(data.path, min_side=target)
        if data.size > limits.max_bytes:
            kind = sniff_format(head)
            if kind is not None and unsupported_kind(kind):
                raise UnsupportedFormatError(f"{kind} is not an image format this service reads")
            raise ImageTooLargeError(f"{data.size} bytes exceeds the {limits.max_bytes}-byte limit")
        data = _read(data.path)
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    if video_frames is not None and is_video(data):
        return video_frames.media(data, min_side=target)
    if len(data) > limits.max_bytes:
        raise ImageTooLargeError(f"{len(data)} bytes exceeds the {limits.max_bytes}-byte limit")
    image = _open(data, limits)
    try:
        return _decode(image, limits, target, video)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"decompression bomb refused: {exc}") from exc
    except MemoryError as exc:
        raise ImageTooLargeError("image needs too much memory to decode") from exc
    except (
        OSError,
        SyntaxError,
        ValueError,
        EOFError,
        IndexError,
        struct.error,
        zlib.error,
    ) as exc:
        raise ImageDecodeError(f"corrupt or truncated image: {exc}") from exc
    except Exception as exc:  # Pillow parsers raise many types on fuzzed input; all mean corrupt
        raise ImageDecodeError(f"corrupt image ({type(exc).__name__}: {str(exc)[:200]})") from exc
    finally:
        image.close()


def _head(path: Path) -> bytes:
    """The first bytes of a file (what :func:`sniff_format` reads)."""
    try:
        with path.open("rb") as fh:
            return fh.read(4096)
    except OSError as exc:
        raise ImageDecodeError(f"cannot read the downloaded file: {exc.strerror}") from exc


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ImageDecodeError(f"cannot read the downloaded file: {exc.strerror}") from exc


class SafeDecoder:
    """The :class:`~moderation.ports.ImageDecoder` of the pipeline: :func:`decode_image` with
    fixed limits. Animations are sampled like video by default (``video``: the default
    :class:`~moderation.settings.VideoSettings`); videos are decoded when ``video_frames`` is
    given. Thread-safe (stateless)."""

    def __init__(
        self,
        limits: ImageLimits,
        *,
        video: VideoSettings | None = None,
        video_frames: VideoFrames | None = None,
    ) -> None:
        self.limits = limits
        self.video = video if video is not None else VideoSettings()
        self.video_frames = video_frames

    def decode(self, data: bytes, *, min_side: int | None = None) -> list[Image.Image]:
        """See :func:`decode_image`."""
        frames: list[Image.Image] = self.decode_media(data, min_side=min_side).frames
        return frames

    def decode_media(self, data: Payload, *, min_side: int | None = None) -> DecodedMedia:
        """See :func:`decode_media`."""
        return decode_media(
            data,
            self.limits,
            min_side=min_side,
            video=self.video,
            video_frames=self.video_frames,
        )


@dataclass(frozen=True, slots=True)
class FrameStill:
    """A sampled frame of a video or an animation as the reviewer's filmstrip still: scaled down
    so that its long side is at most ``max_side`` and encoded as a plain baseline JPEG (no
    metadata). Picklable: it travels to the worker's prepare processes."""

    max_side: int = 320
    quality: int = 80

    def __call__(self, frame: Image.Image) -> bytes:
        still = frame.convert("RGB") if frame.mode != "RGB" else frame.copy()
        still.thumbnail((self.max_side, self.max_side), Image.Resampling.BILINEAR)
        buffer = io.BytesIO()
        still.save(buffer, format="JPEG", quality=self.quality)
        return buffer.getvalue()


def safe_png(data: bytes, limits: ImageLimits) -> bytes:
    """Untrusted image bytes decoded with ``limits`` and re-encoded as a plain PNG of the first
    frame (no metadata, no exotic format): what a reviewer's browser is shown.

    Raises:
        ImageError: as :func:`decode_image`.
    """
    frames = decode_image(data, limits)
    buffer = io.BytesIO()
    frames[0].save(buffer, format="PNG")
    return buffer.getvalue()
