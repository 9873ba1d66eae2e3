"""Safe decoding of hostile and awkward images, and the fast preprocess path."""

from __future__ import annotations

import io
import random
import time
from typing import Any

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from moderation.adapters.clip import standard_geometry
from moderation.adapters.images import decode_image, sniff_format, to_rgb
from moderation.adapters.support.preprocess import CropPreprocess
from moderation.exceptions import (
    ImageDecodeError,
    ImageError,
    ImageTooLargeError,
    UnsupportedFormatError,
    UnsupportedImageFormat,
)
from moderation.settings import ImageLimits
from tests.data import hostile

LIMITS = ImageLimits()


def fast_preprocess(preprocess: Any) -> Any:
    """What the encoder does with open_clip's standard preprocess: the uint8 crop on the CPU,
    then normalisation (here on the CPU too), as one callable giving the float tensor."""
    geometry = standard_geometry(preprocess)
    if geometry is None:
        return None
    size, mean, std = geometry
    crop = CropPreprocess(size)
    mean_t = torch.tensor(mean).view(3, 1, 1)
    std_t = torch.tensor(std).view(3, 1, 1)

    def run(image: Image.Image) -> torch.Tensor:
        pixels = torch.from_numpy(crop(image).copy()).permute(2, 0, 1).to(torch.float32)
        return (pixels / 255.0 - mean_t) / std_t

    return run


def _rgb_ok(frames: list[Image.Image]) -> None:
    assert frames and all(f.mode == "RGB" and min(f.size) > 0 for f in frames)


# --- ordinary images --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_allowed_formats_decode(fmt: str) -> None:
    frames = decode_image(hostile.encode(hostile.photo(64, 48), fmt), LIMITS)
    _rgb_ok(frames)
    assert frames[0].size == (64, 48)


def _heic_bytes(image: Image.Image) -> bytes:
    import pillow_heif

    buffer = io.BytesIO()
    pillow_heif.from_pillow(image).save(buffer, quality=80)
    return buffer.getvalue()


def _avif(image: Image.Image) -> bytes:
    """Real AVIF bytes (AV1), written by Pillow's own AVIF plugin."""
    return hostile.encode(image, "AVIF", quality=80, speed=10)


@pytest.mark.parametrize(("name", "magic"), [("HEIC", b"ftypheic"), ("AVIF", b"ftypavif")])
def test_phone_formats_heic_and_avif_decode(name: str, magic: bytes) -> None:
    original = hostile.photo(96, 64, seed=3)
    data = _heic_bytes(original) if name == "HEIC" else _avif(original)
    assert data[4:12] == magic  # what phones upload, not a renamed PNG
    (frame,) = decode_image(data, LIMITS, min_side=0)
    assert frame.mode == "RGB" and frame.size == (96, 64)
    error = np.abs(np.asarray(frame, np.float32) - np.asarray(original, np.float32)).mean()
    assert error < 12  # lossy, but the same picture
    assert sniff_format(data) == ("HEIF" if name == "HEIC" else "AVIF")


