r"""The hash-bank signal (``signal: hash_bank``): known-bad images by PDQ perceptual hash.

Zero-shot prompts find *new* content that looks like a category; a bank finds *known* content
that someone (a trust-and-safety team, a hash-sharing programme) has already identified. A
policy category backed by a bank::

    - id: known_terror
      signal: hash_bank
      bank: {name: gifct-tvec, max_distance: 31, min_quality: 50}
      thresholds: {review: 0.5, block: 0.85}

scores, for an image whose PDQ hash ``h`` has quality ``q``::

    score = 1 − d / 256    d = min Hamming distance from h to a live entry of the bank,
                               if d ≤ max_distance and q ≥ min_quality
    score = 0              otherwise (no entry that close, or a hash too unreliable to match)

so a match at PDQ's usual 31 bits scores 0.879 and an exact copy 1.0; the thresholds above block
every match (``block: 0.95`` would block matches within 12 bits and review the rest). Its
evidence names the bank, the entry (label, source, date added, reference id), the distance and
the quality, and meets prompt categories in the same bands and most-severe rule.

Where each part comes from:

* **Hashing**: ``pdqhash`` (Meta's reference C++ PDQ, wrapped); bit order and hex as
  ThreatExchange writes them. The frame is hashed at a short side in ``[256, 512)`` (integer
  box reduction of the decoded frame; smaller images as they are). A frame with a uniform border
  (a frame, letterboxing) is hashed a second time without it, and either hash may match.
* **Signal constants and validation**: ``threatexchange``'s ``PdqSignal`` (name ``pdq``,
  ``HASH_PDQ``, the quality threshold 50 below which ThreatExchange does not match, hex
  validation) and its PDQ match threshold (31).
* **Search**: ``faiss`` ``IndexBinaryFlat`` (exact, brute force) for banks up to
  ``flat_max`` hashes and for the recently added rows of any bank; bigger banks use
  :class:`MultiIndex`, an exact multi-index hashing table built with numpy (see its docstring
  for why faiss's ``IndexBinaryMultiHash``, which ``threatexchange``'s ``PDQIndex`` wraps, does not
  fit 10 million hashes in 1 GB). Both return exactly the brute-force matches.

A process matches against :class:`LoadedBanks`, which the bank synchroniser
(:mod:`moderation.pipeline.banks`) keeps current: it swaps a whole new :class:`BankIndex` in when
a bank changes, so a query always sees one consistent version.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import faiss
import numpy as np
import pdqhash
from numpy.typing import NDArray
from threatexchange.signal_type.pdq.pdq_utils import BITS_IN_PDQ, PDQ_CONFIDENT_MATCH_THRESHOLD
from threatexchange.signal_type.pdq.signal import PdqSignal

from moderation.core.banks import BankEntry, Segment
from moderation.core.policy import HASH_BANK_SIGNAL
from moderation.core.scoring import CategorySlot, Evidence, FeatureBatch
from moderation.exceptions import InvalidHashError, ModerationError

__all__ = [
    "DEFAULT_FLAT_MAX",
    "HASH_BYTES",
    "MATCH_THRESHOLD",
    "PDQ_SIDE",
    "QUALITY_THRESHOLD",
    "BankIndex",
    "HashBankScorer",
    "HashBankSignal",
    "LoadedBanks",
    "Match",
    "MultiIndex",
    "PdqFeature",
    "hash_frame",
    "parse_pdq",
    "pdq_bytes",
    "pdq_hex",
]

log = logging.getLogger(__name__)

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
#: Banks up to this many hashes are searched by brute force (faiss); bigger ones by MultiIndex.
DEFAULT_FLAT_MAX = 262_144

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


# --- exact Hamming range search ------------------------------------------------------------------


def _as_words(codes: HashArray) -> NDArray[np.uint64]:
    return np.ascontiguousarray(codes).view(np.uint64).reshape(-1, HASH_BYTES // 8)


def _distances(words: NDArray[np.uint64], query: NDArray[np.uint64]) -> NDArray[np.int32]:
    counts = np.bitwise_count(words ^ query).astype(np.int32)
    total: NDArray[np.int32] = counts[:, 0] + counts[:, 1] + counts[:, 2] + counts[:, 3]
    return total


@cache
def _flip_masks(width: int, flips: int) -> NDArray[np.int64]:
    """Every XOR mask of at most ``flips`` set bits in ``width`` bits (the probes of one chunk)."""
    masks = [0]
    for k in range(1, flips + 1):
        for bits in itertools.combinations(range(width), k):
            masks.append(sum(1 << b for b in bits))
    return np.array(masks, dtype=np.int64)


class MultiIndex:
    r"""Exact Hamming range search by multi-index hashing (Norouzi, Punjani & Fleet, CVPR 2012).

    The 256 bits are cut into ``m = 12`` chunks of 21-22 bits (three per 64-bit word). If two
    hashes differ in at most ``r = m·r' + a`` bits (``0 ≤ a < m``), then at least one of the
    first ``a + 1`` chunks differs in at most ``r'`` bits or one of the others in at most
    ``r' − 1`` (pigeonhole), so probing every chunk value within that many bit flips of the
    query's finds every match; candidates are then checked on all 256 bits. For ``r = 31``:
    2,124 probes; about ``N · 2,124 / 2^21.3`` candidates (≈ 8,000 for 10 M random hashes).

    Memory per hash: 32 bytes of hash + 12 × 4 bytes of posting (ids sorted by chunk value), plus
    a fixed 134 MB of bucket offsets: 934 MB for 10 M hashes. faiss's ``IndexBinaryMultiHash``
    (what ``threatexchange``'s ``PDQIndex`` wraps) keeps 8-byte ids in hash maps of vectors:
    351 MB per million hashes measured here (``PDQIndex``: 650 MB), 3.5 GB or more for 10 M,
    so it does not fit the budget (``bench/banks.py`` compares them).

    Radii above :attr:`MAX_RADIUS` (where probing costs more than scanning) scan every hash.
    """

    WIDTHS = (22, 21, 21)  # per 64-bit word
    MAX_RADIUS = 47
    QUERY_BLOCK = 4

    def __init__(self, codes: HashArray) -> None:
        self.words = _as_words(codes)
        n = len(self.words)
        if n >= 2**32:
            raise ValueError("MultiIndex holds fewer than 2^32 hashes")
        self.chunks: list[tuple[int, int, int]] = []  # (word, shift, width)
        for word in range(HASH_BYTES // 8):
            shift = 0
            for width in self.WIDTHS:
                self.chunks.append((word, shift, width))
                shift += width
        sizes = [(1 << width) + 1 for _, _, width in self.chunks]
        self.base = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self.offsets = np.empty(sum(sizes), dtype=np.uint32)
        self.postings = np.empty(len(self.chunks) * n, dtype=np.uint32)
        for c, (word, shift, width) in enumerate(self.chunks):
            keys = self._keys(self.words[:, word], shift, width)
            self.postings[c * n : (c + 1) * n] = np.argsort(keys, kind="stable")
            counts = np.bincount(keys, minlength=1 << width)
            offsets = self.offsets[self.base[c] : self.base[c] + (1 << width) + 1]
            offsets[0] = c * n
            offsets[1:] = c * n + np.cumsum(counts)

    @staticmethod
    def _keys(word: NDArray[np.uint64], shift: int, width: int) -> NDArray[np.int64]:
        return ((word >> np.uint64(shift)) & np.uint64((1 << width) - 1)).astype(np.int64)

    def __len__(self) -> int:
        return len(self.words)

    @property
    def nbytes(self) -> int:
        return int(self.words.nbytes + self.offsets.nbytes + self.postings.nbytes)

    def search(
        self, queries: HashArray, radius: int
    ) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.int32]]:
        """Every (query, row, distance) with distance ≤ ``radius``, each pair once."""
        q = _as_words(queries)
        if radius > self.MAX_RADIUS:
            return self._scan(q, radius)
        if len(q) <= self.QUERY_BLOCK:
            return self._probe(q, radius)
        # A few queries at a time: the candidate arrays stay small enough for the caches.
        parts = [
            self._probe(q[start : start + self.QUERY_BLOCK], radius)
            for start in range(0, len(q), self.QUERY_BLOCK)
        ]
        offsets = range(0, len(q), self.QUERY_BLOCK)
        return (
            np.concatenate([p[0] + start for p, start in zip(parts, offsets, strict=True)]),
            np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]),
        )

    def _probe(
        self, q: NDArray[np.uint64], radius: int
    ) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.int32]]:
        flips, extra = divmod(radius, len(self.chunks))
        probes = []
        for c, (word, shift, width) in enumerate(self.chunks):
            r = flips if c <= extra else flips - 1
            if r < 0:
                continue
            keys = self._keys(q[:, word], shift, width)
            probes.append(self.base[c] + (keys[:, None] ^ _flip_masks(width, r)[None, :]))
        buckets = np.concatenate(probes, axis=1)  # (Q, P)
        starts = self.offsets[buckets].astype(np.int64).ravel()
        lengths = self.offsets[buckets + 1].astype(np.int64).ravel() - starts
        total = int(lengths.sum())
        if total == 0:
            return _empty_matches()
        ends = np.cumsum(lengths)
        positions = np.repeat(starts - (ends - lengths), lengths) + np.arange(total)
        rows = self.postings[positions].astype(np.intp)
        qids = np.repeat(np.arange(len(q)), lengths.reshape(len(q), -1).sum(axis=1))
        counts = np.bitwise_count(self.words[rows] ^ q[qids]).astype(np.int32)
        dist = counts[:, 0] + counts[:, 1] + counts[:, 2] + counts[:, 3]
        keep = dist <= radius
        qids, rows, dist = qids[keep], rows[keep], dist[keep]
        if len(rows) > 1:  # a match can be found through several chunks: keep each pair once
            pair = qids.astype(np.int64) * len(self.words) + rows
            _, first = np.unique(pair, return_index=True)
            qids, rows, dist = qids[first], rows[first], dist[first]
        return qids, rows, dist

    def _scan(
        self, q: NDArray[np.uint64], radius: int
    ) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.int32]]:
        found_q, found_r, found_d = [], [], []
        for i, query in enumerate(q):
            dist = _distances(self.words, query)
            rows = np.flatnonzero(dist <= radius)
            found_q.append(np.full(len(rows), i, np.intp))
            found_r.append(rows)
            found_d.append(dist[rows])
        if not found_q:
            return _empty_matches()
        return np.concatenate(found_q), np.concatenate(found_r), np.concatenate(found_d)


def _empty_matches() -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.int32]]:
    return np.empty(0, np.intp), np.empty(0, np.intp), np.empty(0, np.int32)


class FlatIndex:
    """Brute force with faiss's ``IndexBinaryFlat`` (exact; fastest for small banks)."""

    def __init__(self, codes: HashArray) -> None:
        self.index = faiss.IndexBinaryFlat(BITS_IN_PDQ)
        if len(codes):
            self.index.add(np.ascontiguousarray(codes))
        self.count = len(codes)

    def __len__(self) -> int:
        return self.count

    @property
    def nbytes(self) -> int:
        return self.count * HASH_BYTES

    def search(
        self, queries: HashArray, radius: int
    ) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.int32]]:
        if self.count == 0 or len(queries) == 0:
            return _empty_matches()
        # This thread's OpenMP team: one. A few queries are too little work to split, and teams
        # spawned from many worker threads at once oversubscribe the cores and spin (measured:
        # p50 from 0.1 ms to 17 ms under load). The setting is per calling thread.
        faiss.omp_set_num_threads(1)
        limits, dist, rows = self.index.range_search(np.ascontiguousarray(queries), radius + 1)
        qids = np.repeat(np.arange(len(queries)), np.diff(limits).astype(np.intp))
        return qids, rows.astype(np.intp), dist.astype(np.int32)


