"""Which S3 objects a tenant's jobs may read: grants of buckets and key prefixes. Pure.

The service reads ``s3://`` references with an identity that can see more than any one tenant
may (its own buckets, other tenants' buckets). So a reference is only ever read on behalf of
the tenant whose job it is, and only inside that tenant's grants (``tenants.<name>.s3_sources``);
a tenant without grants reads nothing. A refusal never depends on the object: it is decided
before any request, so a refused bucket answers the same whether a key exists or not.

Keys are compared as S3 compares them: byte for byte, no normalisation. A key with ``.`` or
``..`` segments, or empty ones (``a//b``), is refused in every grant, because some
S3-compatible stores and proxies normalise such paths, and would read outside the prefix or, in
path-style addressing (``/bucket/../other-bucket/key``), outside the bucket.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["S3Grant", "grant_for", "plain_key"]


@dataclass(frozen=True, slots=True)
class S3Grant:
    """A tenant may read keys of ``bucket`` that start with ``prefix``; ``source`` is the
    index of the configured location (which endpoint and credentials read it)."""

    bucket: str
    prefix: str = ""
    source: int = 0

    def covers(self, bucket: str, key: str) -> bool:
        return bucket == self.bucket and key.startswith(self.prefix) and plain_key(key)


def plain_key(key: str) -> bool:
    """No ``.``, ``..`` or empty path segments, no backslash or control characters."""
    if "\\" in key or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in key):
        return False
    segments = key.split("/")
    return all(segment not in ("", ".", "..") for segment in segments[:-1]) and segments[
        -1
    ] not in (
        ".",
        "..",
    )


def grant_for(grants: Sequence[S3Grant], bucket: str, key: str) -> S3Grant | None:
    """The first grant that covers ``bucket``/``key``, or None (not allowed)."""
    for grant in grants:
        if grant.covers(bucket, key):
            return grant
    return None