@pytest.mark.parametrize("name", ["HEIC", "AVIF"])
def test_phone_formats_keep_the_bomb_and_allowlist_limits(name: str) -> None:
    big = Image.new("RGB", (1600, 1200), (200, 30, 30))
    data = _heic_bytes(big) if name == "HEIC" else _avif(big)
    assert len(data) < 20_000  # small file, many pixels
    strict = ImageLimits(max_pixels=1_000_000)
    with pytest.raises(ImageTooLargeError, match="refusing to decode"):
        decode_image(data, strict)
    with pytest.raises(ImageTooLargeError):
        decode_image(data, ImageLimits(max_side=1000))
    without = ImageLimits(formats=["JPEG", "PNG"])
    with pytest.raises(UnsupportedImageFormat, match="is not allowed"):
        decode_image(data, without)
    (frame,) = decode_image(data, LIMITS, min_side=224)  # allowed by default, box-reduced
    assert frame.size == (320, 240)  # reduce(5): the short side stays >= 224
    assert decode_image(data, ImageLimits(formats=["heic", "avif"]))  # HEIC names HEIF
    with pytest.raises(ImageError):
        decode_image(data[: len(data) // 2], LIMITS)  # truncated


def test_jpeg_draft_mode_downscales_but_never_below_target() -> None:
    data = hostile.encode(hostile.photo(1600, 1200), "JPEG", quality=90)
    (frame,) = decode_image(data, LIMITS, min_side=224)
    assert 224 <= min(frame.size) < 448  # DCT-domain 1/4 scale: 400x300
    assert frame.size == (400, 300)
    (full,) = decode_image(data, LIMITS, min_side=0)
    assert full.size == (1600, 1200)


def test_non_jpeg_large_image_is_box_reduced() -> None:
    data = hostile.encode(hostile.photo(1000, 700), "PNG")
    (frame,) = decode_image(data, LIMITS, min_side=224)
    assert frame.size == (334, 234)  # reduce(3) (rounds up): short side stays >= 224


def test_decode_then_prepare_is_close_to_naive_full_size_preprocess() -> None:
    """Draft decoding changes the tensor the model sees only marginally."""
    preprocess = open_clip.image_transform(224, is_train=False)
    prepare = fast_preprocess(preprocess)
    assert prepare is not None
    data = hostile.encode(hostile.photo(1600, 1200, seed=3), "JPEG", quality=90)
    naive = preprocess(Image.open(io.BytesIO(data)).convert("RGB"))
    ours = prepare(decode_image(data, LIMITS, min_side=224)[0])
    assert ours.shape == naive.shape == (3, 224, 224)
    assert float((ours - naive).abs().mean()) < 0.03


# --- orientation and modes --------------------------------------------------------------------


def test_exif_orientation_is_applied() -> None:
    (frame,) = decode_image(hostile.exif_rotated_jpeg(6), LIMITS)
    assert frame.size == (20, 40)  # stored 40x20, displayed rotated 90° clockwise
    top, bottom = frame.getpixel((10, 5)), frame.getpixel((10, 35))
    assert isinstance(top, tuple) and isinstance(bottom, tuple)
    assert top[0] > 200 and top[2] < 60  # the stored left half (red) is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_16bit_png_is_scaled_not_clipped() -> None:
    (frame,) = decode_image(hostile.png16_gradient(), LIMITS)
    row = np.asarray(frame)[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255
    assert abs(int(row[128]) - 128) <= 1  # mid-grey stays mid-grey
    assert np.all(np.diff(row) >= 0) and len(set(row.tolist())) > 200


def test_cmyk_jpeg_converts_to_rgb() -> None:
    (frame,) = decode_image(hostile.cmyk_jpeg((255, 0, 0, 0)), LIMITS)  # pure cyan
    r, g, b = frame.getpixel((8, 8))  # type: ignore[misc]
    assert r < 30 and g > 225 and b > 225


def test_palette_transparency_composited_on_white() -> None:
    (frame,) = decode_image(hostile.palette_with_transparency(), LIMITS)
    assert frame.getpixel((2, 2)) == (255, 255, 255)  # transparent -> white, not black/green
    assert frame.getpixel((15, 5)) == (255, 0, 0)


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [
        ("L", 77, (77, 77, 77)),
        ("1", 1, (255, 255, 255)),
        ("LA", (90, 0), (255, 255, 255)),
        ("RGBA", (10, 20, 30, 255), (10, 20, 30)),
        ("RGBA", (10, 20, 30, 0), (255, 255, 255)),
        ("I", 65535, (255, 255, 255)),
        ("F", 0.5, (128, 128, 128)),
    ],
)
def test_to_rgb_modes(mode: str, value: object, expected: tuple[int, int, int]) -> None:
    out = to_rgb(Image.new(mode, (4, 4), value))  # type: ignore[arg-type]
    assert out.mode == "RGB" and out.getpixel((1, 1)) == expected


# --- animation ------------------------------------------------------------------------------


def test_animated_gif_first_frame_by_default_fast() -> None:
    data = hostile.animated_gif(400)
    started = time.perf_counter()
    frames = decode_image(data, LIMITS)
    elapsed = time.perf_counter() - started
    assert len(frames) == 1 and frames[0].getpixel((4, 4))[0] == 0  # type: ignore[index]
    assert elapsed < 1.0, "first-frame decoding must not walk the whole animation"


def test_animated_gif_samples_evenly_spaced_frames() -> None:
    limits = ImageLimits(max_frames=4)
    frames = decode_image(hostile.animated_gif(301), limits)
    reds = [f.getpixel((4, 4))[0] for f in frames]  # type: ignore[index]
    assert reds == [0, 85, 170, 255]  # frames 0, 100, 200, 300
    assert len(decode_image(hostile.animated_gif(2), limits)) == 2


def test_every_decoded_page_is_size_checked() -> None:
    data = hostile.two_page_tiff(small=10, large=300)
    limits = ImageLimits(max_pixels=10_000, max_frames=2)
    assert len(decode_image(data, ImageLimits(max_pixels=10_000))) == 1  # page 1 not decoded
    with pytest.raises(ImageTooLargeError):
        decode_image(data, limits)


# --- hostile inputs -------------------------------------------------------------------------


def test_zero_bytes() -> None:
    with pytest.raises(ImageDecodeError, match="empty"):
        decode_image(b"", LIMITS)


def test_byte_cap() -> None:
    with pytest.raises(ImageTooLargeError, match="byte"):
        decode_image(b"\xff\xd8\xff" + b"\0" * 2000, ImageLimits(max_bytes=1000))


@pytest.mark.parametrize(
    ("data", "cls"),
    [
        (hostile.png_claiming(50_000, 50_000), ImageTooLargeError),
        (hostile.png_claiming(30_000, 10), ImageTooLargeError),  # side cap
        (hostile.png_claiming(7_000, 7_000), ImageTooLargeError),  # 49 Mpx > 40 Mpx
        (hostile.png_claiming(2**31 - 1, 2**31 - 1), ImageTooLargeError),
        (hostile.gif_claiming(65_535, 65_535), ImageTooLargeError),
        (hostile.png_claiming(0, 10), ImageDecodeError),
    ],
)
def test_decompression_bombs_refused_before_decoding(data: bytes, cls: type[ImageError]) -> None:
    started = time.perf_counter()
    with pytest.raises(cls):
        decode_image(data, LIMITS)
    assert time.perf_counter() - started < 1.0
    assert len(data) < 10_000


def test_pixel_cap_counts_what_draft_mode_actually_decodes() -> None:
    data = hostile.encode(Image.new("L", (9000, 6000), 90), "JPEG")  # 54 Mpx > 40 Mpx cap
    (frame,) = decode_image(data, LIMITS, min_side=224)  # decoded at 1/8: 1125x750
    assert frame.size == (375, 250)  # then reduce(3)
    with pytest.raises(ImageTooLargeError, match="54000000"):
        decode_image(data, LIMITS, min_side=0)  # full size: refused before decoding
    with pytest.raises(ImageTooLargeError):
        decode_image(data, ImageLimits(max_side=8000), min_side=224)  # sides: header size


def test_pixel_cap_applies_to_ordinary_images() -> None:
    data = hostile.encode(hostile.photo(200, 200), "JPEG")
    with pytest.raises(ImageTooLargeError, match="40000"):
        decode_image(data, ImageLimits(max_pixels=10_000))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP"])
@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9])
def test_truncated_files(fmt: str, keep: float) -> None:
    data = hostile.encode(hostile.photo(128, 96), fmt)
    with pytest.raises(ImageDecodeError):
        decode_image(data[: int(len(data) * keep)], LIMITS)


