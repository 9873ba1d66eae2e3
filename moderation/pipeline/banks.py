"""Hash-bank use cases: curating banks (``moderation bank``, reviewers' "remove and add to bank")
and keeping a process's loaded banks current (hot reload).

* :class:`BankService` creates, imports (all of a file or nothing, duplicates skipped), adds,
  removes, exports and matches, over any :class:`~moderation.ports.BankStore`.
* :class:`BankSync` keeps a process's :class:`~moderation.signals.hash_bank.LoadedBanks` equal to
  the store: :meth:`BankSync.refresh` (the worker's maintenance thread calls it every
  ``banks.reload_s``) polls one version number; on a change it applies removals and appended rows
  at once (a new :class:`~moderation.signals.hash_bank.BankIndex` sharing the big base index, plus
  a small flat index of the new rows) and leaves full rebuilds (a new bank, a delta grown past
  ``banks.rebuild_after`` rows, a bank recreated) to a background thread, which builds the new
  index off the scoring path and swaps it in with one reference assignment. Scoring never waits
  for an import.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
from numpy.typing import NDArray

from moderation.core.audit import record_for_bank_addition
from moderation.core.banks import BankEntry, BankInfo, BankManifest, EntryData, Segment
from moderation.core.review import HumanDecision, ReviewDecision, ReviewItem
from moderation.exceptions import BankBusy, BankError, BankExists, BankNotFound
from moderation.pipeline.bank_files import (
    BankFormat,
    EntryDefaults,
    parse_bank_text,
    write_bank_file,
)
from moderation.ports import AuditSink, BankRequest, BankStore, ImageDecoder
from moderation.signals.hash_bank import (
    DEFAULT_FLAT_MAX,
    HASH_BYTES,
    MATCH_THRESHOLD,
    PDQ_SIDE,
    QUALITY_THRESHOLD,
    BankIndex,
    LoadedBanks,
    Match,
    PdqFeature,
    hash_frame,
    pdq_bytes,
)

__all__ = [
    "AddReport",
    "BankHit",
    "BankService",
    "BankSync",
    "ImportReport",
    "image_feature",
    "load_codes",
    "load_index",
]

log = logging.getLogger(__name__)

Progress = Callable[[int], object]


def image_feature(decoder: ImageDecoder, data: bytes) -> PdqFeature:
    """The PDQ hash of an image's (first) frame, computed exactly as workers compute it.

    Raises:
        ImageError: corrupt, too large, or a format outside the allowlist.
    """
    return hash_frame(decoder.decode(data, min_side=PDQ_SIDE)[0])


def load_codes(store: BankStore, name: str, segments: Sequence[Segment]) -> NDArray[np.uint8]:
    """Every hash of ``segments`` as an (N, 32) array, in row order."""
    total = sum(s.count for s in segments)
    codes = np.empty((total, HASH_BYTES), dtype=np.uint8)
    row = 0
    for segment in segments:
        data = store.read_hashes(name, segment)
        if len(data) != segment.count * HASH_BYTES:
            raise BankError(f"bank {name!r}: segment {segment.number} is incomplete")
        codes[row : row + segment.count] = np.frombuffer(data, np.uint8).reshape(-1, HASH_BYTES)
        row += segment.count
    return codes


def load_index(
    store: BankStore,
    name: str,
    *,
    manifest: BankManifest | None = None,
    flat_max: int = DEFAULT_FLAT_MAX,
) -> BankIndex:
    """A full build of one bank from the store."""
    manifest = manifest or store.manifest(name)
    codes = load_codes(store, name, manifest.segments)
    return BankIndex.build(
        name,
        manifest.version,
        codes,
        manifest.segments,
        manifest.removed,
        flat_max=flat_max,
        epoch=manifest.epoch,
    )


# --- curating ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AddReport:
    """What an addition did: the id of every entry given (new or already there), in order."""

    bank: str
    ids: list[int]
    #: Whether each entry given is new (False: its hash was already in the bank).
    new: list[bool]

    @property
    def added(self) -> int:
        return sum(self.new)

    @property
    def already_in_bank(self) -> int:
        return len(self.new) - self.added


@dataclass(frozen=True)
class ImportReport:
    bank: str
    format: BankFormat
    rows: int
    added: int
    duplicates_in_file: int
    already_in_bank: int


@dataclass(frozen=True)
class BankHit:
    """A bank entry matched by an image."""

    bank: str
    entry: BankEntry
    distance: int
    quality: int
    variant: str


class BankService:
    """The bank use cases over a :class:`BankStore`.

    Args:
        store: where banks live.
        flat_max: banks up to this size are matched by brute force (see ``hash_bank``).
        review_banks: the banks reviewers may add removals to (created on first use).
        request_ttl_s: how long a reviewer's request waits for a second reviewer.
    """

    def __init__(
        self,
        store: BankStore,
        *,
        flat_max: int = DEFAULT_FLAT_MAX,
        review_banks: Sequence[str] = (),
        request_ttl_s: int = 30 * 24 * 3600,
    ) -> None:
        self.store = store
        self.flat_max = flat_max
        self.review_banks = tuple(review_banks)
        self.request_ttl_s = request_ttl_s

    def create(self, name: str, *, description: str = "") -> BankInfo:
        return self.store.create(name, description=description)

    def banks(self) -> list[BankInfo]:
        return self.store.banks()

    def info(self, name: str) -> BankInfo:
        return self.store.info(name)

    def delete(self, name: str) -> bool:
        return self.store.delete(name)

    def _live_rows(self, name: str) -> tuple[NDArray[np.void], NDArray[np.int64]]:
        """Live hashes of a bank, sorted (as 32-byte values), and their entry ids."""
        manifest = self.store.manifest(name)
        codes = load_codes(self.store, name, manifest.segments)
        ids = np.concatenate(
            [np.arange(s.first_id, s.end_id, dtype=np.int64) for s in manifest.segments]
            or [np.empty(0, np.int64)]
        )
        if manifest.removed:
            keep = ~np.isin(ids, np.fromiter(manifest.removed, np.int64))
            codes, ids = codes[keep], ids[keep]
        values = np.ascontiguousarray(codes).view(f"V{HASH_BYTES}").ravel()
        order = np.argsort(values, kind="stable")
        return values[order], ids[order]

    def add(
        self, name: str, entries: Sequence[EntryData], *, progress: Progress | None = None
    ) -> AddReport:
        """Add entries, skipping hashes the bank already holds (live), all at once.

        Raises:
            BankNotFound, BankBusy, QueueUnavailable.
        """
        with self.store.writing(name):
            values, ids = self._live_rows(name)
            incoming = pdq_bytes(e.pdq for e in entries).view(f"V{HASH_BYTES}").ravel()
            where = np.searchsorted(values, incoming)
            safe = np.minimum(where, max(len(values) - 1, 0))
            present = (where < len(values)) & (values[safe] == incoming) if len(values) else None
            out: list[int] = [-1] * len(entries)
            fresh: list[EntryData] = []
            positions: list[int] = []
            first_of: dict[str, int] = {}  # a hash given twice is added once
            repeats: list[tuple[int, int]] = []
            for i, entry in enumerate(entries):
                if present is not None and present[i]:
                    out[i] = int(ids[safe[i]])
                    if progress is not None:
                        progress(1)
                elif entry.pdq in first_of:
                    repeats.append((i, first_of[entry.pdq]))
                else:
                    first_of[entry.pdq] = i
                    fresh.append(entry)
                    positions.append(i)
            new_ids = self.store.append(name, fresh, progress=progress)
            for i, entry_id in zip(positions, new_ids, strict=True):
                out[i] = entry_id
            for i, first in repeats:
                out[i] = out[first]
        fresh_positions = set(positions)
        return AddReport(
            bank=name, ids=out, new=[i in fresh_positions for i in range(len(entries))]
        )

    def import_text(
        self,
        name: str,
        text: str,
        *,
        source: str,
        fmt: BankFormat | None = None,
        defaults: EntryDefaults | None = None,
        progress: Progress | None = None,
        checked: Progress | None = None,
    ) -> ImportReport:
        """Import a bank file: every row validated first (``BankFileError`` with ``file:line``
        errors refuses the whole file), then all new entries in one atomic addition.
        ``checked`` is told of rows validated, ``progress`` of rows written.

        Raises:
            BankFileError, BankNotFound, BankBusy, QueueUnavailable.
        """
        self.store.info(name)  # an unknown bank fails before the file is read
        parsed = parse_bank_text(text, source=source, fmt=fmt, defaults=defaults, progress=checked)
        report = self.add(name, parsed.entries, progress=progress)
        return ImportReport(
            bank=name,
            format=parsed.format,
            rows=len(parsed.entries) + parsed.duplicates,
            added=report.added,
            duplicates_in_file=parsed.duplicates,
            already_in_bank=report.already_in_bank,
        )

    def remove(self, name: str, *, ids: Iterable[int] = (), hashes: Iterable[str] = ()) -> int:
        """Remove entries by id or by hash; returns how many live entries were removed.

        Raises:
            BankNotFound, BankBusy, InvalidHashError, QueueUnavailable.
        """
        wanted = set(ids)
        hashes = list(hashes)
        with self.store.writing(name):
            if hashes:
                values, live_ids = self._live_rows(name)
                for value in pdq_bytes(hashes).view(f"V{HASH_BYTES}").ravel():
                    lo = np.searchsorted(values, value, side="left")
                    hi = np.searchsorted(values, value, side="right")
                    wanted.update(int(i) for i in live_ids[lo:hi])
            return self.store.remove(name, wanted)

    def entries(self, name: str) -> Iterator[BankEntry]:
        return self.store.scan(name)

    def export(
        self, name: str, fmt: BankFormat = BankFormat.TE, *, delimiter: str = ","
    ) -> Iterator[str]:
        self.store.info(name)
        return write_bank_file(self.store.scan(name), fmt, delimiter=delimiter)

    def match(
        self,
        feature: PdqFeature,
        names: Sequence[str] | None = None,
        *,
        max_distance: int = MATCH_THRESHOLD,
        min_quality: int = QUALITY_THRESHOLD,
        loaded: LoadedBanks | None = None,
    ) -> list[BankHit]:
        """The entries of the named banks (default: all) within ``max_distance`` of an image's
        hash, nearest first. Banks are loaded from the store unless ``loaded`` has them."""
        hits: list[BankHit] = []
        queries = [q for q in feature.queries() if q[1] >= min_quality]
        if not queries:
            return hits
        array = np.frombuffer(b"".join(q[0] for q in queries), np.uint8).reshape(-1, HASH_BYTES)
        for name in names or [b.name for b in self.store.banks()]:
            index = (loaded.get(name) if loaded else None) or load_index(
                self.store, name, flat_max=self.flat_max
            )
            best: dict[int, tuple[Match, int, str]] = {}
            for (_, quality, variant), matches in zip(
                queries, index.search(array, max_distance), strict=True
            ):
                for m in matches:
                    if m.entry_id not in best or m.distance < best[m.entry_id][0].distance:
                        best[m.entry_id] = (m, quality, variant)
            entries = self.store.entries(name, sorted(best))
            for entry_id, (m, quality, variant) in best.items():
                if entry_id in entries:
                    hits.append(BankHit(name, entries[entry_id], m.distance, quality, variant))
        hits.sort(key=lambda h: (h.distance, h.bank, h.entry.id))
        return hits

    # --- reviewers: "remove and add to bank" ----------------------------------------------

    def bank_targets(self, item: ReviewItem) -> list[str]:
        """The banks a reviewer may add this item's image to (none without a usable hash)."""
        if item.content_pdq is None or (item.content_pdq_quality or 0) < QUALITY_THRESHOLD:
            return []
        return list(self.review_banks)

    def check_request(self, item: ReviewItem, *, bank: str) -> None:
        """Whether a reviewer may ask to add this item's image to ``bank``.

        Raises:
            BankError: the bank is not one reviewers may add to, or the image has no usable hash.
        """
        if bank not in self.review_banks:
            allowed = ", ".join(self.review_banks) or "none configured"
            raise BankError(f"reviewers may add to these banks only: {allowed}")
        if item.content_pdq is None or (item.content_pdq_quality or 0) < QUALITY_THRESHOLD:
            raise BankError(
                "this image has no PDQ hash of usable quality "
                f"(quality {item.content_pdq_quality}); it cannot be banked"
            )

    def request_addition(self, item: ReviewItem, *, bank: str, reviewer: str) -> None:
        """Record a reviewer's request to add a reviewed image to ``bank`` once its removal is
        final (after the second reviewer for critical items); creates the bank on first use.

        Raises:
            BankError: see :meth:`check_request`.
        """
        self.check_request(item, bank=bank)
        try:
            self.store.info(bank)
        except BankNotFound:
            with contextlib.suppress(BankExists):
                self.store.create(bank, description="Removals by human reviewers")
        self.store.request_addition(
            BankRequest(
                review_id=item.review_id, bank=bank, reviewer=reviewer, at=datetime.now(UTC)
            ),
            self.request_ttl_s,
        )

    def add_reviewed(
        self,
        decision: HumanDecision,
        *,
        pdq: str | None,
        quality: int | None,
        content_sha256: str | None,
        content_ref: str | None,
        audit: AuditSink,
        wait_s: float = 10.0,
    ) -> BankEntry | None:
        """Carry out a reviewer's request for a final removal: add the image's hash to the bank
        and audit it. Idempotent (a redelivered decision finds the hash already banked and
        rewrites the same audit record). None when nothing was requested.

        Raises:
            BankBusy: the bank stayed locked (an import) for ``wait_s``; the decision is
                delivered again later.
            AuditSinkUnavailable, QueueUnavailable: transient.
        """
        if decision.decision is not ReviewDecision.REMOVE:
            return None
        request = self.store.addition_request(decision.review_id)
        if request is None:
            return None
        if pdq is None or (quality or 0) < QUALITY_THRESHOLD:
            log.warning("review %s: no usable PDQ hash; not banked", decision.review_id)
            return None
        entry = EntryData(
            pdq=pdq,
            source=f"review:{decision.policy_id}/{decision.category_id}",
            label=decision.reason_code or "",
            added_at=decision.decided_at,
            reference_id=decision.job_id,
            quality=quality,
        )
        deadline = time.monotonic() + wait_s
        while True:
            try:
                report = self.add(request.bank, [entry])
                break
            except BankBusy:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)
        entry_id = report.ids[0]
        audit.write(
            record_for_bank_addition(
                decision,
                reviewer=request.reviewer,
                bank=request.bank,
                entry_id=entry_id,
                pdq=pdq,
                quality=quality,
                created=report.added == 1,
                content_sha256=content_sha256,
                content_ref=content_ref,
            )
        )
        return BankEntry.of(request.bank, entry_id, entry)


