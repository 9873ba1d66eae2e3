"""Reviewer wellbeing (the :class:`~moderation.ports.WellbeingStore` twin)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from moderation.core.wellbeing import ReviewerDay, WellbeingSettings, summarize_day

__all__ = ["MemoryWellbeingStore"]


@dataclass
class _Day:
    #: review id -> (critical, revealed, first shown at)
    items: dict[str, tuple[bool, bool, float]] = field(default_factory=dict)
    last_break_at: float | None = None
    taken: int = 0
    dismissed: int = 0


class MemoryWellbeingStore:
    """The :class:`~moderation.ports.WellbeingStore` twin, on dicts."""

    def __init__(self) -> None:
        self._settings: dict[str, WellbeingSettings] = {}
        self._days: dict[tuple[str, str], _Day] = {}
        self._lock = threading.Lock()

    def settings(self, reviewer: str) -> WellbeingSettings | None:
        return self._settings.get(reviewer)

    def save(self, reviewer: str, settings: WellbeingSettings) -> None:
        self._settings[reviewer] = settings

    def record(
        self, reviewer: str, *, day: str, review_id: str, critical: bool, revealed: bool, at: float
    ) -> None:
        with self._lock:
            d = self._days.setdefault((reviewer, day), _Day())
            old = d.items.get(review_id)
            if old is None:
                d.items[review_id] = (critical, revealed, at)
            elif revealed and not old[1]:
                d.items[review_id] = (old[0], True, old[2])

    def answer_break(self, reviewer: str, *, day: str, taken: bool, at: float) -> None:
        with self._lock:
            d = self._days.setdefault((reviewer, day), _Day())
            d.last_break_at = at
            if taken:
                d.taken += 1
            else:
                d.dismissed += 1

    def day(self, reviewer: str, day: str) -> ReviewerDay:
        with self._lock:
            d = self._days.get((reviewer, day)) or _Day()
            return summarize_day(
                reviewer,
                day,
                dict(d.items),
                last_break_at=d.last_break_at,
                taken=d.taken,
                dismissed=d.dismissed,
            )

    def days(self, day: str) -> list[ReviewerDay]:
        names = sorted(r for r, d in self._days if d == day)
        return [self.day(r, day) for r in names]
