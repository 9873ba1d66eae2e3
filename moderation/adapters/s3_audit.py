"""Audit segments in an S3 bucket through boto3.

When the bucket has Object Lock enabled, every segment is put with a retention mode and period
(``settings.audit.retention_mode`` / ``retention_days``) so it cannot be deleted or overwritten
until then. Retention is read back with ``head_object`` (works on every S3 implementation,
including those without GetObjectRetention).

botocore errors are translated here: unreachable endpoint, timeouts, throttling and 5xx become
:class:`~moderation.exceptions.AuditSinkUnavailable` (retry later); anything else becomes
:class:`~moderation.exceptions.AuditError`. Credentials never appear in messages or logs: the
``botocore``/``boto3``/``urllib3`` loggers are capped at INFO (their DEBUG output carries the
signed Authorization header).
"""

from __future__ import annotations

import hashlib
import logging
from base64 import b64encode
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from moderation.adapters.support.s3 import s3_client
from moderation.core.audit import Retention, key_bounds
from moderation.exceptions import AuditError, AuditSinkUnavailable
from moderation.settings import AuditSettings, S3Settings

__all__ = ["S3SegmentStore", "quiet_boto_loggers"]

log = logging.getLogger(__name__)

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
_NOISY_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3")


def quiet_boto_loggers() -> None:
    """Cap the AWS SDK loggers at INFO: their DEBUG output includes signed request headers."""
    for name in _NOISY_LOGGERS:
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.INFO:
            logger.setLevel(logging.INFO)


def _translate(exc: Exception, what: str) -> Exception:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        message = f"{what}: S3 error {code or status}: {error.get('Message', '')}".rstrip(": ")
        if code in _TRANSIENT_CODES or status >= 500 or status == 429:
            return AuditSinkUnavailable(message)
        return AuditError(message, code="audit_s3_error")
    return AuditSinkUnavailable(f"{what}: S3 unreachable: {type(exc).__name__}")


class S3SegmentStore:
    """A :class:`moderation.audit.SegmentStore` on an S3 bucket (any S3-compatible endpoint)."""

    def __init__(self, s3: S3Settings, audit: AuditSettings, *, client: Any = None) -> None:
        if not audit.bucket:
            raise AuditError("no audit bucket configured", code="audit_no_bucket")
        self.bucket = audit.bucket
        self.prefix = audit.prefix
        self.retention_days = audit.retention_days
        self.retention_mode = audit.retention_mode
        self._object_lock: bool | None = None
        quiet_boto_loggers()
        self.client: Any = client or s3_client(
            s3,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    @property
    def object_lock(self) -> bool:
        """Whether the bucket has Object Lock enabled (asked once, then cached).

        Raises:
            AuditSinkUnavailable: S3 cannot be reached.
            AuditError: the bucket does not exist or access is denied.
        """
        if self._object_lock is None:
            try:
                conf = self.client.get_object_lock_configuration(Bucket=self.bucket)
                enabled = conf.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled")
                self._object_lock = enabled == "Enabled"
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if code != "ObjectLockConfigurationNotFoundError":
                    raise _translate(exc, f"object lock of {self.bucket}") from exc
                self._object_lock = False
            except BotoCoreError as exc:
                raise _translate(exc, f"object lock of {self.bucket}") from exc
        return self._object_lock

    def put(self, key: str, data: bytes, *, created: datetime) -> None:
        """Upload one segment, with Object Lock retention when the bucket has Object Lock.

        Raises:
            AuditSinkUnavailable: S3 unreachable, timing out or throttling.
            AuditError: any other S3 refusal (no bucket, access denied).
        """
        extra: dict[str, Any] = {}
        if self.object_lock:
            extra["ObjectLockMode"] = self.retention_mode
            extra["ObjectLockRetainUntilDate"] = created.astimezone(UTC) + timedelta(
                days=self.retention_days
            )
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentType="application/x-ndjson",
                ContentEncoding="gzip",
                ContentMD5=b64encode(hashlib.md5(data).digest()).decode(),  # noqa: S324
                **extra,
            )
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc, f"put {key}") from exc

    def list_keys(
        self, start: datetime | None = None, end: datetime | None = None
    ) -> Iterator[str]:
        """Segment keys created in ``[start, end]``, in key order, one listing page at a time.

        Raises:
            AuditSinkUnavailable: S3 unreachable.
            AuditError: the bucket does not exist or access is denied.
        """
        start_after, stop_after = key_bounds(self.prefix, start, end)
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix}
        if start_after:
            kwargs["StartAfter"] = start_after
        while True:
            try:
                page = self.client.list_objects_v2(**kwargs)
            except (ClientError, BotoCoreError) as exc:
                raise _translate(exc, f"list {self.describe()}") from exc
            for item in page.get("Contents", []):
                key = item["Key"]
                if stop_after is not None and key > stop_after:
                    return
                if key.endswith(".jsonl.gz"):
                    yield key
            if not page.get("IsTruncated"):
                return
            kwargs["ContinuationToken"] = page["NextContinuationToken"]
            kwargs.pop("StartAfter", None)

    def get(self, key: str) -> bytes:
        """The stored bytes of one segment.

        Raises:
            AuditSinkUnavailable: S3 unreachable.
            AuditError: no such segment, or access denied.
        """
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
            data: bytes = body.read()
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc, f"get {key}") from exc
        return data

    def retention(self, key: str) -> Retention | None:
        """Object Lock retention of a segment, read through ``head_object``.

        Raises:
            AuditSinkUnavailable: S3 unreachable.
            AuditError: no such segment, or access denied.
        """
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc, f"head {key}") from exc
        mode = head.get("ObjectLockMode")
        until = head.get("ObjectLockRetainUntilDate")
        if not mode or until is None:
            return None
        return Retention(mode=str(mode), retain_until=until.astimezone(UTC))
