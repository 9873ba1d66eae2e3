"""Per-tenant in-flight cap inside a worker process.

The broker lanes (:mod:`moderation.core.fairness`) decide which message a worker takes next;
once taken, a message's images meet every other message's in the worker's decode threads and
micro-batcher, first in, first out. A worker holds many messages at once (``queue.concurrency``),
so without a cap a tenant's burst could fill all of them and another tenant's job, although
taken next, would still queue inside the worker behind them. :class:`TenantGate` lets at most
``limit`` messages of one tenant be processed at once; the others of that tenant wait for their
turn on their own thread, and never delay another tenant's message.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["TenantGate"]


class TenantGate:
    """At most ``limit`` messages of each tenant at once. Thread-safe."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        self.limit = limit
        self._lock = threading.Lock()
        self._slots: dict[str, threading.BoundedSemaphore] = {}

    def _slot(self, tenant: str) -> threading.BoundedSemaphore:
        with self._lock:
            slot = self._slots.get(tenant)
            if slot is None:
                slot = self._slots[tenant] = threading.BoundedSemaphore(self.limit)
            return slot

    @contextmanager
    def hold(self, tenant: str) -> Iterator[None]:
        """Wait for one of ``tenant``'s slots, hold it for the block."""
        slot = self._slot(tenant)
        slot.acquire()
        try:
            yield
        finally:
            slot.release()
