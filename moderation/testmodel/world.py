"""A small procedurally generated world of coloured shapes on patterned backgrounds.

Pure PIL + numpy and deterministic: every image is a function of its seed. The world has
``len(COLOURS) * len(SHAPES)`` object classes (``"a red star"``, ``"an orange ring"``, ...) and a
few empty-background classes (``"a plain background"``, ...).

Colours are continuous: an object may be painted with a colour interpolated between two
neighbouring named colours (``mix``). Training labels such an object softly (``1 - mix`` for its
own colour, ``mix`` for the neighbour), so the model's probabilities track how far the paint really
is between two names. That is what makes the ``"review"`` band of the test-world policy a property
of the image: an orange-red star is genuinely half way between "a red star" and "an orange star".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFilter

__all__ = [
    "BACKGROUNDS",
    "BACKGROUND_PHRASES",
    "CATEGORY_OBJECTS",
    "COLOURS",
    "MIX_NEIGHBOURS",
    "OBJECT_PHRASES",
    "PHRASES",
    "SHAPES",
    "TEMPLATES",
    "TRAIN_TEMPLATES",
    "Band",
    "LabelledImage",
    "Scene",
    "draw",
    "labelled_images",
    "phrase",
    "render",
    "render_background",
    "sample_images",
    "sample_scene",
    "training_example",
]

Band = Literal["block", "allow", "review"]
RGB = tuple[int, int, int]
FloatArray = NDArray[np.float64]

IMAGE_SIZE: Final = 64
_SUPERSAMPLE: Final = 4
#: Object radius range, as a fraction of the image side (training and fresh images).
SCALE_RANGE: Final = (0.25, 0.42)
#: Radius range of the "clear" examples drawn by :func:`sample_images`.
CLEAR_SCALE_RANGE: Final = (0.3, 0.42)

#: Named object colours (RGB before per-image jitter).
COLOURS: Final[dict[str, RGB]] = {
    "red": (215, 25, 30),
    "orange": (245, 130, 20),
    "yellow": (245, 220, 30),
    "green": (40, 170, 60),
    "blue": (30, 80, 220),
    "purple": (135, 45, 175),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES: Final[tuple[str, ...]] = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "heart",
    "ring",
    "arrow",
)
BACKGROUNDS: Final[tuple[str, ...]] = ("plain", "stripes", "dots", "gradient")
#: Backgrounds of the "clear" examples: no pattern edges to merge with the object's outline.
CLEAR_BACKGROUNDS: Final[tuple[str, ...]] = ("plain", "gradient")

#: Colour pairs that may be blended; the blend is labelled softly between the two names. White and
#: black are never blended: grey paint would blur the only cue (brightness) that separates an
#: achromatic object from the neutral background.
MIX_NEIGHBOURS: Final[dict[str, tuple[str, ...]]] = {
    "red": ("orange", "purple"),
    "orange": ("red", "yellow"),
    "yellow": ("orange", "green"),
    "green": ("yellow", "blue"),
    "blue": ("green", "purple"),
    "purple": ("blue", "red"),
    "white": (),
    "black": (),
}

#: Templates of the test-world policy (used for zero-shot evaluation).
TEMPLATES: Final[tuple[str, ...]] = (
    "a photo of {}",
    "an image containing {}",
    "a picture of {}",
    "{}",
)
#: Captions seen in training: the policy templates plus a few more, so the text tower generalises.
TRAIN_TEMPLATES: Final[tuple[str, ...]] = (
    *TEMPLATES,
    "a drawing of {}",
    "an illustration of {}",
    "a rendering of {}",
    "there is {} here",
)


def phrase(colour: str, shape: str) -> str:
    """The noun phrase naming an object class, e.g. ``"an orange star"``."""
    article = "an" if colour[0] in "aeiou" else "a"
    return f"{article} {colour} {shape}"


OBJECT_PHRASES: Final[tuple[str, ...]] = tuple(phrase(c, s) for c in COLOURS for s in SHAPES)
BACKGROUND_PHRASES: Final[tuple[str, ...]] = tuple(f"a {b} background" for b in BACKGROUNDS)
#: Every caption class of the world: objects first, then empty backgrounds.
PHRASES: Final[tuple[str, ...]] = OBJECT_PHRASES + BACKGROUND_PHRASES


@dataclass(frozen=True, slots=True)
class Scene:
    """Everything needed to draw one image; ``draw(scene)`` is a pure function of it."""

    shape: str | None  # None: an empty background
    colour: str
    mix_with: str | None
    mix: float  # 0 = pure ``colour``, 0.5 = half way to ``mix_with``
    rgb: RGB  # the paint actually used, after mixing and jitter
    scale: float  # object radius as a fraction of the image side
    centre: tuple[float, float]  # in [0, 1] image coordinates
    rotation: float  # degrees
    background: str
    bg_colours: tuple[RGB, RGB]
    bg_period: float
    bg_angle: float
    noise_sigma: float
    blur: float
    seed: int

    @property
    def phrase(self) -> str:
        if self.shape is None:
            return f"a {self.background} background"
        return phrase(self.colour, self.shape)

    def targets(self) -> dict[str, float]:
        """Soft caption-class targets for training (sums to 1)."""
        if self.shape is None:
            return {self.phrase: 1.0}
        if self.mix_with is None or self.mix <= 0.0:
            return {self.phrase: 1.0}
        return {self.phrase: 1.0 - self.mix, phrase(self.mix_with, self.shape): self.mix}


# --------------------------------------------------------------------------------------------------
# geometry


def _polygon(shape: str) -> list[tuple[float, float]]:
    """Outline of ``shape`` in unit coordinates (radius ~1, centred on the origin, y down)."""
    if shape == "square":
        return [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]
    if shape == "triangle":
        pts = [(-90.0 + 120.0 * k) for k in range(3)]
        return [(math.cos(math.radians(a)), math.sin(math.radians(a)) + 0.15) for a in pts]
    if shape == "star":
        out: list[tuple[float, float]] = []
        for k in range(10):
            r = 1.0 if k % 2 == 0 else 0.42
            a = math.radians(-90.0 + 36.0 * k)
            out.append((r * math.cos(a), r * math.sin(a) + 0.08))
        return out
    if shape == "cross":
        w = 0.3
        return [
            (-w, -1.0), (w, -1.0), (w, -w), (1.0, -w), (1.0, w), (w, w),
            (w, 1.0), (-w, 1.0), (-w, w), (-1.0, w), (-1.0, -w), (-w, -w),
        ]  # fmt: skip
    if shape == "heart":
        out = []
        for k in range(48):
            t = 2.0 * math.pi * k / 48
            x = 16.0 * math.sin(t) ** 3
            y = 13.0 * math.cos(t) - 5.0 * math.cos(2 * t) - 2.0 * math.cos(3 * t) - math.cos(4 * t)
            out.append((x / 16.5, -y / 16.5 - 0.1))
        return out
    if shape == "arrow":
        return [
            (-1.0, -0.22), (0.15, -0.22), (0.15, -0.62), (1.0, 0.0),
            (0.15, 0.62), (0.15, 0.22), (-1.0, 0.22),
        ]  # fmt: skip
    raise ValueError(f"no polygon for shape {shape!r}")


def _mask(scene: Scene) -> FloatArray:
    """Anti-aliased coverage mask of the object, shape (H, W), values in [0, 1]."""
    big = IMAGE_SIZE * _SUPERSAMPLE
    img = Image.new("L", (big, big), 0)
    if scene.shape is None:
        return np.zeros((IMAGE_SIZE, IMAGE_SIZE))
    pen = ImageDraw.Draw(img)
    radius = scene.scale * big
    cx, cy = scene.centre[0] * big, scene.centre[1] * big

    def box(r: float) -> tuple[float, float, float, float]:
        return (cx - r, cy - r, cx + r, cy + r)

    if scene.shape == "circle":
        pen.ellipse(box(radius), fill=255)
    elif scene.shape == "ring":
        pen.ellipse(box(radius), fill=255)
        pen.ellipse(box(radius * 0.55), fill=0)
    else:
        theta = math.radians(scene.rotation)
        cos_t, sin_t = math.cos(theta), math.sin(theta)
        pts = [
            (cx + radius * (x * cos_t - y * sin_t), cy + radius * (x * sin_t + y * cos_t))
            for x, y in _polygon(scene.shape)
        ]
        pen.polygon(pts, fill=255)
    small = img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float64) / 255.0


def render_background(scene: Scene) -> FloatArray:
    """The background of ``scene`` as float RGB, shape (H, W, 3), values in [0, 255]."""
    n = IMAGE_SIZE
    a = np.asarray(scene.bg_colours[0], dtype=np.float64)
    b = np.asarray(scene.bg_colours[1], dtype=np.float64)
    ys, xs = np.mgrid[0:n, 0:n].astype(np.float64) + 0.5
    theta = math.radians(scene.bg_angle)
    u = xs * math.cos(theta) + ys * math.sin(theta)
    if scene.background == "plain":
        w = np.zeros((n, n))
    elif scene.background == "stripes":
        w = ((u / scene.bg_period) % 1.0 < 0.5).astype(np.float64)
    elif scene.background == "dots":
        p = scene.bg_period
        dx = (xs % p) - p / 2
        dy = (ys % p) - p / 2
        r = p * 0.22
        w = np.clip(r + 0.5 - np.sqrt(dx * dx + dy * dy), 0.0, 1.0)
    elif scene.background == "gradient":
        v = xs * math.cos(theta) + ys * math.sin(theta)
        w = (v - v.min()) / max(float(v.max() - v.min()), 1e-6)
    else:
        raise ValueError(f"unknown background {scene.background!r}")
    return a[None, None, :] * (1.0 - w[..., None]) + b[None, None, :] * w[..., None]


def draw(scene: Scene) -> Image.Image:
    """Render ``scene`` to a 64x64 RGB image (deterministic)."""
    bg = render_background(scene)
    m = _mask(scene)[..., None]
    paint = np.asarray(scene.rgb, dtype=np.float64)[None, None, :]
    img = bg * (1.0 - m) + paint * m
    if scene.noise_sigma > 0:
        rng = np.random.default_rng([scene.seed, 7])
        img = img + rng.normal(0.0, scene.noise_sigma, size=img.shape)
    out = Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), "RGB")
    if scene.blur > 0:
        out = out.filter(ImageFilter.GaussianBlur(scene.blur))
    return out


# --------------------------------------------------------------------------------------------------
# sampling


def _paint(
    colour: str, mix_with: str | None, mix: float, rng: np.random.Generator, *, jitter: bool
) -> RGB:
    base = np.asarray(COLOURS[colour], dtype=np.float64)
    if mix_with is not None and mix > 0:
        base = (1.0 - mix) * base + mix * np.asarray(COLOURS[mix_with], dtype=np.float64)
    # blends get less jitter, so their soft label stays an accurate description of the paint
    noise = rng.uniform(-1.0, 1.0, size=3) * (4.0 if mix > 0 else 12.0)
    if not jitter:
        noise[:] = 0.0
    r, g, b = (int(v) for v in np.clip(np.rint(base + noise), 0, 255))
    return (r, g, b)


def _bg_colour(rng: np.random.Generator) -> FloatArray:
    grey = rng.uniform(30.0, 225.0)
    tint = rng.uniform(-22.0, 22.0, size=3)
    return np.clip(grey + tint, 0.0, 255.0)


def _segment_distance(p: FloatArray, a: FloatArray, b: FloatArray) -> float:
    """Distance from colour ``p`` to the nearest colour on the blend from ``a`` to ``b``."""
    ab = b - a
    t = float(np.clip(np.dot(p - a, ab) / max(float(np.dot(ab, ab)), 1e-9), 0.0, 1.0))
    return float(np.linalg.norm(p - (a + t * ab)))


def _bg_colours(
    paint: RGB | None, rng: np.random.Generator, *, extra_margin: float = 0.0
) -> tuple[RGB, RGB]:
    """Two low-saturation background colours such that no blend of them (gradients, stripe and dot
    edges) comes near ``paint``: the object always stands out. Achromatic paint (white, black,
    grey) gets a wider margin, since it differs from the background in brightness only."""
    target = None if paint is None else np.asarray(paint, dtype=np.float64)
    achromatic = target is not None and float(target.max() - target.min()) < 40.0
    needed = (110.0 if achromatic else 90.0) + extra_margin
    best = (np.full(3, 60.0), np.full(3, 200.0))
    best_gap = -1.0
    for _ in range(200):
        a, b = _bg_colour(rng), _bg_colour(rng)
        if abs(float(a.mean() - b.mean())) < 20.0:
            continue
        gap = 1e9 if target is None else _segment_distance(target, a, b)
        if gap >= needed:
            best = (a, b)
            break
        if gap > best_gap:
            best, best_gap = (a, b), gap

    def as_rgb(v: FloatArray) -> RGB:
        r, g, b = (int(x) for x in np.rint(v))
        return (r, g, b)

    return as_rgb(best[0]), as_rgb(best[1])


def sample_scene(
    rng: np.random.Generator,
    *,
    seed: int,
    colour: str | None = None,
    shape: str | None = None,
    empty: bool = False,
    mix_with: str | None = None,
    mix: float = 0.0,
    background: str | None = None,
    scale: float | None = None,
    clear: bool = False,
    jitter: bool = True,
) -> Scene:
    """Draw a random scene; the given keyword arguments pin the corresponding properties.

    ``clear=True`` draws an unmistakable example (large, sharp, little noise, an unpatterned
    high-contrast background); ``jitter=False`` paints the exact (blended) colour instead of a
    slightly perturbed one.

    Raises:
        ValueError: for an unknown colour, shape or background name.
    """
    if colour is not None and colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}")
    if shape is not None and shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}")
    if mix_with is not None and mix_with not in COLOURS:
        raise ValueError(f"unknown colour {mix_with!r}")
    if background is not None and background not in BACKGROUNDS:
        raise ValueError(f"unknown background {background!r}")
    colour = colour if colour is not None else str(rng.choice(list(COLOURS)))
    obj_shape = None if empty else (shape if shape is not None else str(rng.choice(SHAPES)))
    backgrounds = CLEAR_BACKGROUNDS if clear else BACKGROUNDS
    background = background if background is not None else str(rng.choice(backgrounds))
    rgb = _paint(colour, mix_with, mix, rng, jitter=jitter)
    scale_range = CLEAR_SCALE_RANGE if clear else SCALE_RANGE
    scale = float(rng.uniform(*scale_range)) if scale is None else scale
    margin = min(scale * (1.2 if clear else 1.05), 0.5)  # clear objects never touch the border
    centre = (float(rng.uniform(margin, 1 - margin)), float(rng.uniform(margin, 1 - margin)))
    free_rotation = obj_shape in ("arrow", "circle", "ring")
    rotation = float(rng.uniform(-180, 180) if free_rotation else rng.uniform(-25, 25))
    paint = None if obj_shape is None else rgb
    bg_colours = _bg_colours(paint, rng, extra_margin=30.0 if clear else 0.0)
    bg_period = float(rng.uniform(5.0, 14.0))
    bg_angle = float(rng.choice([0.0, 45.0, 90.0, 135.0]) + rng.uniform(-8, 8))
    noise_sigma = float(rng.uniform(0.0, 3.0 if clear else 7.0))
    blur = float(rng.uniform(0.2, 0.8)) if rng.random() < 0.2 else 0.0
    if clear:
        blur = 0.0
    return Scene(
        shape=obj_shape,
        colour=colour,
        mix_with=mix_with,
        mix=mix if mix_with is not None else 0.0,
        rgb=rgb,
        scale=scale,
        centre=centre,
        rotation=rotation,
        background=background,
        bg_colours=bg_colours,
        bg_period=bg_period,
        bg_angle=bg_angle,
        noise_sigma=noise_sigma,
        blur=blur,
        seed=seed,
    )


def render(
    colour: str,
    shape: str,
    *,
    seed: int,
    mix_with: str | None = None,
    mix: float = 0.0,
    background: str | None = None,
    scale: float | None = None,
    clear: bool = False,
) -> Image.Image:
    """Render one object; unpinned properties (position, rotation, background...) follow ``seed``.

    Args:
        colour: a key of :data:`COLOURS`.
        shape: one of :data:`SHAPES`.
        seed: determines every random property of the image.
        mix_with: blend the paint toward this colour (see :data:`MIX_NEIGHBOURS`).
        mix: blend fraction in [0, 1]; 0.5 is exactly half way.
        background: one of :data:`BACKGROUNDS`; random if omitted.
        scale: object radius as a fraction of the image side (see :data:`SCALE_RANGE`).
        clear: draw an unmistakable example (large, sharp, little noise, plain or gradient
            high-contrast background).

    Raises:
        ValueError: for unknown names or a ``mix`` outside [0, 1].
    """
    if not 0.0 <= mix <= 1.0:
        raise ValueError(f"mix must be in [0, 1], got {mix}")
    rng = np.random.default_rng([seed, 1])
    scene = sample_scene(
        rng,
        seed=seed,
        colour=colour,
        shape=shape,
        mix_with=mix_with,
        mix=mix,
        background=background,
        scale=scale,
        clear=clear,
    )
    return draw(scene)


def training_example(
    rng: np.random.Generator, *, seed: int, mix_prob: float = 0.4, empty_prob: float = 0.06
) -> Scene:
    """One training scene: mostly pure objects, some colour blends, a few empty backgrounds.

    Blend fractions have density rising toward 0.5, so the model sees many borderline paints and
    learns where "half way" lies precisely.
    """
    u = rng.random()
    if u < empty_prob:
        return sample_scene(rng, seed=seed, empty=True)
    colour = str(rng.choice(list(COLOURS)))
    if u < empty_prob + mix_prob and MIX_NEIGHBOURS[colour]:
        neighbour = str(rng.choice(MIX_NEIGHBOURS[colour]))
        mix = 0.5 * float(np.sqrt(rng.random()))
        return sample_scene(rng, seed=seed, colour=colour, mix_with=neighbour, mix=mix)
    return sample_scene(rng, seed=seed, colour=colour)


# --------------------------------------------------------------------------------------------------
# moderation bands of the test-world policy (assets/testworld.yaml)

#: Clearly forbidden objects: (colour, shape).
_BLOCK: Final = (("red", "star"), ("black", "cross"), ("blue", "ring"))
#: Look-alikes that must stay allowed.
_ALLOW: Final = (
    ("yellow", "star"), ("orange", "star"), ("purple", "star"), ("red", "circle"),
    ("red", "heart"), ("red", "cross"), ("white", "cross"), ("black", "square"),
    ("purple", "cross"), ("black", "star"), ("green", "ring"), ("purple", "ring"),
    ("blue", "circle"), ("white", "ring"), ("yellow", "heart"), ("green", "arrow"),
)  # fmt: skip
#: Genuinely in-between paint: (colour, neighbour, shape), blended exactly half way.
_REVIEW: Final = (
    ("red", "orange", "star"),
    ("blue", "purple", "ring"),
    ("red", "purple", "star"),
)


def sample_images(kind: Band, n: int, seed: int) -> list[tuple[Image.Image, str]]:
    """Fresh images for one decision band of the test-world policy, with a short label each.

    ``"block"``: clear red stars, black crosses and blue rings. ``"allow"``: look-alikes (yellow
    star, red circle, white cross, ...) and empty backgrounds. ``"review"``: objects painted half
    way between a forbidden colour and an allowed neighbour (orange-red star, violet ring,
    crimson-magenta star).

    Raises:
        ValueError: for an unknown ``kind`` or a negative ``n``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    out: list[tuple[Image.Image, str]] = []
    for i in range(n):
        sub = int(np.random.default_rng([seed, 0xBA5D, i]).integers(2**31))
        rng = np.random.default_rng([sub, 2])
        if kind == "block":
            colour, shape = _BLOCK[i % len(_BLOCK)]
            scene = sample_scene(
                rng, seed=sub, colour=colour, shape=shape, clear=True, jitter=False
            )
            label = f"{colour} {shape}"
        elif kind == "allow":
            if i % 8 == 7:
                scene = sample_scene(rng, seed=sub, empty=True, clear=True)
                label = f"{scene.background} background"
            else:
                colour, shape = _ALLOW[(i - i // 8) % len(_ALLOW)]
                scene = sample_scene(
                    rng, seed=sub, colour=colour, shape=shape, clear=True, jitter=False
                )
                label = f"{colour} {shape}"
        elif kind == "review":
            colour, other, shape = _REVIEW[i % len(_REVIEW)]
            scene = sample_scene(
                rng,
                seed=sub,
                colour=colour,
                shape=shape,
                mix_with=other,
                mix=0.5,
                clear=True,
                jitter=False,
            )
            label = f"{colour}/{other} {shape} (half way)"
        else:
            raise ValueError(f"unknown band {kind!r}")
        out.append((draw(scene), label))
    return out


# --------------------------------------------------------------------------------------------------
# labelled sets for evaluation and calibration

#: The forbidden object of each category of the test-world policy.
CATEGORY_OBJECTS: Final[dict[str, tuple[str, str]]] = {
    "contraband_symbol": ("red", "star"),
    "hate_symbol_analogue": ("black", "cross"),
    "restricted_logo": ("blue", "ring"),
}


@dataclass(frozen=True, slots=True)
class LabelledImage:
    """A drawn image with its ground truth: the test-world categories it violates."""

    image: Image.Image
    labels: tuple[str, ...]
    description: str


def _violates(colour: str, mix_with: str | None, mix: float, shape: str | None) -> tuple[str, ...]:
    """Ground truth: the object is a forbidden one when its paint is nearer the forbidden colour
    than any other name (a blend counts as its nearer colour)."""
    if shape is None:
        return ()
    nearer = mix_with if mix_with is not None and mix > 0.5 else colour
    return tuple(c for c, obj in CATEGORY_OBJECTS.items() if obj == (nearer, shape))


def labelled_images(n: int, seed: int) -> list[LabelledImage]:
    """``n`` fresh images with ground-truth category labels, for evaluation and calibration.

    A realistic mix rather than the clear examples of :func:`sample_images`: a sixth are
    forbidden objects (pure, or blended part-way toward an allowed neighbour), a sixth their
    look-alikes (the forbidden shape in a neighbouring colour blended part-way toward the
    forbidden one, or the forbidden colour on another shape), and the rest random scenes; half
    are drawn hard (small, noisy, patterned backgrounds). Blends never go past 0.46 toward the
    other colour, so every label is true of the paint, while the scores of blends near half way
    overlap across the label boundary: thresholds matter.

    Raises:
        ValueError: for a negative ``n``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    categories = list(CATEGORY_OBJECTS)
    out: list[LabelledImage] = []
    for i in range(n):
        sub = int(np.random.default_rng([seed, 0x1ABE1, i]).integers(2**31))
        rng = np.random.default_rng([sub, 3])
        clear = bool(i % 2)
        kind = i % 6
        colour: str
        mix_with: str | None = None
        mix = 0.0
        shape: str | None
        if kind in (0, 1):
            colour, shape = CATEGORY_OBJECTS[categories[(i // 6) % len(categories)]]
            if kind == 0:  # the forbidden object itself, maybe blended toward a neighbour
                if MIX_NEIGHBOURS[colour] and rng.random() < 0.7:
                    mix_with = str(rng.choice(MIX_NEIGHBOURS[colour]))
                    mix = float(rng.uniform(0.0, 0.46))
            elif MIX_NEIGHBOURS[colour] and rng.random() < 0.6:  # neighbour blended toward it
                forbidden = colour
                colour = str(rng.choice(MIX_NEIGHBOURS[forbidden]))
                mix_with, mix = forbidden, float(rng.uniform(0.0, 0.46))
            elif rng.random() < 0.5:  # another colour, same shape
                colour = str(rng.choice([c for c in COLOURS if c != colour]))
            else:  # same colour, another shape
                shape = str(rng.choice([s for s in SHAPES if s != shape]))
            scene = sample_scene(
                rng,
                seed=sub,
                colour=colour,
                shape=shape,
                mix_with=mix_with,
                mix=mix,
                clear=clear,
            )
        else:
            scene = sample_scene(rng, seed=sub, empty=rng.random() < 0.1, clear=clear)
            colour, shape = scene.colour, scene.shape
        labels = _violates(colour, mix_with, mix, shape)
        if scene.shape is None:
            text = f"{scene.background} background"
        elif mix_with is not None:
            text = f"{colour} {shape} blended {mix:.2f} toward {mix_with}"
        else:
            text = f"{colour} {shape}"
        out.append(LabelledImage(draw(scene), labels, text + ("" if clear else " (hard)")))
    return out
