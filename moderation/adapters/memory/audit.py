"""Audit records in write order (the :class:`~moderation.ports.AuditSink` twin)."""

from __future__ import annotations

from dataclasses import dataclass, field

from moderation.core.audit import AuditRecord
from moderation.exceptions import (
    AuditError,
)

__all__ = ["MemoryAuditSink"]


@dataclass
class MemoryAuditSink:
    """The :class:`~moderation.ports.AuditSink` twin: records in write order. ``fail`` makes
    ``write`` raise (S3 and the spool both down)."""

    records: list[AuditRecord] = field(default_factory=list)
    fail: Exception | None = None
    closed: bool = False

    def write(self, record: AuditRecord) -> None:
        self.write_many([record])

    def write_many(self, records: list[AuditRecord]) -> None:
        if self.fail is not None:
            raise self.fail
        if self.closed:
            raise AuditError("audit log is closed", code="audit_closed")
        self.records.extend(records)

    def close(self, timeout: float = 10.0) -> bool:
        self.closed = True
        return True
