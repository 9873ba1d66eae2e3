"""vPDQ: a video's perceptual hash, one PDQ hash per sampled frame, and ThreatExchange's rule
for matching two of them. Pure (no I/O).

A vPDQ hash is a list of :class:`VpdqFrame` (frame number, quality, PDQ hash, timestamp). Two
serializations are read and written, as the ThreatExchange ecosystem writes them:

* the **per-video text format** of Meta's reference ``vpdq`` (``vpdq/cpp/io/vpdqio.cpp``,
  ``vpdq-hash-video``): one line per frame, ``frame_number,quality,hash,timestamp`` with the
  timestamp at 3 decimals;
* the **signal string** of ``threatexchange``'s ``VPDQSignal``
  (``threatexchange/extensions/vpdq/vpdq_util.py``): a JSON list of ``"hash,quality,timestamp"``
  strings (no frame numbers: read back, frames are numbered in order).

**Matching** (:func:`match_shares`, :class:`VpdqRule`), with the semantics of ``VPDQSignal``
and its ``VPDQIndex`` (``vpdq_brute_matcher.py``, ``vpdq_index.py``): frames of quality below 50
are dropped from both videos and repeated hashes are kept once; a query frame *matches* when
some frame of the other video is within 31 bits. ``query share`` is the percentage of the
query's frames that match, ``indexed share`` the percentage of the banked video's frames that
some query frame matches. ThreatExchange's defaults call a banked video matched when the query
share is at least 80 % and the indexed share at least 0 %; a policy may ask for other shares
(e.g. a high indexed share to find a banked clip inside a longer upload).
"""

from __future__ import annotations

import json
import math
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "VPDQ_DISTANCE_THRESHOLD",
    "VPDQ_INDEXED_MATCH_PERCENT",
    "VPDQ_QUALITY_THRESHOLD",
    "VPDQ_QUERY_MATCH_PERCENT",
    "VpdqFormatError",
    "VpdqFrame",
    "VpdqRule",
    "VpdqShares",
    "format_signal",
    "format_text",
    "hamming",
    "match_brute",
    "match_shares",
    "parse_signal",
    "parse_text",
    "prepared",
]

#: ThreatExchange's ``VPDQ_QUALITY_THRESHOLD``: frames of lower quality are never compared.
VPDQ_QUALITY_THRESHOLD = 50
#: ThreatExchange's ``VPDQ_DISTANCE_THRESHOLD``: two frames match within this many bits.
VPDQ_DISTANCE_THRESHOLD = 31
#: ThreatExchange's ``VPDQ_QUERY_MATCH_THRESHOLD_PERCENT``.
VPDQ_QUERY_MATCH_PERCENT = 80.0
#: ThreatExchange's ``VPDQ_INDEX_MATCH_THRESHOLD_PERCENT``.
VPDQ_INDEXED_MATCH_PERCENT = 0.0
_HEX = frozenset("0123456789abcdef")


class VpdqFormatError(ValueError):
    """A malformed vPDQ line or signal string (the message names the line)."""


@dataclass(frozen=True, slots=True)
class VpdqFrame:
    """One frame of a vPDQ hash."""

    frame_number: int
    quality: int
    pdq: str  # 64 lowercase hex digits
    timestamp_s: float

    def text_line(self) -> str:
        """``frame_number,quality,hash,timestamp`` (the reference's per-video format)."""
        return f"{self.frame_number},{self.quality},{self.pdq},{self.timestamp_s:.3f}"


def _frame(frame_number: int, quality: int, pdq: str, timestamp_s: float, where: str) -> VpdqFrame:
    pdq = pdq.strip().lower()
    if len(pdq) != 64 or not set(pdq) <= _HEX:
        raise VpdqFormatError(f"{where}: not a 64-digit hexadecimal PDQ hash: {pdq[:80]!r}")
    if not 0 <= quality <= 100:
        raise VpdqFormatError(f"{where}: quality {quality} outside 0-100")
    if frame_number < 0:
        raise VpdqFormatError(f"{where}: negative frame number {frame_number}")
    if not math.isfinite(timestamp_s) or timestamp_s < 0:
        raise VpdqFormatError(f"{where}: invalid timestamp {timestamp_s}")
    return VpdqFrame(frame_number, quality, pdq, timestamp_s)


def parse_text(text: str) -> list[VpdqFrame]:
    """Frames of the reference's per-video text format (blank lines and ``#`` comments skipped).

    Raises:
        VpdqFormatError: a line without 4 fields, a bad number, hash, quality or timestamp, or
            no frame at all.
    """
    out: list[VpdqFrame] = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        cells = line.split(",")
        if len(cells) != 4:
            raise VpdqFormatError(
                f"line {number}: expected frame_number,quality,hash,timestamp; got {len(cells)}"
                " fields"
            )
        try:
            frame_number, quality, timestamp = int(cells[0]), int(cells[1]), float(cells[3])
        except ValueError:
            raise VpdqFormatError(f"line {number}: not a number in {line[:120]!r}") from None
        out.append(_frame(frame_number, quality, cells[2], timestamp, f"line {number}"))
    if not out:
        raise VpdqFormatError("no frames: an empty vPDQ hash")
    return out


