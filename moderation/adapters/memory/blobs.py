"""Objects by key (the :class:`~moderation.ports.BlobStore` twin)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from moderation.core.blobs import check_key, check_prefix
from moderation.core.payload import Payload
from moderation.exceptions import (
    BlobNotFound,
    BlobStoreUnavailable,
)

__all__ = ["MemoryBlobStore"]


@dataclass
class MemoryBlobStore:
    """The :class:`~moderation.ports.BlobStore` twin. ``down`` makes every call raise
    ``BlobStoreUnavailable`` (S3 unreachable)."""

    objects: dict[str, bytes] = field(default_factory=dict)
    down: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _check(self, key: str) -> str:
        if self.down:
            raise BlobStoreUnavailable("memory blob store is down")
        return check_key(key)

    def put(self, key: str, data: bytes) -> None:
        with self._lock:
            self.objects[self._check(key)] = bytes(data)

    def get(self, key: str) -> bytes:
        with self._lock:
            try:
                return self.objects[self._check(key)]
            except KeyError:
                raise BlobNotFound(f"no object {key}") from None

    def exists(self, key: str) -> bool:
        with self._lock:
            return self._check(key) in self.objects

    def get_media(self, key: str, *, memory_bytes: int) -> Payload:
        return self.get(key)

    def put_file(self, key: str, path: Path) -> None:
        self.put(key, path.read_bytes())

    def upload(self, key: str) -> _MemoryUpload:
        self._check(key)
        return _MemoryUpload(self, key)

    def delete(self, key: str) -> None:
        with self._lock:
            self.objects.pop(self._check(key), None)

    def list(self, prefix: str = "") -> Iterator[str]:
        if self.down:
            raise BlobStoreUnavailable("memory blob store is down")
        check_prefix(prefix)
        with self._lock:
            keys = sorted(k for k in self.objects if k.startswith(prefix))
        yield from keys

    def describe(self) -> str:
        return "memory"


class _MemoryUpload:
    def __init__(self, store: MemoryBlobStore, key: str) -> None:
        self.store = store
        self.key = key
        self.buffer: bytearray | None = bytearray()

    def write(self, chunk: bytes) -> None:
        if self.buffer is not None:
            self.buffer += chunk

    def commit(self) -> None:
        if self.buffer is not None:
            self.store.put(self.key, bytes(self.buffer))
            self.buffer = None

    def abort(self) -> None:
        self.buffer = None
