"""Audit use cases that read the log: verify the chains, list records. The store is the
:class:`~moderation.ports.SegmentStore` port; the checks are the pure core's."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime

from moderation.core.audit import AuditRecord, ChainVerifier, VerifyReport, decode_segment
from moderation.exceptions import AuditError
from moderation.ports import SegmentStore

__all__ = ["iter_records", "verify_store"]

log = logging.getLogger(__name__)


def verify_store(
    store: SegmentStore, start: datetime | None = None, end: datetime | None = None
) -> VerifyReport:
    """Walk the segments created in ``[start, end]`` and check every link (see ChainVerifier).

    Raises:
        AuditSinkUnavailable: the store cannot be reached.
    """
    lock = store.object_lock
    verifier = ChainVerifier(from_start=start is None, object_lock=lock)
    for key in store.list_keys(start, end):
        verifier.check(key, store.get(key), store.retention(key) if lock else None)
    return verifier.finish()


def iter_records(
    store: SegmentStore, start: datetime | None = None, end: datetime | None = None
) -> Iterator[tuple[str, AuditRecord]]:
    """(segment key, record) for every readable record, in key then chain order (not deduped;
    wrap with :func:`moderation.core.audit.dedupe`). Unreadable segments are skipped with a warning.

    Raises:
        AuditSinkUnavailable: the store cannot be reached.
    """
    for key in store.list_keys(start, end):
        try:
            records = decode_segment(store.get(key)).records()
        except AuditError as exc:
            log.warning("audit: skipping unreadable segment %s: %s", key, exc)
            continue
        for record in records:
            yield key, record
