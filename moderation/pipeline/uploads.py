"""Streamed uploads: a large part of a multipart upload goes to the object store as it arrives.

The API hands each image part of ``/v1/jobs:upload`` to an :class:`UploadBuffer`. It keeps the
bytes in memory while they are at most ``video.stream_above_bytes`` (every photo: the inline
path is unchanged); past that it opens an upload to the object store
(:meth:`~moderation.ports.BlobStore.upload`) and sends every further chunk on, so the API holds
at most a buffer of the part, never the video. The size cap (``video.max_upload_bytes``) is
enforced while the bytes stream: the chunk that passes it aborts the upload (no object, no
parts are left) and the request is refused with 413 ``video_upload_too_large``. A client that
disconnects, and a request refused for any other reason, aborts or deletes what was stored.

Where the bytes go: ``spill/<UTC day>/u-<64 random hex digits>``, the folder of spilled inline
images, so the same retention sweep (:mod:`moderation.pipeline.spill`) drops them; the key is
random (256 bits), never derived from a tenant's ids, and ``spill:`` references are not a
public scheme, so no tenant can name another tenant's upload (or its own) in a job: only the
job the API creates for the upload refers to it, and a worker reads it for that job only.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from moderation.core.image_ref import SPILL_PREFIX
from moderation.exceptions import JobRejected
from moderation.ports import BlobStore, BlobUpload

__all__ = ["StoredUpload", "UploadBuffer", "Uploads", "drop_upload", "upload_key"]

log = logging.getLogger(__name__)

#: Leading bytes of a part kept aside (its container's magic number).
_HEAD = 64


def upload_key(day: datetime | None = None) -> str:
    """A new, unguessable object-store key for one streamed upload (in the spill folder of
    ``day``, UTC)."""
    when = (day or datetime.now(UTC)).date()
    return f"{SPILL_PREFIX}{when.isoformat()}/u-{secrets.token_hex(32)}"


@dataclass(frozen=True, slots=True)
class StoredUpload:
    """An image part the API streamed to the object store: its key, size and SHA-256, and its
    first bytes (what kind of file it is: the job's lane)."""

    key: str
    size: int
    sha256: str
    head: bytes = b""


class UploadBuffer:
    """One image part as it streams in: bytes in memory up to ``memory_bytes``, then an upload
    to the object store. Not thread-safe (one per part)."""

    def __init__(self, blobs: BlobStore | None, *, memory_bytes: int, max_bytes: int) -> None:
        self.blobs = blobs
        self.memory_bytes = memory_bytes
        self.max_bytes = max_bytes
        self.size = 0
        self._hash = hashlib.sha256()
        self._buffer = bytearray()
        self._head = b""
        self._upload: BlobUpload | None = None
        self._key: str | None = None
        self._stored: StoredUpload | None = None

    @property
    def streamed(self) -> bool:
        """Whether the part went past ``memory_bytes`` (to the object store)."""
        return self._key is not None

    def write(self, chunk: bytes) -> None:
        """Add a chunk of the part.

        Raises:
            JobRejected: 413 ``video_upload_too_large``: the part passed ``max_bytes`` (what
                was stored is dropped first).
            BlobStoreUnavailable, BlobError: the object store refused the bytes (aborted).
        """
        if not chunk:
            return
        self.size += len(chunk)
        if self.size > self.max_bytes:
            self.abort()
            if self.blobs is None:
                raise JobRejected(
                    f"inline image is over {self.max_bytes} bytes; the limit is "
                    f"{self.max_bytes}: upload it and send image_url",
                    status=413,
                    code="inline_too_large",
                )
            raise JobRejected(
                f"the uploaded file is larger than {self.max_bytes} bytes "
                "(video.max_upload_bytes); it was not stored",
                status=413,
                code="video_upload_too_large",
            )
        self._hash.update(chunk)
        if len(self._head) < _HEAD:
            self._head += chunk[: _HEAD - len(self._head)]
        if self._upload is None and len(self._buffer) + len(chunk) <= self.memory_bytes:
            self._buffer += chunk
            return
        if self.blobs is None:  # max_bytes <= memory_bytes: cannot happen
            raise JobRejected(
                "no object store for large uploads", status=413, code="inline_too_large"
            )
        try:
            if self._upload is None:
                self._key = upload_key()
                self._upload = self.blobs.upload(self._key)
                self._upload.write(bytes(self._buffer))
                self._buffer = bytearray()
            self._upload.write(chunk)
        except BaseException:
            self.abort()
            raise

    def finish(self) -> bytes | StoredUpload:
        """The part's bytes (small), or where it was stored (committed now).

        Raises:
            BlobStoreUnavailable, BlobError: the object store refused it (nothing stays).
        """
        if self._upload is None or self._key is None:
            data = bytes(self._buffer)
            self._buffer = bytearray()
            return data
        if self._stored is None:
            try:
                self._upload.commit()
            except BaseException:
                self.abort()
                raise
            self._stored = StoredUpload(
                self._key, self.size, self._hash.hexdigest(), head=self._head
            )
        return self._stored

    def abort(self) -> None:
        """Drop the part: an unfinished upload is aborted, a committed one deleted.
        Idempotent; never raises (a failure is logged: the retention sweep removes it)."""
        self._buffer = bytearray()
        upload, self._upload = self._upload, None
        stored, self._stored = self._stored, None
        try:
            if stored is not None and self.blobs is not None:
                self.blobs.delete(stored.key)
            elif upload is not None:
                upload.abort()
        except Exception as exc:
            log.warning("an aborted upload could not be dropped (the spill sweep will): %s", exc)


class Uploads:
    """Makes :class:`UploadBuffer` s with the limits of the settings."""

    def __init__(self, blobs: BlobStore, *, memory_bytes: int, max_bytes: int) -> None:
        self.blobs = blobs
        self.memory_bytes = memory_bytes
        self.max_bytes = max_bytes

    def buffer(self) -> UploadBuffer:
        return UploadBuffer(self.blobs, memory_bytes=self.memory_bytes, max_bytes=self.max_bytes)


def drop_upload(blobs: BlobStore, stored: StoredUpload) -> None:
    """Delete a stored upload no job refers to (a refused or duplicate request). Never raises
    (the spill sweep removes what could not be deleted)."""
    try:
        blobs.delete(stored.key)
    except Exception as exc:
        log.warning("an unused upload could not be deleted (the spill sweep will): %s", exc)
