"""The object store for bytes in a local folder: the embedded default when no bucket is set.

Keys are relative paths under ``root``; a ``put`` writes a temporary file, fsyncs it and renames
it into place (:func:`~moderation.adapters.support.files.atomic_write`), so a reader never sees
part of an object. Temporary files start with ``.`` and are never listed.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from moderation.adapters.support.files import atomic_write, fsync_dir
from moderation.core.blobs import check_key, check_prefix
from moderation.core.payload import MediaFile, Payload
from moderation.exceptions import BlobError, BlobNotFound, BlobStoreUnavailable

__all__ = ["LocalBlobStore"]

#: OS errors that may clear by themselves (a full or busy disk, an interrupted call).
_TRANSIENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EAGAIN, errno.EINTR, errno.EBUSY}
_CHUNK = 1024 * 1024


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

    def get_media(self, key: str, *, memory_bytes: int) -> Payload:
        """The bytes, or (larger than ``memory_bytes``) the store's own file, not copied: a
        :class:`MediaFile` the caller must not remove (``owned=False``), hashed as it is read
        in chunks."""
        path = self._path(key)
        try:
            size = path.stat().st_size
            if size <= memory_bytes:
                return path.read_bytes()
            digest = hashlib.sha256()
            with path.open("rb") as fh:
                while chunk := fh.read(_CHUNK):
                    digest.update(chunk)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise BlobNotFound(f"no object {key}") from exc
        except OSError as exc:
            raise _translate(exc, f"cannot read {key}") from exc
        return MediaFile(path=path, size=size, sha256=digest.hexdigest(), owned=False)

    def put_file(self, key: str, path: Path) -> None:
        upload = self.upload(key)
        try:
            with path.open("rb") as fh:
                while chunk := fh.read(_CHUNK):
                    upload.write(chunk)
        except OSError as exc:
            upload.abort()
            raise _translate(exc, f"cannot read {path}") from exc
        except BaseException:
            upload.abort()
            raise
        upload.commit()

    def upload(self, key: str) -> _LocalUpload:
        return _LocalUpload(self._path(key), key, durable=self.durable)

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


class _LocalUpload:
    """An object written chunk by chunk into a temporary file beside its key (``.`` first: never
    listed), renamed into place on commit."""

    def __init__(self, path: Path, key: str, *, durable: bool) -> None:
        self.path = path
        self.key = key
        self.durable = durable
        self.tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        self._fh: Any = None

    def write(self, chunk: bytes) -> None:
        try:
            if self._fh is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fh = self.tmp.open("wb")
            self._fh.write(chunk)
        except OSError as exc:
            self.abort()
            raise _translate(exc, f"cannot write {self.key}") from exc

    def commit(self) -> None:
        try:
            if self._fh is None:
                self.write(b"")
            fh = self._fh
            self._fh = None
            if self.durable:
                fh.flush()
                os.fsync(fh.fileno())
            fh.close()
            self.tmp.replace(self.path)
            if self.durable:
                fsync_dir(self.path.parent)
        except OSError as exc:
            self.abort()
            raise _translate(exc, f"cannot write {self.key}") from exc

    def abort(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self.tmp.unlink(missing_ok=True)
