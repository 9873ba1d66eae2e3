"""Worker heartbeats and named locks (the :class:`~moderation.ports.WorkerRegistry` twin)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MemoryWorkerRegistry"]


@dataclass
class MemoryWorkerRegistry:
    """The :class:`~moderation.ports.WorkerRegistry` twin (heartbeats never expire here)."""

    beats: dict[str, dict[str, Any]] = field(default_factory=dict)
    locks: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def heartbeat(self, name: str, info: dict[str, Any], ttl_s: int = 30) -> None:
        self.beats[name] = {**info, "at": time.time()}

    def workers(self) -> list[dict[str, Any]]:
        return list(self.beats.values())

    def known_policies(self) -> dict[str, int]:
        known: dict[str, int] = {}
        for worker in self.beats.values():
            known.update({str(k): int(v) for k, v in worker.get("policies", {}).items()})
        return known

    def try_lock(self, name: str, ttl_s: float) -> bool:
        with self._lock:
            now = time.monotonic()
            if self.locks.get(name, 0.0) > now:
                return False
            self.locks[name] = now + ttl_s
            return True
