"""PDQ hashing of decoded frames (Meta's reference C++ through ``pdqhash``), hash parsing and
packing, with ThreatExchange's bit order, hex form and thresholds."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pdqhash
from numpy.typing import NDArray
from threatexchange.signal_type.pdq.pdq_utils import BITS_IN_PDQ, PDQ_CONFIDENT_MATCH_THRESHOLD
from threatexchange.signal_type.pdq.signal import PdqSignal

from moderation.exceptions import InvalidHashError

__all__ = [
    "HASH_BYTES",
    "MATCH_THRESHOLD",
    "PDQ_SIDE",
    "QUALITY_THRESHOLD",
    "HashArray",
    "PdqFeature",
    "hash_frame",
    "parse_pdq",
    "pdq_bytes",
    "pdq_hex",
]

HASH_BYTES = BITS_IN_PDQ // 8
#: PDQ's usual match threshold (bits), ThreatExchange's ``PDQ_CONFIDENT_MATCH_THRESHOLD``.
MATCH_THRESHOLD: int = PDQ_CONFIDENT_MATCH_THRESHOLD
#: Hashes of lower quality are too unreliable to match (ThreatExchange's PdqSignal).
QUALITY_THRESHOLD: int = PdqSignal.QUALITY_THRESHOLD
#: Frames are hashed at a short side in [PDQ_SIDE, 2 * PDQ_SIDE): the decode the CLIP models
#: need anyway (224 px), so hashing adds no decode work. PDQ reduces every frame to 64x64 first;
#: hashing a 640x480 photo at its full size costs 4x as long and gives nearly the same hash
#: (bench/pipeline.py's JPEGs: 6.7 bits apart on average, 14 at most; matches allow 31).
PDQ_SIDE = 224

HashArray = NDArray[np.uint8]  # (N, 32): one PDQ hash per row, bytes in hex order


# --- hashes ------------------------------------------------------------------------------------


def parse_pdq(text: str) -> str:
    """A PDQ hash as 64 lowercase hex digits.

    Raises:
        InvalidHashError: wrong length, or not hexadecimal.
    """
    value = text.strip().lower()
    if len(value) != BITS_IN_PDQ // 4:
        raise InvalidHashError(
            f"a PDQ hash is {BITS_IN_PDQ // 4} hex digits, got {len(value)}: {text.strip()[:80]!r}"
        )
    try:
        return PdqSignal.validate_signal_str(value)
    except ValueError:
        bad = next((c for c in value if c not in "0123456789abcdef"), "?")
        raise InvalidHashError(f"not a hexadecimal PDQ hash ({bad!r}): {value!r}") from None


def pdq_bytes(hashes: Iterable[str]) -> HashArray:
    """Validated hex hashes -> an (N, 32) uint8 array."""
    joined = "".join(hashes)
    return np.frombuffer(bytes.fromhex(joined), dtype=np.uint8).reshape(-1, HASH_BYTES).copy()


def pdq_hex(row: NDArray[np.uint8]) -> str:
    return bytes(row).hex()


@dataclass(frozen=True, slots=True)
class PdqFeature:
    """One frame's PDQ hash (32 bytes, hex order) and quality (0-100), plus the hash of the
    frame without its uniform border when it has one."""

    hash: bytes
    quality: int
    trimmed: tuple[bytes, int] | None = None

    @property
    def hex(self) -> str:
        return self.hash.hex()

    def queries(self) -> list[tuple[bytes, int, str]]:
        """(hash, quality, variant) to search with: the frame, then the frame without its
        border."""
        out = [(self.hash, self.quality, "frame")]
        if self.trimmed is not None:
            out.append((self.trimmed[0], self.trimmed[1], "without border"))
        return out


def _pdq(rgb: NDArray[np.uint8]) -> tuple[bytes, int]:
    bits, quality = pdqhash.compute(np.ascontiguousarray(rgb))
    return np.packbits(np.asarray(bits, dtype=np.uint8)).tobytes(), int(quality)


#: A border row or column differs from the border colour by at most this much (per channel).
_BORDER_TOLERANCE = 24


def _border(rgb: NDArray[np.uint8]) -> tuple[int, int, int, int] | None:
    """Rows/columns of uniform border colour on each side (top, bottom, left, right), or None
    when the image has no uniform border. At most a quarter of each side is taken."""
    h, w = rgb.shape[:2]
    if h < 16 or w < 16:
        return None
    corners = np.stack([rgb[0, 0], rgb[0, -1], rgb[-1, 0], rgb[-1, -1]]).astype(np.int16)
    colour = np.median(corners, axis=0)
    if np.abs(corners - colour).max() > _BORDER_TOLERANCE:
        return None

    def run(lines: Callable[[int], NDArray[np.uint8]], limit: int) -> int:
        n = 0
        while n < limit and np.abs(lines(n).astype(np.int16) - colour).max() <= _BORDER_TOLERANCE:
            n += 1
        return n

    top = run(lambda i: rgb[i], h // 4)
    bottom = run(lambda i: rgb[h - 1 - i], h // 4)
    left = run(lambda i: rgb[:, i], w // 4)
    right = run(lambda i: rgb[:, w - 1 - i], w // 4)
    if top + bottom + left + right == 0:
        return None
    return top, bottom, left, right


def hash_frame(frame: Any) -> PdqFeature:
    """PDQ hash and quality of one decoded RGB frame (a PIL image), hashed at a short side in
    ``[PDQ_SIDE, 2·PDQ_SIDE)``; images with a uniform border are hashed without it too."""
    short = min(frame.size)
    if short >= 2 * PDQ_SIDE:
        frame = frame.reduce(short // PDQ_SIDE)
    rgb = np.asarray(frame, dtype=np.uint8)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    digest, quality = _pdq(rgb[..., :3])
    border = _border(rgb)
    trimmed = None
    if border is not None:
        top, bottom, left, right = border
        inner = rgb[top : rgb.shape[0] - bottom, left : rgb.shape[1] - right, :3]
        trimmed = _pdq(inner)
    return PdqFeature(digest, quality, trimmed)
