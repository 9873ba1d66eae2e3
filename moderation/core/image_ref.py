"""Where a job's image is: one reference type for every source. Pure.

An :class:`ImageRef` is a URI whose scheme names the image source that reads it
(:class:`moderation.ports.ImageSource`, registered by scheme): ``s3://bucket/key``,
``https://host/path``, ``inline:<key>`` for bytes sent with the request and kept in the job
store, or ``spill:<key>`` for larger ones the API wrote to the object store
(``queue.inline_spill_bytes``). A new source brings a new scheme; nothing else changes shape.
"""

from __future__ import annotations

import hashlib
from datetime import date

from pydantic import BaseModel, ConfigDict

__all__ = ["INLINE_SCHEME", "SPILL_PREFIX", "SPILL_SCHEME", "ImageRef", "spill_key"]

#: Bytes uploaded with the request, kept in the job store under the job's key.
INLINE_SCHEME = "inline"
#: Bytes uploaded with the request, too large for Redis: kept in the object store.
SPILL_SCHEME = "spill"
#: The scored bytes of a review item, kept in the object store (``evidence:<key>``): what a
#: review export names for an image whose inline bytes went when its job ended. Never public.
EVIDENCE_SCHEME = "evidence"
#: Where in the object store: one folder per UTC day, so old days are dropped whole.
SPILL_PREFIX = "spill/"


def spill_key(job_id: str, day: date) -> str:
    """The object-store key of a job's spilled inline bytes (the job id hashed: a key of
    plain segments whatever the id holds)."""
    return f"{SPILL_PREFIX}{day.isoformat()}/{hashlib.sha256(job_id.encode()).hexdigest()}"


class ImageRef(BaseModel):
    """A URI naming an image: ``scheme:rest``."""

    model_config = ConfigDict(frozen=True)

    uri: str

    @property
    def scheme(self) -> str:
        """The lower-cased scheme (``""`` when the URI has none)."""
        head, sep, _ = self.uri.partition(":")
        plain = head.replace("+", "").replace("-", "").replace(".", "")
        return head.lower() if sep and head.isascii() and plain.isalnum() else ""

    @property
    def inline(self) -> bool:
        return self.scheme == INLINE_SCHEME

    @property
    def inline_key(self) -> str:
        """The job-store key of inline bytes (``inline:<key>``)."""
        return self.uri.partition(":")[2]

    @classmethod
    def for_inline(cls, key: str) -> ImageRef:
        return cls(uri=f"{INLINE_SCHEME}:{key}")

    @property
    def spilled(self) -> bool:
        return self.scheme == SPILL_SCHEME

    @classmethod
    def for_spill(cls, key: str) -> ImageRef:
        return cls(uri=f"{SPILL_SCHEME}:{key}")

    def __str__(self) -> str:
        return self.uri
