"""Searching PDQ hashes by Hamming distance: exact brute force (faiss) and an exact multi-index
table for big banks, one immutable :class:`BankIndex` per bank version, and
:class:`LoadedBanks`, the banks a process matches against."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache

import faiss
import numpy as np
from numpy.typing import NDArray
from threatexchange.signal_type.pdq.pdq_utils import BITS_IN_PDQ

from moderation.core.banks import BankEntry, Segment
from moderation.signals.hash_bank.pdq_hasher import HASH_BYTES, HashArray, pdq_hex

__all__ = [
    "DEFAULT_FLAT_MAX",
    "BankIndex",
    "EntryLookup",
    "FlatIndex",
    "LoadedBanks",
    "Match",
    "MultiIndex",
    "build_index",
]

#: Banks up to this many hashes are searched by brute force (faiss); bigger ones by MultiIndex.
DEFAULT_FLAT_MAX = 262_144


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
        self._quarantined: dict[str, frozenset[int]] = {}
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

    def quarantined(self, name: str) -> frozenset[int]:
        """The ids of the bank's quarantined entries (their matches go to review)."""
        return self._quarantined.get(name, frozenset())

    def set_quarantined(self, states: dict[str, frozenset[int]]) -> None:
        """Replace every bank's quarantined ids at once (one reference swap)."""
        self._quarantined = {k: v for k, v in states.items() if v}

    def versions(self) -> dict[str, int]:
        return {name: index.version for name, index in sorted(self._banks.items())}

    def describe(self) -> dict[str, dict[str, int]]:
        """Per bank: version, live entries, resident index bytes (for heartbeats)."""
        return {
            name: {"version": b.version, "entries": b.live, "index_bytes": b.nbytes}
            for name, b in sorted(self._banks.items())
        }
