"""The object store for bytes in an S3 bucket (any S3-compatible endpoint), under a prefix.

A ``put`` is one ``put_object`` with its MD5 (S3 stores it whole or not at all). botocore errors
are translated here: unreachable endpoint, timeouts, throttling and 5xx become
:class:`~moderation.exceptions.BlobStoreUnavailable`; a missing key
:class:`~moderation.exceptions.BlobNotFound`; anything else
:class:`~moderation.exceptions.BlobError`.
Retention is the bucket's business (a lifecycle rule on the prefix) or the caller's (``delete``
when the item the bytes belong to ends).
"""

from __future__ import annotations

import hashlib
from base64 import b64encode
from collections.abc import Iterator
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from moderation.adapters.support.s3 import s3_client
from moderation.core.blobs import check_key, check_prefix
from moderation.exceptions import BlobError, BlobNotFound, BlobStoreUnavailable
from moderation.settings import BlobSettings, S3Settings

__all__ = ["S3BlobStore"]

_TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    "503",
    "500",
}
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}


def _translate(exc: Exception, what: str) -> Exception:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        message = f"{what}: S3 error {code or status}: {error.get('Message', '')}".rstrip(": ")
        if code in _MISSING_CODES:
            return BlobNotFound(message)
        if code in _TRANSIENT_CODES or status >= 500 or status == 429:
            return BlobStoreUnavailable(message)
        return BlobError(message, code="blob_s3_error")
    return BlobStoreUnavailable(f"{what}: S3 unreachable: {type(exc).__name__}")


class S3BlobStore:
    """A :class:`~moderation.ports.BlobStore` on ``s3://bucket/prefix``."""

    def __init__(self, s3: S3Settings, blobs: BlobSettings, *, client: Any = None) -> None:
        if not blobs.bucket:
            raise BlobError("no blob bucket configured", code="blob_no_bucket")
        self.bucket = blobs.bucket
        self.prefix = check_prefix(blobs.prefix)
        self.client: Any = client or s3_client(
            s3,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def put(self, key: str, data: bytes) -> None:
        full = self._key(key)
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=full,
                Body=data,
                ContentMD5=b64encode(hashlib.md5(data).digest()).decode(),  # noqa: S324
            )
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc, f"put {key}") from exc

    def get(self, key: str) -> bytes:
        full = self._key(key)
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=full)["Body"]
            data: bytes = body.read()
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc, f"get {key}") from exc
        return data

    def exists(self, key: str) -> bool:
        full = self._key(key)
        try:
            self.client.head_object(Bucket=self.bucket, Key=full)
        except (ClientError, BotoCoreError) as exc:
            error = _translate(exc, f"head {key}")
            if isinstance(error, BlobNotFound):
                return False
            raise error from exc
        return True

    def delete(self, key: str) -> None:
        full = self._key(key)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=full)
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc, f"delete {key}") from exc

    def list(self, prefix: str = "") -> Iterator[str]:
        check_prefix(prefix)
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix + prefix}
        while True:
            try:
                page = self.client.list_objects_v2(**kwargs)
            except (ClientError, BotoCoreError) as exc:
                raise _translate(exc, f"list {self.describe()}{prefix}") from exc
            for item in page.get("Contents", []):
                yield str(item["Key"])[len(self.prefix) :]
            if not page.get("IsTruncated"):
                return
            kwargs["ContinuationToken"] = page["NextContinuationToken"]
