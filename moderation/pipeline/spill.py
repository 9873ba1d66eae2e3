"""Dropping spilled inline images (``queue.inline_spill_bytes``) and streamed uploads
(``video.stream_above_bytes``) once no job can need them.

The API writes an inline image larger than the setting to the object store under
``spill/<UTC day>/<hash of the job id>`` (:func:`moderation.core.image_ref.spill_key`), and a
multipart part it streamed under ``spill/<UTC day>/u-<random>``
(:mod:`moderation.pipeline.uploads`); the job carries a ``spill:`` reference;
:class:`~moderation.pipeline.sources.SpillSource` reads it back. Nothing deletes one image at
a time: a job may be retried, redelivered or kept for review, so the bytes stay as long as the
Redis-held ones could (``keep_s``) and then their whole day is dropped. On S3, a lifecycle rule
expiring ``spill/`` after the same time does the same.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta

from moderation.core.image_ref import SPILL_PREFIX
from moderation.ports import BlobStore

__all__ = ["SpillSweep"]

#: Days before the oldest kept one that a sweep still looks at (a worker down that long leaves
#: older days to the lifecycle rule).
_LOOK_BACK_DAYS = 14


class SpillSweep:
    """Deletes the spilled images of days older than ``keep_s`` (a whole day at a time)."""

    def __init__(self, blobs: BlobStore, *, keep_s: float) -> None:
        self.blobs = blobs
        self.keep_days = max(1, math.ceil(keep_s / 86400)) + 1

    def expired_days(self, today: date | None = None) -> list[date]:
        """The days a sweep on ``today`` empties, oldest first."""
        today = today or datetime.now(UTC).date()
        newest = today - timedelta(days=self.keep_days)
        return [newest - timedelta(days=k) for k in range(_LOOK_BACK_DAYS, -1, -1)]

    def sweep(self, today: date | None = None) -> int:
        """Delete what the expired days hold; returns how many images were deleted.

        Raises:
            BlobStoreUnavailable: the object store cannot be reached (the next sweep retries).
        """
        deleted = 0
        for day in self.expired_days(today):
            for key in list(self.blobs.list(f"{SPILL_PREFIX}{day.isoformat()}/")):
                self.blobs.delete(key)
                deleted += 1
        return deleted
