"""Published job messages (the :class:`~moderation.ports.TaskPublisher` twin)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["MemoryPublisher"]


@dataclass
class MemoryPublisher:
    """The :class:`~moderation.ports.TaskPublisher` twin: records the messages published (job
    ids, retries, countdown). ``fail`` makes it refuse (a broker that is down)."""

    messages: list[tuple[list[str], int, float]] = field(default_factory=list)
    #: Job ids published on a priority lane.
    high: list[str] = field(default_factory=list)
    #: Job ids published on a video lane.
    video: list[str] = field(default_factory=list)
    fail: Exception | None = None

    @property
    def published(self) -> list[str]:
        """Every job id published, in order."""
        return [job_id for ids, _, _ in self.messages for job_id in ids]

    def publish(
        self,
        job_ids: Sequence[str],
        *,
        retries: int = 0,
        countdown: float = 0.0,
        high: bool = False,
        video: bool = False,
    ) -> None:
        if self.fail is not None:
            raise self.fail
        self.messages.append((list(job_ids), retries, countdown))
        if high:
            self.high.extend(job_ids)
        if video:
            self.video.extend(job_ids)

    def in_flight(self, max_scan: int = 20_000) -> set[str] | None:
        return set(self.published)

    def queue_depth(self) -> int:
        return len(self.published)
