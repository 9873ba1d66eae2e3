"""Callbacks waiting for delivery (the :class:`~moderation.ports.CallbackOutbox` twin)."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from moderation.core.callbacks import PendingCallback

__all__ = ["MemoryCallbackOutbox"]


@dataclass
class MemoryCallbackOutbox:
    """The :class:`~moderation.ports.CallbackOutbox` twin. ``clock`` gives the time."""

    clock: Callable[[], float] = time.time
    #: id -> (due at, callback)
    entries: dict[str, tuple[float, PendingCallback]] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=itertools.count, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _now(self) -> float:
        return self.clock()

    def send(self, job_id: str, url: str, body: bytes, *, tenant: str = "default") -> None:
        with self._lock:
            cid = f"cb{next(self._ids)}"
            self.entries[cid] = (self._now(), PendingCallback(cid, tenant, job_id, url, body))

    def tenants(self) -> list[str]:
        with self._lock:
            return sorted({cb.tenant for _, cb in self.entries.values()})

    def claim(self, tenant: str, limit: int, *, lease_s: float) -> list[PendingCallback]:
        with self._lock:
            now = self._now()
            due = sorted(
                (at, cid)
                for cid, (at, cb) in self.entries.items()
                if cb.tenant == tenant and at <= now
            )[: max(0, limit)]
            claimed = []
            for _, cid in due:
                cb = self.entries[cid][1]
                self.entries[cid] = (now + lease_s, cb)
                claimed.append(cb)
            return claimed

    def done(self, callback: PendingCallback) -> None:
        with self._lock:
            self.entries.pop(callback.id, None)

    def retry_at(self, callback: PendingCallback, at: float) -> None:
        with self._lock:
            if callback.id in self.entries:
                self.entries[callback.id] = (at, replace(callback, attempts=callback.attempts + 1))

    def waiting(self) -> int:
        with self._lock:
            return len(self.entries)
