"""The ``s3://bucket/key`` image source (boto3).

Requests go to ``settings.s3`` (endpoint, region, credentials, timeouts, retries), so any
S3-compatible store works. The endpoint is operator configuration and is trusted; the bucket and
key come from the caller. Objects over ``images.max_bytes`` are refused (declared size, then
counted while streaming).

Errors: ``ImageFetchError`` (no such key or bucket, access denied, bad reference),
``ImageFetchTooLarge``, ``ImageFetchTransient`` (throttling, 5xx, endpoint unreachable).
"""

from __future__ import annotations

import threading
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ParamValidationError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from moderation.core.image_ref import ImageRef
from moderation.exceptions import (
    ImageFetchError,
    ImageFetchTooLarge,
    ImageFetchTransient,
    ModerationError,
)
from moderation.settings import Settings

__all__ = ["S3Source", "parse_s3_ref"]

_CHUNK = 64 * 1024
_S3_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
        "PriorRequestNotComplete",
    }
)


def parse_s3_ref(ref: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> ``(bucket, key)``; the key is taken verbatim (``?``/``#``/``%`` kept).

    Raises:
        ImageFetchError: no bucket or no key.
    """
    rest = ref[5:] if ref[:5].lower() == "s3://" else ""
    bucket, _, key = rest.partition("/")
    if not bucket or not key:
        raise ImageFetchError(
            f"bad S3 reference {ref[:200]!r}: expected s3://bucket/key", code="bad_reference"
        )
    return bucket, key


class S3Source:
    """Fetches ``s3://`` images. Thread-safe; one per process."""

    schemes = ("s3",)
    public = True

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.max_bytes = settings.images.max_bytes
        self._lock = threading.Lock()
        self._s3: Any = None  # botocore S3 client (typed stubs optional)

    def check(self, ref: ImageRef) -> None:
        """Raises:
        ImageFetchError: not ``s3://bucket/key`` (code ``bad_reference``).
        """
        parse_s3_ref(ref.uri)

    def fetch(self, ref: ImageRef) -> bytes:
        """Download the object (at most ``images.max_bytes``).

        Raises:
            ImageFetchTooLarge: the object is larger than ``images.max_bytes``.
            ImageFetchError: no such key or bucket, forbidden, bad reference.
            ImageFetchTransient: throttling, 5xx, endpoint unreachable.
        """
        return self._fetch_s3(ref.uri)

    @property
    def s3(self) -> Any:
        with self._lock:
            if self._s3 is None:
                cfg = self.settings.s3
                key_id = cfg.access_key_id.get_secret_value() if cfg.access_key_id else None
                secret = cfg.secret_access_key.get_secret_value() if cfg.secret_access_key else None
                self._s3 = boto3.session.Session().client(
                    "s3",
                    endpoint_url=cfg.endpoint_url,
                    region_name=cfg.region,
                    aws_access_key_id=key_id,
                    aws_secret_access_key=secret,
                    config=Config(
                        connect_timeout=cfg.connect_timeout_s,
                        read_timeout=cfg.read_timeout_s,
                        retries={"max_attempts": cfg.max_attempts, "mode": "standard"},
                        max_pool_connections=32,
                    ),
                )
            return self._s3

    def _fetch_s3(self, ref: str) -> bytes:
        bucket, key = parse_s3_ref(ref)
        try:
            obj: Any = self.s3.get_object(Bucket=bucket, Key=key)
            body = obj["Body"]
            try:
                size = int(obj.get("ContentLength") or 0)
                if size > self.max_bytes:
                    raise ImageFetchTooLarge(
                        f"{ref[:200]}: {size} bytes exceeds the {self.max_bytes}-byte limit"
                    )
                data = bytearray()
                while chunk := body.read(_CHUNK):
                    data += chunk
                    if len(data) > self.max_bytes:
                        raise ImageFetchTooLarge(
                            f"{ref[:200]}: body exceeds the {self.max_bytes}-byte limit"
                        )
                return bytes(data)
            finally:
                body.close()
        except ModerationError:
            raise
        except ClientError as exc:
            raise _s3_client_error(ref, exc) from exc
        except ParamValidationError as exc:
            raise ImageFetchError(
                f"bad S3 reference {ref[:200]!r}: {exc}", code="bad_reference"
            ) from exc
        except (
            EndpointConnectionError,
            ConnectTimeoutError,
            ReadTimeoutError,
            ConnectionClosedError,
            ResponseStreamingError,
        ) as exc:
            raise ImageFetchTransient(f"{ref[:200]}: S3 unreachable ({exc})") from exc
        except BotoCoreError as exc:
            raise ImageFetchTransient(f"{ref[:200]}: S3 error ({exc})") from exc
        except OSError as exc:  # urllib3 errors surfacing while streaming the body
            raise ImageFetchTransient(f"{ref[:200]}: S3 read failed ({exc})") from exc


def _s3_client_error(ref: str, exc: ClientError) -> ModerationError:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    message = f"{ref[:200]}: S3 {code or status}: {error.get('Message', '') or exc}"
    if code in _S3_TRANSIENT_CODES or status >= 500 or status == 429:
        return ImageFetchTransient(message, code="s3_unavailable")
    if code in ("NoSuchKey", "NoSuchBucket", "404", "NotFound") or status in (404, 410):
        return ImageFetchError(message, code="not_found")
    if code in ("AccessDenied", "403", "AllAccessDisabled", "InvalidAccessKeyId") or status == 403:
        return ImageFetchError(message, code="forbidden")
    return ImageFetchError(message)