def build_index(codes: HashArray, *, flat_max: int = DEFAULT_FLAT_MAX) -> FlatIndex | MultiIndex:
    """The exact index that pays for this many hashes."""
    return FlatIndex(codes) if len(codes) <= flat_max else MultiIndex(codes)


# --- a loaded bank -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Match:
    """A live bank entry within the search radius of a query hash."""

    entry_id: int
    distance: int
    row: int


@dataclass(frozen=True)
class BankIndex:
    """One version of one bank, ready to search: immutable, replaced whole on change.

    Rows ``[0, base_rows)`` are in ``base`` (flat or multi-index), the rows added since the last
    full build in ``delta`` (always flat, rebuilt cheaply on every addition). Row ``r`` is entry
    ``first_id[s] + r − row_start[s]`` of segment ``s``; removed entries stay in the index and are
    filtered out of results until the next full build drops them.
    """

    name: str
    version: int
    base: FlatIndex | MultiIndex
    base_codes: HashArray
    delta: FlatIndex
    delta_codes: HashArray
    segments: tuple[Segment, ...]
    removed: frozenset[int] = frozenset()
    #: The bank's creation stamp (a bank created again under the same name is another bank).
    epoch: str = ""
    row_start: NDArray[np.int64] = field(init=False)
    first_id: NDArray[np.int64] = field(init=False)

    def __post_init__(self) -> None:
        counts = np.array([s.count for s in self.segments], dtype=np.int64)
        object.__setattr__(self, "row_start", np.concatenate([[0], np.cumsum(counts)[:-1]]))
        object.__setattr__(
            self, "first_id", np.array([s.first_id for s in self.segments], dtype=np.int64)
        )

    @classmethod
    def build(
        cls,
        name: str,
        version: int,
        codes: HashArray,
        segments: Sequence[Segment],
        removed: Iterable[int] = (),
        *,
        flat_max: int = DEFAULT_FLAT_MAX,
        epoch: str = "",
    ) -> BankIndex:
        """A full build: every row in the base index."""
        if len(codes) != sum(s.count for s in segments):
            raise ValueError("codes and segments disagree on the number of rows")
        return cls(
            name=name,
            version=version,
            base=build_index(codes, flat_max=flat_max),
            base_codes=codes,
            delta=FlatIndex(codes[:0]),
            delta_codes=codes[:0],
            segments=tuple(segments),
            removed=frozenset(removed),
            epoch=epoch,
        )

    def updated(
        self,
        version: int,
        new_codes: HashArray,
        segments: Sequence[Segment],
        removed: Iterable[int],
    ) -> BankIndex:
        """This bank plus rows appended after its last row (into the flat delta) and a new set
        of removed ids: cheap, the base index is shared."""
        delta_codes = np.concatenate([self.delta_codes, new_codes]) if len(new_codes) else None
        return BankIndex(
            name=self.name,
            version=version,
            base=self.base,
            base_codes=self.base_codes,
            delta=FlatIndex(delta_codes) if delta_codes is not None else self.delta,
            delta_codes=delta_codes if delta_codes is not None else self.delta_codes,
            segments=tuple(segments),
            removed=frozenset(removed),
            epoch=self.epoch,
        )

    @property
    def rows(self) -> int:
        return len(self.base_codes) + len(self.delta_codes)

    @property
    def live(self) -> int:
        return self.rows - len(self.removed)

    @property
    def nbytes(self) -> int:
        """Resident bytes of the index: hashes (faiss keeps its own copy of a flat index's),
        postings, offsets."""
        copies = self.base_codes.nbytes if isinstance(self.base, FlatIndex) else 0
        return (
            self.base.nbytes
            + copies
            + self.delta.nbytes
            + self.delta_codes.nbytes
            + 2 * 8 * len(self.segments)
        )

    def entry_id(self, rows: NDArray[np.intp]) -> NDArray[np.int64]:
        seg = np.searchsorted(self.row_start, rows, side="right") - 1
        ids: NDArray[np.int64] = self.first_id[seg] + (rows - self.row_start[seg])
        return ids

    def code(self, row: int) -> str:
        base = len(self.base_codes)
        return pdq_hex(self.base_codes[row] if row < base else self.delta_codes[row - base])

    def search(self, queries: HashArray, radius: int) -> list[list[Match]]:
        """For each query, every live entry within ``radius`` bits, nearest first."""
        out: list[list[Match]] = [[] for _ in range(len(queries))]
        if len(queries) == 0 or self.rows == 0:
            return out
        parts = [self.base.search(queries, radius)]
        if len(self.delta):
            q, r, d = self.delta.search(queries, radius)
            parts.append((q, r + len(self.base_codes), d))
        for qids, rows, dist in parts:
            ids = self.entry_id(rows)
            for qi, row, entry_id, d in zip(
                qids.tolist(), rows.tolist(), ids.tolist(), dist.tolist(), strict=True
            ):
                if entry_id not in self.removed:
                    out[qi].append(Match(entry_id=entry_id, distance=d, row=row))
        for matches in out:
            matches.sort(key=lambda m: (m.distance, m.entry_id))
        return out