@pytest.mark.parametrize("name", sorted(hostile.NON_IMAGES))
def test_non_images_refused_with_a_clear_message(name: str) -> None:
    data = hostile.NON_IMAGES[name]
    with pytest.raises(ImageError) as info:
        decode_image(data, LIMITS)
    expected, code = {
        "text": ("text", "image_corrupt"),
        "html": ("HTML", "image_corrupt"),
        "svg": ("SVG", "image_corrupt"),
        "pdf": ("PDF", "unsupported_format"),
        "json": ("text", "image_corrupt"),
        "elf": ("executable", "unsupported_format"),
    }[name]
    assert expected in str(info.value)
    assert info.value.code == code
    if code == "image_corrupt":
        assert "not a recognised image" in str(info.value)
    else:  # a file of another kind, not damaged image data
        assert isinstance(info.value, UnsupportedFormatError)


def test_random_bytes_are_corrupt() -> None:
    rng = random.Random(7)
    for _ in range(20):
        blob = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 4000)))
        with pytest.raises(ImageError):
            decode_image(blob, LIMITS)


def test_formats_outside_the_allowlist() -> None:
    jpeg = hostile.encode(hostile.photo(32, 32), "JPEG")
    with pytest.raises(UnsupportedImageFormat, match="JPEG is not allowed"):
        decode_image(jpeg, ImageLimits(formats=["PNG"]))
    ico = hostile.encode(hostile.photo(32, 32), "ICO")
    with pytest.raises(UnsupportedImageFormat, match="ICO"):
        decode_image(ico, LIMITS)
    assert sniff_format(ico) == "ICO"


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about what it repairs
def test_mutated_images_end_decoded_or_as_image_errors() -> None:
    """Fuzz-ish: random byte flips, truncations, insertions and header splices of valid files
    of every allowed format. Each must give RGB frames or an ImageError, nothing else."""
    rng = random.Random(1234)
    seeds = [
        hostile.encode(hostile.photo(48, 32, seed=i), fmt)
        for i, fmt in enumerate(["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"])
    ]
    seeds += [
        hostile.exif_rotated_jpeg(),
        hostile.png16_gradient(),
        hostile.cmyk_jpeg(),
        hostile.palette_with_transparency(),
        hostile.animated_gif(5),
        hostile.two_page_tiff(),
    ]
    limits = ImageLimits(max_frames=3, max_pixels=2_000_000, max_side=4000)
    outcomes = {"decoded": 0, "error": 0}
    for i in range(400):
        data = bytearray(seeds[i % len(seeds)])
        for _ in range(rng.randint(1, 8)):
            op, pos = rng.random(), rng.randrange(len(data))
            if op < 0.6:
                data[pos] = rng.getrandbits(8)
            elif op < 0.75:
                data = data[: max(1, pos)]
            elif op < 0.9:
                data[pos:pos] = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 16)))
            else:  # big header values: sizes, counts, offsets
                data[pos : pos + 4] = b"\xff\xff\x7f\xff"
        try:
            frames = decode_image(bytes(data), limits)
        except ImageError:
            outcomes["error"] += 1
        else:
            _rgb_ok(frames)
            outcomes["decoded"] += 1
    assert outcomes["decoded"] > 0 and outcomes["error"] > 0


