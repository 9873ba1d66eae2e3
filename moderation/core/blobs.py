"""Keys of the object store for bytes (:class:`~moderation.ports.BlobStore`).

A key is a relative, slash-separated path of plain segments, the same in S3 and in a local
folder, so it can never escape its prefix or folder whatever a caller passes.
"""

from __future__ import annotations

import re

from moderation.exceptions import BlobKeyInvalid

__all__ = ["MAX_KEY_BYTES", "check_key", "check_prefix"]

#: S3 allows 1024 bytes; the store's own prefix goes in front of the key.
MAX_KEY_BYTES = 900
_SEGMENT = re.compile(r"[A-Za-z0-9_=-][A-Za-z0-9._=-]*")


def check_key(key: str) -> str:
    """``key`` when it is a valid object key.

    Raises:
        BlobKeyInvalid: empty, longer than ``MAX_KEY_BYTES``, absolute, with an empty, ``.``
            or ``..`` segment, or with a character outside ``[A-Za-z0-9._=-]`` in a segment.
    """
    if not isinstance(key, str) or not key:
        raise BlobKeyInvalid("an object key must be a non-empty string")
    if len(key.encode()) > MAX_KEY_BYTES:
        raise BlobKeyInvalid(f"object key longer than {MAX_KEY_BYTES} bytes")
    for segment in key.split("/"):
        if not _SEGMENT.fullmatch(segment) or set(segment) == {"."}:
            raise BlobKeyInvalid(f"object key {key[:80]!r} has an invalid segment")
    return key


def check_prefix(prefix: str) -> str:
    """``prefix`` when it can start keys: empty, or a valid key that may end with ``/``.

    Raises:
        BlobKeyInvalid: as :func:`check_key`.
    """
    if prefix:
        check_key(prefix.removesuffix("/"))
    return prefix