#: Looks up the metadata of entries of a bank (ids absent from the answer are gone).
EntryLookup = Callable[[str, Sequence[int]], Mapping[int, BankEntry]]


class LoadedBanks:
    """The banks a process matches against, by name. Thread-safe: readers take the mapping in
    one reference read; :meth:`put` and :meth:`drop` swap a new mapping in."""

    def __init__(self, lookup: EntryLookup | None = None) -> None:
        self._banks: dict[str, BankIndex] = {}
        self._lock = threading.Lock()
        self.lookup: EntryLookup = lookup or (lambda bank, ids: {})

    def get(self, name: str) -> BankIndex | None:
        return self._banks.get(name)

    def put(self, index: BankIndex) -> None:
        with self._lock:
            self._banks = {**self._banks, index.name: index}

    def drop(self, name: str) -> None:
        with self._lock:
            self._banks = {k: v for k, v in self._banks.items() if k != name}

    def names(self) -> list[str]:
        return sorted(self._banks)

    def versions(self) -> dict[str, int]:
        return {name: index.version for name, index in sorted(self._banks.items())}

    def describe(self) -> dict[str, dict[str, int]]:
        """Per bank: version, live entries, resident index bytes (for heartbeats)."""
        return {
            name: {"version": b.version, "entries": b.live, "index_bytes": b.nbytes}
            for name, b in sorted(self._banks.items())
        }


