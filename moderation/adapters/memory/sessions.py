"""Reviewer sessions (the :class:`~moderation.ports.ReviewerSessions` twin)."""

from __future__ import annotations

from dataclasses import dataclass, field

from moderation.core.reviewers import ReviewerSession, session_alive

__all__ = ["MemoryReviewerSessions"]


@dataclass
class MemoryReviewerSessions:
    """The :class:`~moderation.ports.ReviewerSessions` twin (same timeout rule)."""

    idle_s: float = 1800.0
    max_s: float = 43200.0
    sessions: dict[str, ReviewerSession] = field(default_factory=dict)

    def create(self, key: str, session: ReviewerSession) -> None:
        self.sessions[key] = session

    def touch(self, key: str, now: float) -> ReviewerSession | None:
        session = self.sessions.get(key)
        if session is None:
            return None
        if not session_alive(session, now, idle_s=self.idle_s, max_s=self.max_s):
            del self.sessions[key]
            return None
        touched = ReviewerSession(
            username=session.username,
            created_at=session.created_at,
            last_seen=now,
            nonce=session.nonce,
        )
        self.sessions[key] = touched
        return touched

    def end(self, key: str) -> bool:
        return self.sessions.pop(key, None) is not None

    def end_all(self, username: str) -> int:
        mine = [k for k, s in self.sessions.items() if s.username == username]
        for key in mine:
            del self.sessions[key]
        return len(mine)

    def count(self, username: str) -> int:
        return sum(s.username == username for s in self.sessions.values())