# --- fast preprocess ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size",
    [
        (1600, 1200),
        (1200, 1600),
        (400, 300),
        (298, 224),
        (224, 224),
        (100, 60),
        (2000, 224),
        (225, 3000),
        (50, 50),
        (333, 233),
    ],
)
@pytest.mark.parametrize("model_size", [224, 64])
def test_fast_preprocess_matches_open_clip(size: tuple[int, int], model_size: int) -> None:
    preprocess = open_clip.image_transform(
        model_size, is_train=False, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3)
    )
    fast = fast_preprocess(preprocess)
    assert fast is not None
    image = hostile.photo(*size, seed=sum(size))
    raw = CropPreprocess(model_size)(image)
    assert raw.dtype == np.uint8 and raw.shape == (model_size, model_size, 3)
    ref, got = preprocess(image), fast(image)
    assert got.shape == ref.shape and got.dtype == ref.dtype == torch.float32
    # One 8-bit level is 1/255/std ≈ 0.02 here: the two paths round at most one level apart,
    # and most pixels not at all.
    diff = (got - ref).abs()
    assert float(diff.max()) <= 0.021
    assert float(diff.mean()) < 0.005


def test_fast_preprocess_declines_other_pipelines() -> None:
    assert fast_preprocess(open_clip.image_transform(224, is_train=True)) is None
    assert (
        fast_preprocess(open_clip.image_transform(224, is_train=False, resize_mode="squash"))
        is None
    )
    assert fast_preprocess(lambda image: image) is None


def test_decode_benchmark_reports_its_keys() -> None:
    from bench.decode import make_jpegs, measure_decode

    assert 350_000 < len(make_jpegs(1)[0]) < 650_000  # "~500 KB" photographic JPEGs
    result = measure_decode(n_images=3, repeats=1)
    for key in ("decode_images_per_s_per_core", "naive_decode_images_per_s_per_core", "ratio"):
        assert result[key] > 0
    assert result["torch_threads"] == 1 and result["model_input"] == 224
    assert result["mean_abs_diff_vs_naive"] < 0.03


@pytest.mark.parametrize(
    ("data", "name", "kind"),
    [
        (b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2mp41" + bytes(64), "MP4", "video"),
        (b"\x00\x00\x00\x14ftypqt  \x00\x00\x00\x00qt  " + bytes(64), "MOV", "video"),
        (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01" + bytes(64), "WebM", "video"),
        (b"RIFF\x24\x00\x00\x00AVI LIST" + bytes(64), "AVI", "video"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(64), "WAV", "audio"),
        (b"PK\x03\x04" + bytes(64), "ZIP", "archive"),
        (b"%PDF-1.7\n" + bytes(64), "PDF", "document"),
    ],
)
def test_well_formed_files_of_other_kinds_are_unsupported_not_corrupt(
    data: bytes, name: str, kind: str
) -> None:
    from moderation.adapters.images import unsupported_kind

    found = sniff_format(data)
    assert found is not None and name in found and found.endswith(kind)
    assert unsupported_kind(found)
    with pytest.raises(UnsupportedFormatError) as info:
        decode_image(data, LIMITS)
    assert info.value.code == "unsupported_format" and name in str(info.value)


def test_image_sniffing_is_unchanged_by_the_container_rows() -> None:
    from moderation.adapters.images import unsupported_kind

    heic = b"\x00\x00\x00\x18ftypheic" + bytes(16)
    webp = b"RIFF\x00\x00\x00\x00WEBPVP8 " + bytes(16)
    for data, name in ((heic, "HEIF"), (webp, "WEBP")):
        assert sniff_format(data) == name and not unsupported_kind(name)
