"""Twin of the exchange-sync store port: checkpoints and synced rows in a dict."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from moderation.exceptions import ExchangeBusy

__all__ = ["MemoryExchangeSync"]


@dataclass
class MemoryExchangeSync:
    """The :class:`~moderation.ports.ExchangeSyncStore` twin."""

    checkpoints: dict[str, bytes] = field(default_factory=dict)
    rows: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    applied: dict[str, int] = field(default_factory=dict)
    _held: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @contextmanager
    def lock(self, source: str) -> Iterator[None]:
        with self._lock:
            if source in self._held:
                raise ExchangeBusy(f"exchange {source} is being synced by another process")
            self._held.add(source)
        try:
            yield
        finally:
            with self._lock:
                self._held.discard(source)

    def checkpoint(self, source: str) -> bytes | None:
        return self.checkpoints.get(source)

    def records(self, source: str, keys: Iterable[str]) -> dict[str, list[str]]:
        known = self.rows.get(source, {})
        return {k: list(known[k]) for k in keys if k in known}

    def save(
        self,
        source: str,
        *,
        checkpoint: bytes,
        records: Mapping[str, list[str] | None],
        applied: int,
    ) -> None:
        known = self.rows.setdefault(source, {})
        for key, hashes in records.items():
            if hashes is None:
                known.pop(key, None)
            else:
                known[key] = list(hashes)
        self.checkpoints[source] = checkpoint
        self.applied[source] = self.applied.get(source, 0) + applied

    def fetched(self, source: str) -> int:
        return self.applied.get(source, 0)

    def held(self, source: str, hashes: Iterable[str], *, besides: Iterable[str]) -> set[str]:
        skip = set(besides)
        wanted = set(hashes)
        return {
            h
            for key, values in self.rows.get(source, {}).items()
            if key not in skip
            for h in values
            if h in wanted
        }
