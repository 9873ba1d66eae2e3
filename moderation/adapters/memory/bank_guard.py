"""Bank entries' states and rates (the :class:`~moderation.ports.EntryGuardStore` twin)."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from moderation.core.bank_guard import EntryRate, EntryState, EntryStatus, FloodRule

__all__ = ["MemoryEntryGuard"]


@dataclass
class MemoryEntryGuard:
    """The :class:`~moderation.ports.EntryGuardStore` twin."""

    states: dict[tuple[str, int], EntryStatus] = field(default_factory=dict)
    rates: dict[tuple[str, int], EntryRate] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def statuses(self, bank: str | None = None) -> list[EntryStatus]:
        return [self.states[k] for k in sorted(self.states) if bank is None or k[0] == bank]

    def status(self, bank: str, entry_id: int) -> EntryStatus | None:
        return self.states.get((bank, entry_id))

    def set_status(self, status: EntryStatus) -> None:
        with self._lock:
            key = (status.bank, status.entry_id)
            if status.state is EntryState.ACTIVE:
                self.states.pop(key, None)
            else:
                self.states[key] = status

    def count(
        self, bank: str, matches: Mapping[int, int], *, rule: FloodRule, now: float
    ) -> dict[int, EntryRate]:
        out = {}
        with self._lock:
            for entry_id, n in matches.items():
                rate = rule.observe(self.rates.get((bank, entry_id)), n, now)
                self.rates[(bank, entry_id)] = out[entry_id] = rate
        return out
