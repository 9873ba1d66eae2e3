"""What a source hands the decoder: the bytes, or a local file holding them. Pure.

Photos and small files stay bytes in memory. A download or an upload larger than
``video.stream_above_bytes`` (a video, in practice) is written to a local file as it streams in
(:class:`MediaFile`), so a worker never holds a whole video in memory: PyAV decodes it from the
file. The content hash is computed while the bytes stream past, so the file is never read again
to hash it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MediaFile", "Payload", "payload_sha256", "payload_size"]


@dataclass(frozen=True, slots=True)
class MediaFile:
    """Bytes in a local file: its path, size and SHA-256 (lowercase hex). ``owned``: a
    temporary file the process wrote, deleted once its job ends (a file that belongs to someone
    else, e.g. the local object store's own copy, is never deleted)."""

    path: Path
    size: int
    sha256: str
    owned: bool = True


#: A source's answer: the bytes, or the file they were streamed into.
Payload = bytes | MediaFile


def payload_size(media: Payload) -> int:
    """How many bytes ``media`` holds."""
    return media.size if isinstance(media, MediaFile) else len(media)


def payload_sha256(media: Payload) -> str:
    """The SHA-256 (lowercase hex) of ``media``'s bytes."""
    if isinstance(media, MediaFile):
        return media.sha256
    return hashlib.sha256(media).hexdigest()
