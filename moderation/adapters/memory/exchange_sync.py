"""Twin of the exchange-sync store port: checkpoints and synced rows in a dict."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import cast

from moderation.exceptions import ExchangeBusy
from moderation.ports import ExchangeHealth

__all__ = ["MemoryExchangeSync"]


@dataclass
class MemoryExchangeSync:
    """The :class:`~moderation.ports.ExchangeSyncStore` twin."""

    checkpoints: dict[str, bytes] = field(default_factory=dict)
    rows: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    applied: dict[str, int] = field(default_factory=dict)
    _held: set[str] = field(default_factory=set)
    #: source -> [last success (clock seconds) or None, failures, errors_total, last code]
    outcomes: dict[str, list[object]] = field(default_factory=dict)
    clock: Callable[[], float] = time.time
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

    def record_outcome(self, source: str, *, error_code: str | None) -> None:
        with self._lock:
            row = self.outcomes.setdefault(source, [None, 0, 0, None])
            if error_code is None:
                row[0], row[1] = self.clock(), 0
            else:
                row[1] = cast(int, row[1]) + 1
                row[2] = cast(int, row[2]) + 1
                row[3] = error_code

    def health(self, sources: Iterable[str]) -> list[ExchangeHealth]:
        now = self.clock()
        out = []
        for source in sources:
            last, failures, total, code = self.outcomes.get(source, [None, 0, 0, None])
            out.append(
                ExchangeHealth(
                    source=source,
                    last_success_age_s=None if last is None else now - cast(float, last),
                    failures=cast(int, failures),
                    errors_total=cast(int, total),
                    last_error_code=cast("str | None", code),
                )
            )
        return out
