"""The ``s3://bucket/key`` image source (boto3).

Every read is on behalf of a tenant, inside that tenant's grants (``tenants.<name>.s3_sources``:
buckets and key prefixes, see :mod:`moderation.core.source_access`); a tenant with none reads
nothing, and a reference outside them is refused before any request is sent (the same answer
whether the object exists or not). ``check`` does this at submit, ``fetch`` again in the worker.
Only a source built for the operator's own tools (``operator=True``: the CLI's ``eval`` and
``calibrate``) reads without a tenant, with the service's identity.

Requests go to ``settings.s3`` (endpoint, region, credentials, timeouts, retries), or to the
grant's own endpoint and credentials where the tenant brings them. Objects over
``images.max_bytes`` are refused (declared size, then counted while streaming).

Errors: ``SourceNotAllowed`` (outside the tenant's grants), ``ImageFetchError`` (no such key or
bucket, access denied, bad reference), ``ImageFetchTooLarge``, ``ImageFetchTransient``
(throttling, 5xx, endpoint unreachable).
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

from moderation.adapters.support.spool import Spool
from moderation.core.image_ref import ImageRef
from moderation.core.payload import Payload
from moderation.core.source_access import S3Grant, grant_for
from moderation.exceptions import (
    ImageFetchError,
    ImageFetchTooLarge,
    ImageFetchTransient,
    ModerationError,
    SourceNotAllowed,
)
from moderation.settings import Settings, TenantS3Source

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
    """Fetches ``s3://`` images for tenants, inside their grants. Thread-safe; one per process."""

    schemes = ("s3",)
    public = True

    def __init__(self, settings: Settings, *, operator: bool = False) -> None:
        self.settings = settings
        self.max_bytes = settings.images.max_bytes
        self.operator = operator
        self._locations: dict[str, list[TenantS3Source]] = {
            name: list(own.s3_sources) for name, own in settings.tenants.items()
        }
        self._grants: dict[str, tuple[S3Grant, ...]] = {
            name: tuple(
                S3Grant(bucket=loc.bucket, prefix=loc.prefix, source=i)
                for i, loc in enumerate(locations)
            )
            for name, locations in self._locations.items()
        }
        self._lock = threading.Lock()
        self._clients: dict[tuple[str, int] | None, Any] = {}  # botocore S3 clients

    def grant(self, ref: ImageRef, *, tenant: str | None) -> S3Grant | None:
        """The grant ``tenant`` reads ``ref`` under (None: the operator's own identity).

        Raises:
            ImageFetchError: not ``s3://bucket/key`` (code ``bad_reference``).
            SourceNotAllowed: outside the tenant's grants (decided without any request).
        """
        bucket, key = parse_s3_ref(ref.uri)
        if tenant is None and self.operator:
            return None
        found = grant_for(self._grants.get(tenant, ()), bucket, key) if tenant else None
        if found is None:
            raise SourceNotAllowed(
                "this S3 location is not one of the S3 sources configured for your tenant"
            )
        return found

    def check(self, ref: ImageRef, *, tenant: str | None) -> None:
        """Raises:
        ImageFetchError: not ``s3://bucket/key`` (code ``bad_reference``).
        SourceNotAllowed: outside the tenant's grants.
        """
        self.grant(ref, tenant=tenant)

    def fetch(self, ref: ImageRef, *, tenant: str | None) -> bytes:
        """Download the object (at most ``images.max_bytes``), on behalf of ``tenant``.

        Raises:
            SourceNotAllowed: outside the tenant's grants (no request is sent).
            ImageFetchTooLarge: the object is larger than ``images.max_bytes``.
            ImageFetchError: no such key or bucket, forbidden, bad reference.
            ImageFetchTransient: throttling, 5xx, endpoint unreachable.
        """
        data = self._fetch_s3(ref.uri, self._for(ref, tenant), memory_bytes=self.max_bytes)
        assert isinstance(data, bytes)  # the whole cap fits in memory: never a file
        return data

    def fetch_media(self, ref: ImageRef, *, tenant: str | None) -> Payload:
        """:meth:`fetch`, streamed into a temporary file once the object passes
        ``video.stream_above_bytes`` (the caller :func:`discards
        <moderation.adapters.support.spool.discard>` it)."""
        return self._fetch_s3(
            ref.uri,
            self._for(ref, tenant),
            memory_bytes=self.settings.video.stream_above_bytes,
        )

    def _for(self, ref: ImageRef, tenant: str | None) -> Any:
        """The client that reads ``ref`` for ``tenant`` (inside its grants)."""
        grant = self.grant(ref, tenant=tenant)
        return self._client(None if grant is None or tenant is None else (tenant, grant.source))

    @property
    def s3(self) -> Any:
        """The client with the service's own identity."""
        return self._client(None)

    def _client(self, location: tuple[str, int] | None) -> Any:
        cfg = self.settings.s3
        own = self._locations[location[0]][location[1]] if location is not None else None
        if (
            own is not None
            and own.endpoint_url is None
            and own.access_key_id is None
            and own.region in (None, cfg.region)
        ):
            location = None  # the service's identity: share its client
        with self._lock:
            client = self._clients.get(location)
            if client is None:
                key_id = cfg.access_key_id.get_secret_value() if cfg.access_key_id else None
                secret = cfg.secret_access_key.get_secret_value() if cfg.secret_access_key else None
                endpoint, region = cfg.endpoint_url, cfg.region
                if own is not None and location is not None:
                    endpoint = own.endpoint_url or endpoint
                    region = own.region or region
                    if own.access_key_id is not None and own.secret_access_key is not None:
                        key_id = own.access_key_id.get_secret_value()
                        secret = own.secret_access_key.get_secret_value()
                client = boto3.session.Session().client(
                    "s3",
                    endpoint_url=endpoint,
                    region_name=region,
                    aws_access_key_id=key_id,
                    aws_secret_access_key=secret,
                    config=Config(
                        connect_timeout=cfg.connect_timeout_s,
                        read_timeout=cfg.read_timeout_s,
                        retries={"max_attempts": cfg.max_attempts, "mode": "standard"},
                        max_pool_connections=32,
                    ),
                )
                self._clients[location] = client
            return client

    def _fetch_s3(self, ref: str, client: Any, *, memory_bytes: int) -> Payload:
        bucket, key = parse_s3_ref(ref)
        try:
            obj: Any = client.get_object(Bucket=bucket, Key=key)
            body = obj["Body"]
            try:
                size = int(obj.get("ContentLength") or 0)
                if size > self.max_bytes:
                    raise ImageFetchTooLarge(
                        f"{ref[:200]}: {size} bytes exceeds the {self.max_bytes}-byte limit"
                    )
                spool = Spool(
                    max_bytes=self.max_bytes,
                    memory_bytes=memory_bytes,
                    too_large=lambda cap: ImageFetchTooLarge(
                        f"{ref[:200]}: body exceeds the {cap}-byte limit"
                    ),
                )
                try:
                    while chunk := body.read(_CHUNK):
                        spool.write(chunk)
                except BaseException:
                    spool.abort()
                    raise
                return spool.finish()
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
        except OSError as exc:  # urllib3 errors while streaming the body; a full disk
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
