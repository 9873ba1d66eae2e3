"""Receiving untrusted bytes of unknown size: in memory while small, then into a local file.

A :class:`Spool` counts and hashes every chunk as it arrives, refuses the one that takes it over
its cap (nothing of it is kept: the file is removed), and moves what it holds into a temporary
file once it passes ``memory_bytes``. :meth:`Spool.finish` hands back the bytes, or a
:class:`~moderation.core.payload.MediaFile`, so a large download is never held whole in memory.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from moderation.core.payload import MediaFile, Payload

__all__ = ["Spool", "discard", "sweep_stale"]

#: Temporary files of spooled downloads start with this (a sweep of the temp folder finds them).
PREFIX = "moderation-media-"


class Spool:
    """Collects one download. Not thread-safe (one per download).

    Args:
        max_bytes: the cap; the chunk that passes it raises ``too_large(max_bytes)``.
        memory_bytes: bytes kept in memory at most; above, they go to a file in ``directory``
            (None: the system's temporary folder).
        too_large: builds the error of a download over ``max_bytes``.
    """

    def __init__(
        self,
        *,
        max_bytes: int,
        memory_bytes: int,
        too_large: Callable[[int], Exception],
        directory: Path | None = None,
    ) -> None:
        self.max_bytes = max_bytes
        self.memory_bytes = memory_bytes
        self.too_large = too_large
        self.directory = directory
        self.size = 0
        self._hash = hashlib.sha256()
        self._buffer = bytearray()
        self._file: IO[bytes] | None = None
        self._path: Path | None = None

    def write(self, chunk: bytes) -> None:
        """Add ``chunk``.

        Raises:
            Exception: ``too_large(max_bytes)`` when the total passes ``max_bytes`` (what was
                spooled is removed); ``OSError`` when the temporary file cannot be written.
        """
        if not chunk:
            return
        self.size += len(chunk)
        if self.size > self.max_bytes:
            self.abort()
            raise self.too_large(self.max_bytes)
        self._hash.update(chunk)
        if self._file is None and len(self._buffer) + len(chunk) <= self.memory_bytes:
            self._buffer += chunk
            return
        if self._file is None:
            fd, name = tempfile.mkstemp(prefix=PREFIX, dir=self.directory)
            self._path = Path(name)
            self._file = os.fdopen(fd, "wb")
            self._file.write(self._buffer)
            self._buffer = bytearray()
        self._file.write(chunk)

    def finish(self) -> Payload:
        """What was received: bytes (at most ``memory_bytes``) or the file holding them (the
        caller owns it: :func:`discard` it when done)."""
        if self._file is None or self._path is None:
            data = bytes(self._buffer)
            self._buffer = bytearray()
            return data
        self._file.close()
        self._file = None
        return MediaFile(path=self._path, size=self.size, sha256=self._hash.hexdigest())

    def abort(self) -> None:
        """Drop what was received (the temporary file is removed). Idempotent."""
        self._buffer = bytearray()
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._path is not None:
            self._path.unlink(missing_ok=True)
            self._path = None


def discard(media: Payload | object) -> None:
    """Remove ``media``'s temporary file, if it is one this process owns."""
    if isinstance(media, MediaFile) and media.owned:
        media.path.unlink(missing_ok=True)


def sweep_stale(older_than_s: float, directory: Path | None = None) -> int:
    """Remove the spooled downloads (``moderation-media-*``) in ``directory`` (None: the system's
    temporary folder) last written more than ``older_than_s`` ago: what a worker killed mid-job
    left (a live job's file is far younger: a download is bounded by its deadline and a decode
    by ``video.max_decode_s``). Returns how many were removed; errors are skipped."""
    folder = Path(directory or tempfile.gettempdir())
    cutoff = time.time() - older_than_s
    removed = 0
    try:
        entries = list(folder.glob(f"{PREFIX}*"))
    except OSError:
        return 0
    for path in entries:
        try:
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except OSError:
            continue
    return removed
