"""Inline bytes, queued bytes and the pending index of running jobs (the
:class:`~moderation.ports.JobTransients` twin)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from moderation.core.jobs import Job
from moderation.exceptions import QueueFull

__all__ = ["MemoryJobTransients"]


@dataclass
class MemoryJobTransients:
    """The :class:`~moderation.ports.JobTransients` twin."""

    inline: dict[str, bytes] = field(default_factory=dict)
    pending: dict[str, float] = field(default_factory=dict)
    queued: dict[str, int] = field(default_factory=dict)
    max_queued_bytes: int = 1 << 62
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def hold_many(self, jobs: Sequence[tuple[Job, bytes | None]]) -> None:
        with self.lock:
            sizes = {
                job.id: len(job.model_dump_json()) + (len(inline) if inline else 0)
                for job, inline in jobs
                if job.id not in self.queued
            }
            if sum(self.queued.values()) + sum(sizes.values()) > self.max_queued_bytes:
                raise QueueFull(f"queued bytes would exceed {self.max_queued_bytes}")
            now = time.time()
            for job, inline in jobs:
                self.queued.setdefault(job.id, sizes.get(job.id, 0))
                self.pending[job.id] = now
                if inline is not None:
                    self.inline[job.image.inline_key if job.image.inline else job.id] = inline

    def release_many(self, ended: Sequence[tuple[str, bool]]) -> None:
        with self.lock:
            for job_id, drop_inline in ended:
                self.pending.pop(job_id, None)
                self.queued.pop(job_id, None)
                if drop_inline:
                    self.inline.pop(job_id, None)

    def drop(self, job_id: str, inline_key: str | None = None) -> None:
        self.release_many([(job_id, True)])
        with self.lock:
            self.inline.pop(inline_key or job_id, None)

    def queued_bytes(self) -> int:
        return sum(self.queued.values())

    def inline_bytes_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return [self.inline.get(key) for key in keys]

    def keep_inline(self, key: str, ttl_s: int) -> None:
        pass  # nothing expires here

    def ping(self) -> bool:
        return True
