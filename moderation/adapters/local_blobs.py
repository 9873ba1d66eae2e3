"""The object store for bytes in a local folder: the embedded default when no bucket is set.

Keys are relative paths under ``root``; a ``put`` writes a temporary file, fsyncs it and renames
it into place (:func:`~moderation.adapters.support.files.atomic_write`), so a reader never sees
part of an object. Temporary files start with ``.`` and are never listed.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

from moderation.adapters.support.files import atomic_write
from moderation.core.blobs import check_key, check_prefix
from moderation.exceptions import BlobError, BlobNotFound, BlobStoreUnavailable

__all__ = ["LocalBlobStore"]

#: OS errors that may clear by themselves (a full or busy disk, an interrupted call).
_TRANSIENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EAGAIN, errno.EINTR, errno.EBUSY}


def _translate(exc: OSError, what: str) -> Exception:
    if exc.errno in _TRANSIENT_ERRNOS:
        return BlobStoreUnavailable(f"{what}: {exc.strerror}")
    return BlobError(f"{what}: {exc.strerror}", code="blob_io_error")


class LocalBlobStore:
    """A :class:`~moderation.ports.BlobStore` on a directory."""

    def __init__(self, root: Path, *, durable: bool = True) -> None:
        self.root = root
        self.durable = durable

    def describe(self) -> str:
        return str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            atomic_write(path, data, durable=self.durable)
        except OSError as exc:
            raise _translate(exc, f"cannot write {key}") from exc

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise BlobNotFound(f"no object {key}") from exc
        except OSError as exc:
            raise _translate(exc, f"cannot read {key}") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return
        except OSError as exc:
            raise _translate(exc, f"cannot delete {key}") from exc

    def list(self, prefix: str = "") -> Iterator[str]:
        check_prefix(prefix)
        # Walk only the folder the prefix names, then filter its last, partial segment.
        folder, _, _ = prefix.rpartition("/")
        base = self.root / folder if folder else self.root
        if not base.is_dir():
            return
        start = f"{folder}/" if folder else ""
        for key in self._walk(base, start):
            if key.startswith(prefix):
                yield key

    def _walk(self, folder: Path, key_prefix: str) -> Iterator[str]:
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _translate(exc, f"cannot list {folder}") from exc
        # Key order: a folder's keys sort as "name/...", so compare names with a trailing "/".
        ordered = sorted(entries, key=lambda e: e.name + "/" if e.is_dir() else e.name)
        for entry in ordered:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                yield from self._walk(Path(entry.path), f"{key_prefix}{entry.name}/")
            elif entry.is_file():
                yield key_prefix + entry.name
