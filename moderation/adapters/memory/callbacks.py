"""Scheduled callbacks (the :class:`~moderation.ports.CallbackSender` twin)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["MemoryCallbacks"]


@dataclass
class MemoryCallbacks:
    """The :class:`~moderation.ports.CallbackSender` twin: records scheduled callbacks."""

    sent: list[tuple[str, str, bytes]] = field(default_factory=list)
    tenants: list[str] = field(default_factory=list)

    def send(self, job_id: str, url: str, body: bytes, *, tenant: str = "default") -> None:
        self.sent.append((job_id, url, body))
        self.tenants.append(tenant)