# --- the signal --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Found:
    """The nearest live entry of one bank for one image row."""

    match: Match
    quality: int
    variant: str
    query: str


@dataclass(frozen=True, slots=True)
class _Category:
    bank: str
    max_distance: int
    min_quality: int


class HashBankScores:
    """Scores of N rows against the bank categories, with what matched."""

    def __init__(
        self,
        scorer: HashBankScorer,
        scores: NDArray[np.float32],
        found: list[dict[str, _Found]],
        features: Sequence[PdqFeature | None],
    ) -> None:
        self.scorer = scorer
        self._scores = scores
        self.found = found
        self.features = features

    @property
    def scores(self) -> NDArray[np.float32]:
        return self._scores

    def evidence(self, rows: NDArray[np.intp], cols: NDArray[np.intp]) -> list[list[Evidence]]:
        wanted: dict[str, set[int]] = {}
        for row, col in zip(rows.tolist(), cols.tolist(), strict=True):
            category = self.scorer.categories[col]
            hit = self.found[row].get(category.bank)
            if hit is not None and self._scores[row, col] > 0:
                wanted.setdefault(category.bank, set()).add(hit.match.entry_id)
        entries: dict[str, Mapping[int, BankEntry]] = {}
        for bank, ids in wanted.items():
            try:
                entries[bank] = self.scorer.banks.lookup(bank, sorted(ids))
            except ModerationError as exc:  # the match stands; its metadata is missing
                log.warning("bank %s: entry metadata unavailable: %s", bank, exc)
                entries[bank] = {}
        out: list[list[Evidence]] = []
        for row, col in zip(rows.tolist(), cols.tolist(), strict=True):
            out.append([self._one(row, col, entries)])
        return out

    def _one(self, row: int, col: int, entries: Mapping[str, Mapping[int, BankEntry]]) -> Evidence:
        category = self.scorer.categories[col]
        feature = self.features[row]
        base: dict[str, Any] = {
            "bank": category.bank,
            "max_distance": category.max_distance,
            "quality": feature.quality if feature else None,
            "pdq": feature.hex if feature else None,
        }
        score = float(self._scores[row, col])
        hit = self.found[row].get(category.bank)
        if hit is not None and score > 0:
            entry = entries.get(category.bank, {}).get(hit.match.entry_id)
            details = {
                **base,
                "entry_id": hit.match.entry_id,
                "distance": hit.match.distance,
                "quality": hit.quality,
                "variant": hit.variant,
                "query_pdq": hit.query,
            }
            if entry is not None:
                details.update(entry.evidence_details())
            name = entry.label if entry is not None and entry.label else "entry"
            label = f"{category.bank} #{hit.match.entry_id}: {name}"
            return Evidence(HASH_BANK_SIGNAL, label, score, details)
        if feature is None:
            return Evidence(HASH_BANK_SIGNAL, "no PDQ hash for this image", 0.0, base)
        if feature.quality < category.min_quality and (
            feature.trimmed is None or feature.trimmed[1] < category.min_quality
        ):
            return Evidence(
                HASH_BANK_SIGNAL,
                f"hash quality {feature.quality} below {category.min_quality}: not matched",
                0.0,
                base,
            )
        return Evidence(
            HASH_BANK_SIGNAL,
            f"no entry of {category.bank} within {category.max_distance} bits",
            0.0,
            base,
        )


