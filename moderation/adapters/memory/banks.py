"""Hash banks (the :class:`~moderation.ports.BankStore` twin)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from moderation.core.banks import (
    BankEntry,
    BankInfo,
    BankManifest,
    EntryData,
    Segment,
    is_bank_name,
)
from moderation.exceptions import (
    BankBusy,
    BankExists,
    BankNotFound,
)
from moderation.ports import (
    BankRequest,
)

__all__ = ["MemoryBankStore"]


@dataclass
class _Bank:
    info: BankInfo
    segments: list[Segment] = field(default_factory=list)
    hashes: dict[int, bytearray] = field(default_factory=dict)  # segment number -> hashes
    meta: dict[int, EntryData] = field(default_factory=dict)  # entry id -> data
    removed: set[int] = field(default_factory=set)
    next_id: int = 0
    locked: bool = False


class MemoryBankStore:
    """The :class:`~moderation.ports.BankStore` twin: the same segments, tombstones, versions
    and write lock as the Redis store, in dicts. ``segment_rows`` is small so tests see several
    segments."""

    def __init__(self, *, segment_rows: int = 1000) -> None:
        self.segment_rows = segment_rows
        self._banks: dict[str, _Bank] = {}
        self._version = 0
        self._requests: dict[str, BankRequest] = {}
        self._lock = threading.RLock()

    def _bank(self, name: str) -> _Bank:
        bank = self._banks.get(name)
        if bank is None:
            raise BankNotFound(f"no bank {name!r}")
        return bank

    def _bump(self, bank: _Bank, **changes: int) -> None:
        info = bank.info
        update = {"version": info.version + 1}
        for key, delta in changes.items():
            update[key] = getattr(info, key) + delta
        bank.info = info.model_copy(update=update)
        self._version += 1

    def create(self, name: str, *, description: str = "") -> BankInfo:
        with self._lock:
            if not is_bank_name(name):
                raise BankNotFound(f"{name!r} is not a bank name")
            if name in self._banks:
                raise BankExists(f"bank {name!r} already exists")
            info = BankInfo(
                name=name, description=description, created_at=datetime.now(UTC), version=1
            )
            self._banks[name] = _Bank(info=info)
            self._version += 1
            return info

    def delete(self, name: str) -> bool:
        with self._lock:
            self._version += 1
            return self._banks.pop(name, None) is not None

    def info(self, name: str) -> BankInfo:
        return self._bank(name).info

    def banks(self) -> list[BankInfo]:
        return [self._banks[n].info for n in sorted(self._banks)]

    def version(self) -> int:
        return self._version

    def manifest(self, name: str) -> BankManifest:
        with self._lock:
            bank = self._bank(name)
            return BankManifest(
                name=name,
                epoch=bank.info.created_at.isoformat(),
                version=bank.info.version,
                segments=tuple(bank.segments),
                removed=frozenset(bank.removed),
            )

    def read_hashes(self, name: str, segment: Segment, start: int = 0) -> bytes:
        data = self._bank(name).hashes.get(segment.number, bytearray())
        return bytes(data[start * 32 : segment.count * 32])

    @contextmanager
    def writing(self, name: str) -> Iterator[None]:
        with self._lock:
            bank = self._bank(name)
            if bank.locked:
                raise BankBusy(f"bank {name!r} is being written by another import or edit")
            bank.locked = True
        try:
            yield
        finally:
            bank.locked = False

    def append(
        self,
        name: str,
        entries: Sequence[EntryData],
        *,
        progress: Callable[[int], object] | None = None,
    ) -> list[int]:
        with self._lock:
            bank = self._bank(name)
            ids = list(range(bank.next_id, bank.next_id + len(entries)))
            for entry_id, entry in zip(ids, entries, strict=True):
                tail = bank.segments[-1] if bank.segments else None
                if tail is None or tail.count >= self.segment_rows or tail.end_id != entry_id:
                    number = tail.number + 1 if tail else 0
                    tail = Segment(number=number, first_id=entry_id, count=0)
                    bank.segments.append(tail)
                    bank.hashes[number] = bytearray()
                bank.hashes[tail.number] += bytes.fromhex(entry.pdq)
                bank.segments[-1] = tail.model_copy(update={"count": tail.count + 1})
                bank.meta[entry_id] = entry
            bank.next_id += len(entries)
            if entries:
                self._bump(bank, entries=len(entries))
            if progress is not None:
                progress(len(entries))
            return ids

    def remove(self, name: str, ids: Iterable[int]) -> int:
        with self._lock:
            bank = self._bank(name)
            live = {i for i in ids if i in bank.meta and i not in bank.removed}
            if live:
                bank.removed |= live
                self._bump(bank, entries=-len(live), removed=len(live))
            return len(live)

    def entries(self, name: str, ids: Sequence[int]) -> dict[int, BankEntry]:
        bank = self._bank(name)
        return {
            i: BankEntry.of(name, i, bank.meta[i])
            for i in ids
            if i in bank.meta and i not in bank.removed
        }

    def scan(self, name: str) -> Iterator[BankEntry]:
        bank = self._bank(name)
        for i in sorted(bank.meta):
            if i not in bank.removed:
                yield BankEntry.of(name, i, bank.meta[i])

    def request_addition(self, request: BankRequest, ttl_s: int) -> None:
        self._requests[request.review_id] = request

    def addition_request(self, review_id: str) -> BankRequest | None:
        return self._requests.get(review_id)
