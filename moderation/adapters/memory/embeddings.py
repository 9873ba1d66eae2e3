"""Stored embeddings (the :class:`~moderation.ports.EmbeddingStore` twin)."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence

from moderation.core.embeddings import StoredEmbedding

__all__ = ["MemoryEmbeddingStore"]


class MemoryEmbeddingStore:
    """The :class:`~moderation.ports.EmbeddingStore` twin: a deque in time order, trimmed to
    ``retention_s`` and ``max_items`` on every write."""

    def __init__(
        self,
        *,
        retention_s: float = 30 * 24 * 3600,
        max_items: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.retention_s = retention_s
        self.max_items = max_items
        self.clock = clock
        self.items: deque[StoredEmbedding] = deque()
        self._lock = threading.Lock()

    def add(self, item: StoredEmbedding) -> None:
        self.add_many([item])

    def add_many(self, items: Sequence[StoredEmbedding]) -> None:
        with self._lock:
            now = self.clock()
            self.items.extend(dataclasses.replace(item, at=now) for item in items)
            while self.items and self.items[0].at < now - self.retention_s:
                self.items.popleft()
            while self.max_items is not None and len(self.items) > self.max_items:
                self.items.popleft()

    def scan(
        self, *, since: float, until: float | None = None, page: int = 1000
    ) -> Iterator[list[StoredEmbedding]]:
        since = max(since, self.clock() - self.retention_s)
        with self._lock:
            found = [i for i in self.items if i.at >= since and (until is None or i.at <= until)]
        for start in range(0, len(found), page):
            yield found[start : start + page]

    def count(self) -> int:
        return len(self.items)
