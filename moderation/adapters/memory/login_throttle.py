"""Failed sign-ins (the :class:`~moderation.ports.LoginThrottle` twin)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["MemoryLoginThrottle"]


@dataclass
class MemoryLoginThrottle:
    """The :class:`~moderation.ports.LoginThrottle` twin."""

    failures: dict[str, tuple[int, float]] = field(default_factory=dict)  # key -> (n, expires)
    blocks: dict[str, float] = field(default_factory=dict)

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