class HashBankScorer:
    """Scores rows against the bank categories of a policy set (built once per policy set; the
    banks themselves are read at each call, so a reloaded bank applies at once)."""

    def __init__(self, slots: Sequence[CategorySlot], banks: LoadedBanks) -> None:
        self.banks = banks
        self.categories: list[_Category] = []
        for slot in slots:
            ref = slot.category.category.bank
            if ref is None:  # the policy schema requires it; a compiled category may not
                raise ValueError(f"category {slot.key} uses signal hash_bank without a bank")
            self.categories.append(_Category(ref.name, ref.max_distance, ref.min_quality))
        self.radius: dict[str, int] = {}
        self.min_quality: dict[str, int] = {}
        for c in self.categories:
            self.radius[c.bank] = max(self.radius.get(c.bank, 0), c.max_distance)
            self.min_quality[c.bank] = min(self.min_quality.get(c.bank, 100), c.min_quality)
        self._missing_logged: set[str] = set()

    def score(self, batch: FeatureBatch) -> HashBankScores:
        n = len(batch)
        raw = batch.features.get(HASH_BANK_SIGNAL)
        features: list[PdqFeature | None] = list(raw) if raw is not None else [None] * n
        found: list[dict[str, _Found]] = [{} for _ in range(n)]
        for bank, radius in self.radius.items():
            index = self.banks.get(bank)
            if index is None:
                if bank not in self._missing_logged:
                    self._missing_logged.add(bank)
                    log.error("bank %r is not loaded: its categories match nothing", bank)
                continue
            self._search(index, radius, self.min_quality[bank], features, found)
        scores = np.zeros((n, len(self.categories)), dtype=np.float32)
        for row in range(n):
            for col, category in enumerate(self.categories):
                hit = found[row].get(category.bank)
                if (
                    hit is not None
                    and hit.match.distance <= category.max_distance
                    and hit.quality >= category.min_quality
                ):
                    scores[row, col] = 1.0 - hit.match.distance / BITS_IN_PDQ
        return HashBankScores(self, scores, found, features)

    @staticmethod
    def _search(
        index: BankIndex,
        radius: int,
        min_quality: int,
        features: Sequence[PdqFeature | None],
        found: list[dict[str, _Found]],
    ) -> None:
        owners: list[tuple[int, int, str, bytes]] = []  # (row, quality, variant, hash)
        for row, feature in enumerate(features):
            if feature is None:
                continue
            for digest, quality, variant in feature.queries():
                if quality >= min_quality:
                    owners.append((row, quality, variant, digest))
        if not owners:
            return
        queries = np.frombuffer(b"".join(o[3] for o in owners), dtype=np.uint8).reshape(
            -1, HASH_BYTES
        )
        for (row, quality, variant, digest), matches in zip(
            owners, index.search(queries, radius), strict=True
        ):
            if not matches:
                continue
            best = matches[0]
            current = found[row].get(index.name)
            if current is None or best.distance < current.match.distance:
                found[row][index.name] = _Found(best, quality, variant, digest.hex())


class HashBankSignal:
    """PDQ hashes of every image, matched against the loaded banks."""

    name = HASH_BANK_SIGNAL
    needs_image = True
    #: Decoded frames must keep at least this short side (when the image has it) for hashing.
    min_side = PDQ_SIDE

    def __init__(self, banks: LoadedBanks | None = None) -> None:
        self.banks = banks or LoadedBanks()

    def __reduce__(self) -> tuple[type[HashBankSignal], tuple[()]]:
        # Sent to a prepare process, the signal only hashes (features): its banks stay here.
        return (HashBankSignal, ())

    def features(self, image: Any) -> PdqFeature:
        return hash_frame(image)

    def fingerprint(self, feature: Any) -> dict[str, Any]:
        """The content identifiers kept with the job result and audit record."""
        if not isinstance(feature, PdqFeature):
            return {}
        return {"pdq": feature.hex, "pdq_quality": feature.quality}

    def scorer(self, slots: Sequence[CategorySlot]) -> HashBankScorer:
        return HashBankScorer(slots, self.banks)
