"""Keeping, showing and retiring the exact bytes a review item was scored on.

:class:`ReviewEvidence` is the one place that touches them (see :mod:`moderation.core.evidence`
for the key layout and the retention rule):

- :meth:`ReviewEvidence.keep` (the worker, before the item is queued) stores the scored bytes,
  refusing bytes that do not hash to the item's ``content_sha256``;
- :meth:`ReviewEvidence.show` (the review page) reads them back and verifies the hash before a
  byte reaches a reviewer; bytes that are gone or altered raise
  :class:`~moderation.exceptions.ReviewEvidenceUnavailable`;
- :meth:`ReviewEvidence.keep_filmstrip` / :meth:`ReviewEvidence.filmstrip`: the same for a
  video's sampled frames (JPEG stills of the frames that were scored), stored beside the bytes
  and checked on read;
- :meth:`ReviewEvidence.retire` (once a decision is final and handed on) marks them for deletion
  after ``retention_s``; :meth:`ReviewEvidence.sweep` (a worker's maintenance task) deletes
  what is due.
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from moderation.core.evidence import (
    RETIRED_PREFIX,
    Filmstrip,
    evidence_key,
    evidence_of_marker,
    filmstrip_key,
    pack_filmstrip,
    retired_day_prefix,
    retired_key,
    unpack_filmstrip,
    verifies,
)
from moderation.core.jobs import tenant_of
from moderation.core.payload import MediaFile, Payload
from moderation.core.review import ReviewItem
from moderation.exceptions import BlobNotFound, ReviewEvidenceUnavailable
from moderation.ports import BlobStore

__all__ = ["ReviewEvidence", "Shown"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Shown:
    """Bytes a reviewer may be shown: exactly the scored ones."""

    data: bytes
    sha256: str


class ReviewEvidence:
    """The scored bytes of review items in the object store.

    Args:
        blobs: the object store.
        retention_s: how long the bytes outlive their item's final decision.
        appeal_window_s: how long a decision can be appealed (0: no appeals): the bytes are
            kept at least this long after a decision, for the appeal's reviewer.
    """

    def __init__(
        self, blobs: BlobStore, *, retention_s: float, appeal_window_s: float = 0.0
    ) -> None:
        self.blobs = blobs
        self.retention_s = retention_s
        self.appeal_window_s = appeal_window_s

    def keep(self, *, tenant: str, review_id: str, content_sha256: str, data: Payload) -> str:
        """Store the scored bytes of a review (a large video streamed from its local file,
        whose hash was taken as it was downloaded); returns their key.

        Raises:
            ValueError: ``data`` do not hash to ``content_sha256`` (never stored).
            BlobStoreUnavailable, BlobError: the store refused them.
        """
        if isinstance(data, MediaFile):
            if not hmac.compare_digest(data.sha256, content_sha256.lower()):
                raise ValueError("the bytes do not match content_sha256")
        elif not verifies(data, content_sha256):
            raise ValueError("the bytes do not match content_sha256")
        key = evidence_key(tenant, review_id, content_sha256)
        if isinstance(data, MediaFile):
            self.blobs.put_file(key, data.path)
        else:
            self.blobs.put(key, data)
        return key

    def keep_filmstrip(
        self,
        *,
        tenant: str,
        review_id: str,
        content_sha256: str,
        timestamps: tuple[float, ...],
        stills: tuple[bytes, ...],
    ) -> str:
        """Store a video's sampled frames (JPEG stills, one per timestamp) for the reviewer;
        returns their key.

        Raises:
            ValueError: no stills, or stills and timestamps disagree.
            BlobStoreUnavailable, BlobError: the store refused them.
        """
        key = filmstrip_key(tenant, review_id, content_sha256)
        self.blobs.put(key, pack_filmstrip(content_sha256, timestamps, stills))
        return key

    def filmstrip(self, item: ReviewItem) -> Filmstrip:
        """The sampled frames of a video item, checked against its ``content_sha256``.

        Raises:
            ReviewEvidenceUnavailable: not a video, none were kept, gone, or altered.
            BlobStoreUnavailable: the object store cannot be reached now (transient).
        """
        if item.verdict.video is None or item.content_sha256 is None:
            raise ReviewEvidenceUnavailable("this item has no sampled frames")
        key = filmstrip_key(tenant_of(item.job_id), item.review_id, item.content_sha256)
        try:
            strip = unpack_filmstrip(self.blobs.get(key), item.content_sha256)
        except BlobNotFound:
            raise ReviewEvidenceUnavailable(
                "the sampled frames of this video were not kept or are gone: they cannot be "
                "shown, and the item can only be removed or escalated"
            ) from None
        except ValueError as exc:
            log.error("review %s: stored filmstrip is unusable: %s", item.review_id, exc)
            raise ReviewEvidenceUnavailable(
                "the stored frames do not match the video that was scored: they are not shown, "
                "and the item can only be removed or escalated"
            ) from None
        return strip

    def show(self, item: ReviewItem) -> Shown:
        """The scored bytes of ``item``, verified.

        Raises:
            ReviewEvidenceUnavailable: none were kept, they are gone, or they do not hash to
                the item's ``content_sha256``.
            BlobStoreUnavailable: the store cannot be reached now (transient).
        """
        if item.evidence_key is None or item.content_sha256 is None:
            raise ReviewEvidenceUnavailable(
                "the scored image was not kept for review: it cannot be shown, and the item "
                "can only be removed or escalated"
            )
        try:
            data = self.blobs.get(item.evidence_key)
        except BlobNotFound:
            raise ReviewEvidenceUnavailable(
                "the scored image is gone: it cannot be shown, and the item can only be "
                "removed or escalated"
            ) from None
        if not verifies(data, item.content_sha256):
            log.error(
                "review %s: stored evidence does not match its content_sha256", item.review_id
            )
            raise ReviewEvidenceUnavailable(
                "the stored image does not match the bytes that were scored: it is not shown, "
                "and the item can only be removed or escalated"
            )
        return Shown(data, item.content_sha256)

    def seen(self, item: ReviewItem) -> str | None:
        """The hash of what a reviewer of ``item`` is shown (None: nothing verifies)."""
        try:
            return self.show(item).sha256
        except ReviewEvidenceUnavailable:
            return None

    def retire(self, item: ReviewItem, decided_at: datetime) -> None:
        """Mark ``item``'s bytes for deletion ``retention_s`` after ``decided_at``
        (idempotent).

        Raises:
            BlobStoreUnavailable, BlobError: the store refused the marker.
        """
        if item.evidence_key is not None:
            self.retire_key(item.evidence_key, decided_at)
        if item.verdict.video is not None and item.content_sha256 is not None:
            frames = filmstrip_key(tenant_of(item.job_id), item.review_id, item.content_sha256)
            self.retire_key(frames, decided_at)

    def retire_key(self, key: str, decided_at: datetime) -> None:
        """Mark the bytes under ``key`` for deletion ``retention_s`` after ``decided_at`` (and
        never before the appeal window has passed).

        Raises:
            BlobStoreUnavailable, BlobError: the store refused the marker.
        """
        # Deleted retention_s after the marker's day: at least the appeal window after the
        # decision.
        extra = max(0.0, self.appeal_window_s - self.retention_s)
        marked = decided_at + timedelta(seconds=extra)
        self.blobs.put(retired_key(key, marked), b"")

    def sweep(self, now: datetime | None = None, *, lookback_days: int = 30) -> int:
        """Delete the bytes (and markers) of items decided more than ``retention_s`` ago,
        looking at the ``lookback_days`` UTC days before the last due one. Returns how many
        were deleted.

        Raises:
            BlobStoreUnavailable, BlobError: the store cannot be listed or changed now.
        """
        now = now or datetime.now(UTC)
        cutoff = now - timedelta(seconds=self.retention_s)
        deleted = 0
        # Whole days only: a day is due once its last second is older than the cutoff.
        last_due = (cutoff - timedelta(days=1)).date()
        for back in range(lookback_days + 1):
            day = (last_due - timedelta(days=back)).isoformat()
            for marker in list(self.blobs.list(retired_day_prefix(day))):
                self.blobs.delete(evidence_of_marker(marker))
                self.blobs.delete(marker)
                deleted += 1
        return deleted

    def retired_waiting(self) -> int:
        """Markers of decided items whose bytes are still kept (for metrics and tests)."""
        return sum(1 for _ in self.blobs.list(RETIRED_PREFIX))
