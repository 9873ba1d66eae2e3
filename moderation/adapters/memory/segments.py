"""Audit segments (the :class:`~moderation.ports.SegmentStore` twin)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime

from moderation.core.audit import Retention, key_bounds
from moderation.exceptions import (
    AuditSinkUnavailable,
)

__all__ = ["MemorySegmentStore"]


@dataclass
class MemorySegmentStore:
    """The :class:`~moderation.ports.SegmentStore` twin (no Object Lock)."""

    prefix: str = "audit/"
    objects: dict[str, bytes] = field(default_factory=dict)
    down: bool = False

    @property
    def object_lock(self) -> bool:
        return False

    def _check(self) -> None:
        if self.down:
            raise AuditSinkUnavailable("memory store is down")

    def put(self, key: str, data: bytes, *, created: datetime) -> None:
        self._check()
        self.objects[key] = data

    def list_keys(
        self, start: datetime | None = None, end: datetime | None = None
    ) -> Iterator[str]:
        self._check()
        low, high = key_bounds(self.prefix, start, end)
        for key in sorted(self.objects):
            if (low is None or key > low) and (high is None or key <= high):
                yield key

    def get(self, key: str) -> bytes:
        self._check()
        return self.objects[key]

    def retention(self, key: str) -> Retention | None:
        return None

    def describe(self) -> str:
        return "memory"
