"""Failed sign-ins (the :class:`~moderation.ports.LoginThrottle` twin)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from moderation.core.reviewers import LoginPolicy

__all__ = ["MemoryLoginThrottle"]


@dataclass
class MemoryLoginThrottle:
    """The :class:`~moderation.ports.LoginThrottle` twin. Thread-safe."""

    failures: dict[str, tuple[int, float]] = field(default_factory=dict)  # key -> (n, expires)
    blocks: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def blocked_for(self, keys: Sequence[str], now: float) -> float:
        return max([0.0, *(self.blocks.get(k, 0.0) - now for k in keys)])

    def fail(self, key: str, now: float, *, window_s: float) -> int:
        count, expires = self.failures.get(key, (0, 0.0))
        count = count + 1 if expires > now else 1
        self.failures[key] = (count, now + window_s)
        return count

    def block(self, key: str, until: float) -> None:
        self.blocks[key] = max(until, self.blocks.get(key, 0.0))

    def clear(self, key: str) -> None:
        self.failures.pop(key, None)
        self.blocks.pop(key, None)

    def reserve(
        self, keys: Sequence[tuple[str, LoginPolicy]], now: float
    ) -> tuple[float, tuple[int, ...]]:
        with self._lock:
            wait = self.blocked_for([k for k, _ in keys], now)
            if wait > 0:
                return wait, ()
            counts = []
            for key, policy in keys:
                count = self.fail(key, now, window_s=policy.window_s)
                pause = policy.wait_after(count)
                if pause > 0:
                    self.block(key, now + pause)
                counts.append(count)
            return 0.0, tuple(counts)

    def refund(self, key: str) -> None:
        with self._lock:
            count, expires = self.failures.get(key, (0, 0.0))
            if count > 0:
                self.failures[key] = (count - 1, expires)
