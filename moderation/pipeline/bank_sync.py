"""Keeping a process's loaded banks current (hot reload), off the scoring path.

:class:`BankSync` keeps a process's :class:`~moderation.signals.hash_bank.LoadedBanks` equal to
the store: :meth:`BankSync.refresh` (the worker's maintenance thread calls it every
``banks.reload_s``) polls one version number; on a change it applies removals and appended rows
at once (a new :class:`~moderation.signals.hash_bank.BankIndex` sharing the big base index, plus
a small flat index of the new rows) and leaves full rebuilds (a new bank, a delta grown past
``banks.rebuild_after`` rows, a bank recreated) to a background thread, which builds the new
index off the scoring path and swaps it in with one reference assignment. Scoring never waits
for an import.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from moderation.core.banks import BankEntry, BankManifest
from moderation.exceptions import BankNotFound
from moderation.pipeline.bank_index import load_index
from moderation.ports import BankStore
from moderation.signals.hash_bank import (
    DEFAULT_FLAT_MAX,
    HASH_BYTES,
    BankIndex,
    LoadedBanks,
)

__all__ = ["BankSync"]

log = logging.getLogger(__name__)


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
