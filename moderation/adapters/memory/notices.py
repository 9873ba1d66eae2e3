"""Notices from outside (the :class:`~moderation.ports.NoticeStore` twin)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime

from moderation.core.notices import Notice, NoticeState

__all__ = ["MemoryNoticeStore"]


@dataclass
class MemoryNoticeStore:
    """The :class:`~moderation.ports.NoticeStore` twin."""

    notices: dict[str, Notice] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, notice: Notice) -> tuple[Notice, bool]:
        with self._lock:
            known = self.notices.get(notice.notice_id)
            if known is not None:
                known = known.model_copy(update={"reports": known.reports + 1})
                self.notices[notice.notice_id] = known
                return known, False
            self.notices[notice.notice_id] = notice
            return notice, True

    def get(self, tenant: str, notice_id: str) -> Notice | None:
        notice = self.notices.get(notice_id)
        return notice if notice is not None and notice.tenant == tenant else None

    def set_review(self, notice_id: str, review_id: str) -> None:
        with self._lock:
            notice = self.notices[notice_id]
            self.notices[notice_id] = notice.model_copy(update={"review_id": review_id})

    def open_for_job(self, job_id: str) -> list[Notice]:
        found = [
            n for n in self.notices.values() if n.job_id == job_id and n.state is NoticeState.OPEN
        ]
        return sorted(found, key=lambda n: n.created_at)

    def answer(
        self, notice_id: str, *, outcome: str, reason: str | None, at: datetime
    ) -> Notice | None:
        with self._lock:
            notice = self.notices.get(notice_id)
            if notice is None or notice.state is not NoticeState.OPEN:
                return None
            notice = notice.model_copy(
                update={
                    "state": NoticeState.ANSWERED,
                    "outcome": outcome,
                    "outcome_reason": reason,
                    "answered_at": at,
                }
            )
            self.notices[notice_id] = notice
            return notice

    def for_tenant(self, tenant: str, *, limit: int = 100) -> list[Notice]:
        mine = [n for n in self.notices.values() if n.tenant == tenant]
        return sorted(mine, key=lambda n: n.created_at, reverse=True)[:limit]
