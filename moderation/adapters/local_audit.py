"""Audit segments in a local folder: the embedded default when no bucket is configured.

Same keys as in S3 (``{prefix}YYYY/MM/DD/HH/...jsonl.gz``) as relative paths under ``root``; each
segment is written to a temporary file, fsync'd, then renamed into place, so a reader never sees
half a segment. A folder has no Object Lock: ``retention`` is always None.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from moderation.adapters.support.files import atomic_write
from moderation.core.audit import Retention, key_bounds
from moderation.exceptions import AuditError, AuditSinkUnavailable

__all__ = ["LocalSegmentStore"]


class LocalSegmentStore:
    """A :class:`moderation.audit.SegmentStore` on a directory."""

    object_lock = False

    def __init__(self, root: Path, *, prefix: str = "audit/") -> None:
        self.root = root
        self.prefix = prefix

    def describe(self) -> str:
        return str(self.root / self.prefix)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()) or ".." in Path(key).parts:
            raise AuditError(f"segment key outside the audit folder: {key!r}", code="audit_key")
        return path

    def put(self, key: str, data: bytes, *, created: datetime) -> None:
        """Write one segment durably (temp file, fsync, rename, fsync folder).

        Raises:
            AuditSinkUnavailable: the folder cannot be written (disk full, permissions).
        """
        try:
            atomic_write(self._path(key), data)
        except OSError as exc:
            raise AuditSinkUnavailable(f"cannot write audit segment {key}: {exc}") from exc

    def list_keys(
        self, start: datetime | None = None, end: datetime | None = None
    ) -> Iterator[str]:
        """Segment keys in key (time) order, walking the hour folders lazily."""
        start_after, stop_after = key_bounds(self.prefix, start, end)
        base = self.root / self.prefix
        if not base.is_dir():
            return
        yield from self._walk(base, self.prefix, start_after, stop_after)

    def _walk(
        self, folder: Path, key_prefix: str, start_after: str | None, stop_after: str | None
    ) -> Iterator[str]:
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            key = key_prefix + entry.name
            if entry.is_dir():
                # Prune whole folders outside the range (their keys all share this prefix).
                if start_after is not None and key + "/" < start_after[: len(key) + 1]:
                    continue
                if stop_after is not None and key > stop_after[: len(key)]:
                    return
                yield from self._walk(Path(entry.path), key + "/", start_after, stop_after)
            elif entry.name.endswith(".jsonl.gz"):
                if start_after is not None and key <= start_after:
                    continue
                if stop_after is not None and key > stop_after:
                    return
                yield key

    def get(self, key: str) -> bytes:
        """The stored bytes of one segment.

        Raises:
            AuditError: no such segment.
        """
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise AuditError(f"no audit segment {key}", code="audit_missing") from exc

    def retention(self, key: str) -> Retention | None:
        return None
