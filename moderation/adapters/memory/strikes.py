"""In-memory twin of :class:`~moderation.ports.StrikeStore` (tests only)."""

from __future__ import annotations

import threading
from datetime import datetime

from moderation.core.strikes import EnforcementAction, Strike

__all__ = ["MemoryStrikeStore"]


class MemoryStrikeStore:
    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], Strike] = {}
        self.actions: dict[tuple[str, str], tuple[EnforcementAction, bool]] = {}
        self._lock = threading.Lock()

    def add(self, strike: Strike) -> bool:
        with self._lock:
            key = (strike.tenant, strike.job_id)
            old = self.rows.get(key)
            if old is not None and (old.removed_at is not None or old == strike):
                return False
            self.rows[key] = strike
            return True

    def remove(self, tenant: str, job_id: str, *, at: datetime) -> Strike | None:
        with self._lock:
            old = self.rows.get((tenant, job_id))
            if old is None or old.removed_at is not None:
                return None
            gone = old.model_copy(update={"removed_at": at})
            self.rows[(tenant, job_id)] = gone
            return gone

    def strikes(self, tenant: str, uploader_id: str, *, limit: int = 200) -> list[Strike]:
        mine = [s for s in self.rows.values() if (s.tenant, s.uploader_id) == (tenant, uploader_id)]
        return sorted(mine, key=lambda s: (-s.at.timestamp(), s.job_id))[:limit]

    def action(self, tenant: str, uploader_id: str) -> tuple[EnforcementAction, bool]:
        return self.actions.get((tenant, uploader_id), (EnforcementAction.NONE, False))

    def set_action(
        self,
        tenant: str,
        uploader_id: str,
        *,
        expected: EnforcementAction,
        action: EnforcementAction,
        at: datetime,
    ) -> bool:
        with self._lock:
            current, warned = self.action(tenant, uploader_id)
            if current is not expected:
                return False
            self.actions[(tenant, uploader_id)] = (
                action,
                warned or action is not EnforcementAction.NONE,
            )
            return True