def format_text(frames: Iterable[VpdqFrame]) -> str:
    """The per-video text format, one line per frame, newline-terminated."""
    return "".join(f.text_line() + "\n" for f in frames)


def parse_signal(signal: str) -> list[VpdqFrame]:
    """Frames of ThreatExchange's ``VPDQSignal`` signal string (numbered 0, 1, ... in order).

    Raises:
        VpdqFormatError: not a JSON list of ``"hash,quality,timestamp"`` strings, or empty.
    """
    try:
        items = json.loads(signal or "[]")
    except json.JSONDecodeError as exc:
        raise VpdqFormatError(f"not a vPDQ signal string (JSON): {exc}") from None
    if not isinstance(items, list):
        raise VpdqFormatError("a vPDQ signal string is a JSON list")
    out = []
    for k, item in enumerate(items):
        where = f"frame {k}"
        if not isinstance(item, str) or item.count(",") != 2:
            raise VpdqFormatError(f"{where}: expected 'hash,quality,timestamp'")
        pdq, quality, timestamp = item.split(",")
        try:
            out.append(_frame(k, int(quality), pdq, float(timestamp), where))
        except ValueError as exc:
            if isinstance(exc, VpdqFormatError):
                raise
            raise VpdqFormatError(f"{where}: not a number in {item[:120]!r}") from None
    if not out:
        raise VpdqFormatError("no frames: an empty vPDQ hash")
    return out


def format_signal(frames: Iterable[VpdqFrame]) -> str:
    """ThreatExchange's signal string (``vpdq_to_json``; the timestamp with Python's
    ``:.3`` format, as ``VpdqCompactFeature.__str__`` writes it)."""
    return json.dumps([f"{f.pdq},{f.quality},{f.timestamp_s:.3}" for f in frames])


def prepared(
    frames: Iterable[VpdqFrame], quality_threshold: int = VPDQ_QUALITY_THRESHOLD
) -> list[VpdqFrame]:
    """The frames that take part in matching: quality at least ``quality_threshold``, each hash
    once (the first frame that has it), as ``prepare_vpdq_feature``."""
    seen: set[str] = set()
    out = []
    for f in frames:
        if f.quality >= quality_threshold and f.pdq not in seen:
            seen.add(f.pdq)
            out.append(f)
    return out


def hamming(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()


@dataclass(frozen=True, slots=True)
class VpdqShares:
    """How much of two videos matched, in percent."""

    query_percent: float
    indexed_percent: float


@dataclass(frozen=True, slots=True)
class VpdqRule:
    """When a banked video counts as matched (defaults: ThreatExchange's ``VPDQSignal``)."""

    query_percent: float = VPDQ_QUERY_MATCH_PERCENT
    indexed_percent: float = VPDQ_INDEXED_MATCH_PERCENT
    max_distance: int = VPDQ_DISTANCE_THRESHOLD
    min_quality: int = VPDQ_QUALITY_THRESHOLD

    def matched(self, shares: VpdqShares) -> bool:
        return (
            shares.query_percent >= self.query_percent
            and shares.indexed_percent >= self.indexed_percent
        )


def match_shares(
    query_frames: int, indexed_frames: int, pairs: Iterable[tuple[Hashable, Hashable]]
) -> VpdqShares:
    """The shares of one query against one banked video, from the pairs of *prepared* frames
    (query frame, banked frame) within the distance threshold: distinct query frames matched
    over ``query_frames``, distinct banked frames matched over ``indexed_frames``.

    Raises:
        ValueError: a video with no prepared frame (ThreatExchange neither indexes nor queries
            one).
    """
    if query_frames <= 0 or indexed_frames <= 0:
        raise ValueError("a vPDQ match needs at least one frame on each side")
    queries: set[Hashable] = set()
    indexed: set[Hashable] = set()
    for q, i in pairs:
        queries.add(q)
        indexed.add(i)
    return VpdqShares(len(queries) * 100 / query_frames, len(indexed) * 100 / indexed_frames)


def match_brute(
    query: Sequence[VpdqFrame], banked: Sequence[VpdqFrame], rule: VpdqRule | None = None
) -> VpdqShares:
    """Every prepared frame of one video against every one of the other (as
    ``match_VPDQ_hash_brute``). For tests and tools; banks use an index.

    Raises:
        ValueError: a video with no frame of usable quality.
    """
    rule = rule or VpdqRule()
    q = prepared(query, rule.min_quality)
    b = prepared(banked, rule.min_quality)
    pairs = [
        (i, j)
        for i, fq in enumerate(q)
        for j, fb in enumerate(b)
        if hamming(fq.pdq, fb.pdq) <= rule.max_distance
    ]
    return match_shares(len(q), len(b), pairs)
