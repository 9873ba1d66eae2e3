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

import contextlib
import hashlib
from base64 import b64encode
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from moderation.adapters.support.s3 import s3_client
from moderation.adapters.support.spool import Spool
from moderation.core.blobs import check_key, check_prefix
from moderation.core.payload import Payload
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
_CHUNK = 1024 * 1024
#: Multipart upload part size (S3: at least 5 MiB but the last).
_PART = 8 * 1024 * 1024


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

    def get_media(self, key: str, *, memory_bytes: int) -> Payload:
        """The bytes, or (larger than ``memory_bytes``) a temporary file they were streamed into
        (hashed on the way; the caller removes it)."""
        full = self._key(key)
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=full)
            body = obj["Body"]
            spool = Spool(
                max_bytes=int(obj["ContentLength"]) if "ContentLength" in obj else 2**62,
                memory_bytes=memory_bytes,
                too_large=lambda cap: BlobError(
                    f"get {key}: more than the {cap} bytes announced", code="blob_s3_error"
                ),
            )
            try:
                while chunk := body.read(_CHUNK):
                    spool.write(chunk)
            except BaseException:
                spool.abort()
                raise
            finally:
                body.close()
            return spool.finish()
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc, f"get {key}") from exc
        except OSError as exc:  # the body's stream broke, or the temporary file (a full disk)
            raise BlobStoreUnavailable(f"get {key}: {exc}") from exc

    def put_file(self, key: str, path: Path) -> None:
        """Streamed from the file (one ``put_object`` up to ``_PART`` bytes, else a multipart
        upload of ``_PART``-byte parts)."""
        upload = self.upload(key)
        try:
            with path.open("rb") as fh:
                while chunk := fh.read(_PART):
                    upload.write(chunk)
        except BaseException:
            upload.abort()
            raise
        upload.commit()

    def upload(self, key: str) -> _S3Upload:
        return _S3Upload(self, key)

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


class _S3Upload:
    """An object written chunk by chunk: buffered up to ``_PART`` bytes; a small object is one
    ``put_object`` on commit, a larger one a multipart upload of ``_PART``-byte parts (each with
    its MD5), completed on commit and aborted (every part dropped) on abort. Parts of an upload
    whose process died stay invisible until the bucket's ``AbortIncompleteMultipartUpload``
    lifecycle rule removes them (docs/video.md)."""

    def __init__(self, store: S3BlobStore, key: str) -> None:
        self.store = store
        self.key = key
        self.full = store._key(key)
        self.buffer = bytearray()
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []

    def _call(self, what: str, fn: Any, **kwargs: Any) -> Any:
        try:
            return fn(Bucket=self.store.bucket, Key=self.full, **kwargs)
        except (ClientError, BotoCoreError) as exc:
            error = _translate(exc, f"{what} {self.key}")
        with contextlib.suppress(BlobError, BlobStoreUnavailable):  # report the first error
            self.abort()
        raise error

    def _send_part(self) -> None:
        client = self.store.client
        if self.upload_id is None:
            started = self._call("start upload of", client.create_multipart_upload)
            self.upload_id = str(started["UploadId"])
        data = bytes(self.buffer[:_PART])
        del self.buffer[:_PART]
        number = len(self.parts) + 1
        sent = self._call(
            "upload part of",
            client.upload_part,
            UploadId=self.upload_id,
            PartNumber=number,
            Body=data,
            ContentMD5=b64encode(hashlib.md5(data).digest()).decode(),  # noqa: S324
        )
        self.parts.append({"PartNumber": number, "ETag": sent["ETag"]})

    def write(self, chunk: bytes) -> None:
        self.buffer += chunk
        while len(self.buffer) >= 2 * _PART:  # keep a part back: the last may not be empty
            self._send_part()

    def commit(self) -> None:
        if self.upload_id is None and len(self.buffer) <= _PART:
            data = bytes(self.buffer)
            self.buffer.clear()
            self.store.put(self.key, data)
            return
        while self.buffer:
            self._send_part()
        self._call(
            "complete upload of",
            self.store.client.complete_multipart_upload,
            UploadId=self.upload_id,
            MultipartUpload={"Parts": self.parts},
        )
        self.upload_id = None

    def abort(self) -> None:
        self.buffer.clear()
        upload_id, self.upload_id = self.upload_id, None
        if upload_id is None:
            return
        try:
            self.store.client.abort_multipart_upload(
                Bucket=self.store.bucket, Key=self.full, UploadId=upload_id
            )
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc, f"abort upload of {self.key}") from exc
