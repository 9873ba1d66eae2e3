"""Images with text in them, for the text signal's tests and benchmark (``bench/ocr.py``).

Phrases are written, plainly or obfuscated (:data:`OBFUSCATIONS`), in several fonts, sizes,
angles and colours, onto backgrounds: the test world's scenes, busy noise and stripes, and any
photo the caller passes. Fonts are Debian's DejaVu faces when installed (``fonts-dejavu``),
else Pillow's built-in scalable font. Deterministic for a given seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

__all__ = [
    "BENIGN_LOOKALIKES",
    "FONT_FILES",
    "OBFUSCATIONS",
    "TextSample",
    "busy_background",
    "fonts",
    "obfuscate",
    "render_text",
    "samples",
]

#: DejaVu faces (Debian's fonts-dejavu-core) tried in order; missing ones are skipped.
FONT_FILES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSerif-Bold.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
)

#: Text that resembles the banned phrases of the tests and the benchmark but is allowed: a
#: banned word inside a longer word, or a near spelling.
BENIGN_LOOKALIKES: dict[str, list[str]] = {
    "send bitcoin": ["sender bit coinage", "send a bit of coin", "legend bitcoins"],
    "double your money": ["double your honey", "trouble your money", "double-yourmoneypit"],
    "kill yourself": ["skill yourself", "killer yourselves", "kiln yourself"],
    "free nudes": ["free noodles", "carefree nudges", "free nodes"],
}

_COLOURS: tuple[tuple[int, int, int], ...] = (
    (255, 255, 255),
    (255, 230, 0),
    (20, 20, 20),
    (230, 30, 30),
)
_LEET = {"a": "4", "e": "3", "i": "1", "o": "0", "s": "5", "t": "7"}
_DIACRITICS = {"a": "á", "e": "ë", "i": "ï", "o": "ö", "u": "ü", "n": "ñ", "c": "ç", "y": "ÿ"}
_HOMOGLYPHS = {"a": "а", "e": "е", "o": "о", "p": "р", "c": "с", "x": "х", "y": "у", "i": "і"}


def _each(mapping: dict[str, str]) -> Callable[[str], str]:
    return lambda text: "".join(mapping.get(ch, ch) for ch in text)


#: Ways of writing a phrase: the name and the transformation.
OBFUSCATIONS: dict[str, Callable[[str], str]] = {
    "clear": lambda text: text,
    "upper": str.upper,
    "leet": _each(_LEET),
    "diacritics": _each(_DIACRITICS),
    "homoglyphs": _each(_HOMOGLYPHS),  # Cyrillic look-alikes
    "spaced": lambda text: " ".join(text.replace(" ", "  ")),
    "dotted": lambda text: " ".join(".".join(word) for word in text.split()),
    "no_spaces": lambda text: text.replace(" ", ""),
}


def obfuscate(text: str, kind: str) -> str:
    """``text`` written the ``kind`` way (a key of :data:`OBFUSCATIONS`)."""
    return OBFUSCATIONS[kind](text)


def fonts(size: int) -> list[ImageFont.FreeTypeFont | ImageFont.ImageFont]:
    """The installed DejaVu faces at ``size`` pixels, or Pillow's built-in font."""
    found: list[ImageFont.FreeTypeFont | ImageFont.ImageFont] = [
        ImageFont.truetype(path, size) for path in FONT_FILES if Path(path).is_file()
    ]
    return found or [ImageFont.load_default(size)]


def busy_background(size: tuple[int, int], seed: int) -> Image.Image:
    """Stripes, blobs and noise: a background that gives the text detector work."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack(
        [
            127 + 90 * np.sin(x / rng.uniform(6, 30) + rng.uniform(0, 6)),
            127 + 90 * np.sin(y / rng.uniform(6, 30) + rng.uniform(0, 6)),
            127 + 90 * np.sin((x + y) / rng.uniform(8, 40)),
        ],
        axis=-1,
    )
    base += rng.normal(0, 25, base.shape)
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    return image.filter(ImageFilter.GaussianBlur(1))


@dataclass(frozen=True, slots=True)
class TextSample:
    """How a phrase was written."""

    text: str
    font: int
    size: int
    angle: float
    colour: tuple[int, int, int]


def render_text(
    background: Image.Image,
    text: str,
    *,
    size: int = 40,
    font: int = 0,
    angle: float = 0.0,
    colour: tuple[int, int, int] = (255, 255, 255),
    outline: tuple[int, int, int] | None = (0, 0, 0),
    position: tuple[float, float] = (0.5, 0.5),
) -> Image.Image:
    """``background`` (a copy, RGB) with ``text`` written on it, centred at ``position``
    (fractions of the width and height), turned by ``angle`` degrees, with an outline so that
    it stays readable on a busy background (None: no outline)."""
    faces = fonts(size)
    face = faces[font % len(faces)]
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    stroke = max(1, size // 14) if outline is not None else 0
    left, top, right, bottom = (
        int(v) for v in probe.textbbox((0, 0), text, font=face, stroke_width=stroke)
    )
    pad = size // 3
    layer = Image.new("RGBA", (right - left + 2 * pad, bottom - top + 2 * pad), (0, 0, 0, 0))
    ImageDraw.Draw(layer).text(
        (pad - left, pad - top),
        text,
        font=face,
        fill=(*colour, 255),
        stroke_width=stroke,
        stroke_fill=(*outline, 255) if outline is not None else None,
    )
    if angle:
        layer = layer.rotate(angle, expand=True, resample=Image.Resampling.BICUBIC)
    out = background.convert("RGB").copy()
    if layer.width > out.width or layer.height > out.height:
        scale = min(out.width / layer.width, out.height / layer.height) * 0.95
        layer = layer.resize(
            (max(1, int(layer.width * scale)), max(1, int(layer.height * scale))),
            Image.Resampling.LANCZOS,
        )
    cx, cy = position
    x = int(min(max(cx * out.width - layer.width / 2, 0), out.width - layer.width))
    y = int(min(max(cy * out.height - layer.height / 2, 0), out.height - layer.height))
    out.paste(layer, (x, y), layer)
    return out


def samples(
    phrases: Sequence[str], kinds: Sequence[str], seed: int
) -> list[tuple[str, str, TextSample]]:
    """(phrase, kind, how) for each phrase written each way, with a font, size, angle and
    colour drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    out = []
    for phrase in phrases:
        for kind in kinds:
            out.append(
                (
                    phrase,
                    kind,
                    TextSample(
                        text=obfuscate(phrase, kind),
                        font=int(rng.integers(0, len(FONT_FILES))),
                        size=int(rng.choice([28, 36, 48, 64])),
                        angle=float(rng.choice([0.0, 0.0, -8.0, 6.0, 15.0])),
                        colour=_COLOURS[int(rng.integers(0, len(_COLOURS)))],
                    ),
                )
            )
    return out