# --- keeping a process's banks current ---------------------------------------------------------


class _EntryCache:
    """A bounded LRU of entry metadata (matched entries are looked up once)."""

    def __init__(self, store: BankStore, size: int) -> None:
        self.store = store
        self.size = size
        self._items: OrderedDict[tuple[str, int], BankEntry] = OrderedDict()
        self._lock = threading.Lock()

    def lookup(self, bank: str, ids: Sequence[int]) -> Mapping[int, BankEntry]:
        out: dict[int, BankEntry] = {}
        missing = []
        with self._lock:
            for i in ids:
                entry = self._items.get((bank, i))
                if entry is None:
                    missing.append(i)
                else:
                    self._items.move_to_end((bank, i))
                    out[i] = entry
        if missing:
            found = self.store.entries(bank, missing)
            with self._lock:
                for i, entry in found.items():
                    self._items[(bank, i)] = entry
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
            out.update(found)
        return out

    def forget(self, bank: str) -> None:
        with self._lock:
            for key in [k for k in self._items if k[0] == bank]:
                del self._items[key]


@dataclass
class _Builds:
    """Banks waiting for a full build on the background thread."""

    wanted: set[str] = field(default_factory=set)
    running: str | None = None


class BankSync:
    """Keeps ``banks`` equal to the store (see the module docstring). Thread-safe.

    Args:
        store: where banks live.
        banks: the loaded banks the hash-bank signal matches against.
        flat_max: banks up to this size are searched by brute force.
        rebuild_after: rows appended since the last full build before a new full build.
        cache_size: entries whose metadata is kept in memory.
        background: full builds on a background thread (False: inline, for tests and the CLI).
    """

    def __init__(
        self,
        store: BankStore,
        banks: LoadedBanks,
        *,
        flat_max: int = DEFAULT_FLAT_MAX,
        rebuild_after: int = 65_536,
        cache_size: int = 10_000,
        background: bool = True,
    ) -> None:
        self.store = store
        self.banks = banks
        self.flat_max = flat_max
        self.rebuild_after = rebuild_after
        self.background = background
        self.cache = _EntryCache(store, cache_size)
        banks.lookup = self.cache.lookup
        self._seen = -1
        self._lock = threading.RLock()  # one writer of ``banks`` at a time
        self._builds = _Builds()
        self._wake = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        #: Seconds each completed full build took, by bank (for logs and heartbeats).
        self.build_s: dict[str, float] = {}

    def load(self, names: Iterable[str] | None = None) -> None:
        """Load every bank (or the named ones) now, in full, on this thread (process start-up:
        a worker must not score before its banks are loaded)."""
        version = self.store.version()
        wanted = set(names) if names is not None else None
        with self._lock:
            for info in self.store.banks():
                if wanted is None or info.name in wanted:
                    self._full(info.name)
            if wanted is None:
                self._seen = version

    def refresh(self) -> bool:
        """Apply the store's changes since the last call. Returns whether anything changed.

        Cheap when nothing changed (one GET). Removals and appended rows apply at once; full
        builds are handed to the background thread.

        Raises:
            QueueUnavailable: the store cannot be reached (the loaded banks stay in service).
        """
        version = self.store.version()
        if version == self._seen:
            return False
        changed = False
        with self._lock:
            infos = {b.name: b for b in self.store.banks()}
            for name in self.banks.names():
                if name not in infos:
                    self.banks.drop(name)
                    self.cache.forget(name)
                    log.info("bank %s deleted: unloaded", name)
                    changed = True
            for name, info in infos.items():
                loaded = self.banks.get(name)
                if (
                    loaded is not None
                    and loaded.version == info.version
                    and loaded.epoch == info.created_at.isoformat()
                ):
                    continue
                changed |= self._advance(name)
            self._seen = version
        return changed

    def _advance(self, name: str) -> bool:
        """Bring one bank up to the store's manifest, cheaply if it can; else ask for a full
        build (keeping the loaded version in service meanwhile)."""
        loaded = self.banks.get(name)
        try:
            manifest = self.store.manifest(name)
        except BankNotFound:
            return False
        if loaded is None:
            self._want_full(name)
            return False
        updated = self._append(loaded, manifest)
        if updated is None:
            self.cache.forget(name)
            self._want_full(name)
            return False
        self.banks.put(updated)
        if len(updated.delta_codes) > self.rebuild_after:
            self._want_full(name)
        return True

    def _append(self, loaded: BankIndex, manifest: BankManifest) -> BankIndex | None:
        """``loaded`` plus the rows appended since, with the new removed set; None when the
        bank changed otherwise (recreated, reordered): a full build is needed."""
        if manifest.epoch != loaded.epoch or manifest.version < loaded.version:
            return None  # recreated, or older than what is loaded
        old = loaded.segments
        new = manifest.segments
        if len(new) < len(old):
            return None
        for before, now in zip(old, new, strict=False):
            if (before.number, before.first_id) != (now.number, now.first_id):
                return None
            if now.count < before.count:
                return None
        parts = []
        for i, segment in enumerate(new):
            start = old[i].count if i < len(old) else 0
            if segment.count > start:
                data = self.store.read_hashes(loaded.name, segment, start)
                parts.append(np.frombuffer(data, np.uint8).reshape(-1, HASH_BYTES))
        rows = np.concatenate(parts) if parts else np.empty((0, HASH_BYTES), np.uint8)
        if len(rows) != manifest.rows - loaded.rows:
            return None
        return loaded.updated(manifest.version, rows, new, manifest.removed)

    def _full(self, name: str) -> None:
        """A full build of ``name`` (the caller is the builder thread or holds the lock)."""
        started = time.perf_counter()
        try:
            built = load_index(self.store, name, flat_max=self.flat_max)
        except BankNotFound:
            return
        with self._lock:
            # Changes that landed during the build are applied on top of it, cheaply.
            try:
                manifest = self.store.manifest(name)
            except BankNotFound:
                return
            latest = self._append(built, manifest) or built
            current = self.banks.get(name)
            if current is None or current.version <= latest.version:
                self.banks.put(latest)
        self.build_s[name] = time.perf_counter() - started
        log.info(
            "bank %s v%d loaded: %d entries, index %.1f MB, %.2f s",
            name,
            latest.version,
            latest.live,
            latest.nbytes / 1e6,
            self.build_s[name],
        )

    def _want_full(self, name: str) -> None:
        if not self.background:
            self._full(name)
            return
        with self._wake:
            self._builds.wanted.add(name)
            self._wake.notify()
        if self._thread is None:
            self._thread = threading.Thread(target=self._builder, name="bank-builder", daemon=True)
            self._thread.start()

    def _builder(self) -> None:
        while True:
            with self._wake:
                while not self._builds.wanted and not self._stop:
                    self._wake.wait()
                if self._stop:
                    return
                name = self._builds.wanted.pop()
                self._builds.running = name
            try:
                self._full(name)
            except Exception:  # the builder must survive; the next refresh asks again
                log.exception("bank %s: full build failed", name)
                self._seen = -1
            finally:
                with self._wake:
                    self._builds.running = None
                    self._wake.notify_all()

    def idle(self, timeout: float = 60.0) -> bool:
        """Wait until no full build is wanted or running (tests, benchmarks)."""
        deadline = time.monotonic() + timeout
        with self._wake:
            while self._builds.wanted or self._builds.running:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._wake.wait(left)
        return True

    def close(self) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(5)
