"""Fetch image bytes from ``s3://bucket/key`` or ``http(s)://`` references.

* ``s3://`` goes through boto3 against ``settings.s3`` (endpoint, region, credentials, timeouts,
  retries), so any S3-compatible store works. The endpoint is operator configuration and is
  trusted; the bucket and key come from the caller.
* ``http://`` / ``https://`` go through :func:`moderation.adapters.ssrf.guarded_client`
  (SSRF guard on every hop, pinned addresses, no environment proxies), with connect/read
  timeouts, at most ``images.max_redirects`` redirects and a streaming size cap: a
  ``Content-Length`` over ``images.max_bytes`` is refused before the body is read, and the body
  is counted while streaming (a missing or lying header does not help), under an overall
  ``images.fetch_deadline_s``.
* Anything else (``file:``, ``ftp:``, ``gopher:``, ``data:``, bare paths) is refused.

Errors (all from :mod:`moderation.exceptions`)::

    ImageFetchError (permanent)       400/403/404/410 and other 4xx, bad reference, no such key
    ├── UrlRefusedError               scheme not allowed, SSRF guard, redirect to a bad scheme
    └── ImageFetchTooLarge            over images.max_bytes
    ImageFetchTransient (transient)   timeouts, connection errors, 5xx, 408, 429,
                                      S3 SlowDown / throttling / 5xx, endpoint unreachable
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import httpx
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

from moderation.adapters.ssrf import Allowlist, check_url, guarded_client
from moderation.exceptions import (
    ImageFetchError,
    ImageFetchTooLarge,
    ImageFetchTransient,
    ModerationError,
    UrlRefusedError,
)
from moderation.settings import Settings

__all__ = ["SCHEMES", "ImageFetcher", "parse_s3_ref"]

SCHEMES = ("s3", "http", "https")
_CHUNK = 64 * 1024
_IDENTITY = {"Accept-Encoding": "identity", "Accept": "image/*,*/*;q=0.8"}
_TRANSIENT_STATUS = frozenset({408, 425, 429})
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


def _scheme_of(ref: str) -> str:
    head, sep, _ = ref.partition(":")
    return head.lower() if sep and head.isascii() and head.replace("+", "").isalnum() else ""


class ImageFetcher:
    """Fetches untrusted image references. Thread-safe; make one per process and reuse it.

    Args:
        settings: ``s3`` (client), ``images`` (size cap, timeouts, redirects), ``queue``
            (read timeout, ``allow_private_hosts``).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.max_bytes = settings.images.max_bytes
        self._allowlist = Allowlist.parse(settings.queue.allow_private_hosts)
        self._lock = threading.Lock()
        self._http: httpx.Client | None = None
        self._s3: Any = None  # botocore S3 client (typed stubs optional)

    # -- public -------------------------------------------------------------------------------

    def fetch(self, ref: str) -> bytes:
        """Download ``ref`` and return its bytes (at most ``images.max_bytes``).

        Raises:
            UrlRefusedError: scheme not allowed, or the SSRF guard refused a host or redirect.
            ImageFetchTooLarge: the object is larger than ``images.max_bytes``.
            ImageFetchError: not found, forbidden, gone, bad request, bad reference.
            ImageFetchTransient: timeout, connection error, 5xx, 429, S3 throttling.
        """
        scheme = _scheme_of(ref)
        if scheme == "s3":
            return self._fetch_s3(ref)
        if scheme in ("http", "https"):
            return self._fetch_http(ref)
        shown = f"scheme {scheme!r}" if scheme else "a reference without a scheme"
        raise UrlRefusedError(
            f"cannot fetch {ref[:200]!r}: {shown} is not allowed "
            f"(allowed: {', '.join(s + '://' for s in SCHEMES)})"
        )

    def fetch_many(
        self, refs: Sequence[str], *, max_workers: int = 8
    ) -> list[bytes | ModerationError]:
        """Fetch ``refs`` concurrently; each slot holds the bytes or the error it raised.

        Only :class:`ModerationError` is captured; anything else is a bug and propagates.
        """

        def one(ref: str) -> bytes | ModerationError:
            try:
                return self.fetch(ref)
            except ModerationError as exc:
                return exc

        if len(refs) <= 1:
            return [one(r) for r in refs]
        with ThreadPoolExecutor(max_workers=min(max_workers, len(refs))) as pool:
            return list(pool.map(one, refs))

    def close(self) -> None:
        """Close pooled connections (idempotent)."""
        with self._lock:
            if self._http is not None:
                self._http.close()
                self._http = None
            self._s3 = None

    def __enter__(self) -> ImageFetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- http ---------------------------------------------------------------------------------

    @property
    def http(self) -> httpx.Client:
        with self._lock:
            if self._http is None:
                self._http = guarded_client(self.settings)
            return self._http

    def _fetch_http(self, url: str) -> bytes:
        check_url(url, self._allowlist)  # clear refusals before httpx parses the URL its way
        deadline = time.monotonic() + self.settings.images.fetch_deadline_s
        try:
            with self.http.stream("GET", url, headers=_IDENTITY) as response:
                self._check_status(url, response)
                declared = response.headers.get("content-length")
                if declared and declared.strip().isdigit() and int(declared) > self.max_bytes:
                    raise ImageFetchTooLarge(
                        f"{url[:200]}: Content-Length {int(declared)} exceeds the "
                        f"{self.max_bytes}-byte limit"
                    )
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > self.max_bytes:
                        raise ImageFetchTooLarge(
                            f"{url[:200]}: body exceeds the {self.max_bytes}-byte limit "
                            "(stopped reading)"
                        )
                    if time.monotonic() > deadline:
                        raise ImageFetchTransient(
                            f"{url[:200]}: download took longer than "
                            f"{self.settings.images.fetch_deadline_s}s"
                        )
                return bytes(body)
        except ModerationError:
            raise
        except httpx.TooManyRedirects as exc:
            raise ImageFetchError(
                f"{url[:200]}: more than {self.settings.images.max_redirects} redirects",
                code="too_many_redirects",
            ) from exc
        except httpx.UnsupportedProtocol as exc:
            raise UrlRefusedError(
                f"{url[:200]}: redirected to a URL whose scheme is not allowed ({exc})"
            ) from exc
        except httpx.TimeoutException as exc:
            raise ImageFetchTransient(
                f"{url[:200]}: timed out ({type(exc).__name__})", code="fetch_timeout"
            ) from exc
        except (httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError) as exc:
            raise ImageFetchTransient(
                f"{url[:200]}: connection failed ({type(exc).__name__}: {exc})"
            ) from exc
        except (httpx.InvalidURL, httpx.LocalProtocolError, httpx.DecodingError) as exc:
            raise ImageFetchError(
                f"{url[:200]}: bad URL or response ({type(exc).__name__}: {exc})"
            ) from exc
        except httpx.HTTPError as exc:
            raise ImageFetchTransient(f"{url[:200]}: {type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _check_status(url: str, response: httpx.Response) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        where = f"{url[:200]}" + (
            f" (after redirects: {str(response.url)[:200]})" if str(response.url) != url else ""
        )
        if status >= 500 or status in _TRANSIENT_STATUS:
            raise ImageFetchTransient(f"{where}: HTTP {status}", code=f"http_{status // 100}xx")
        code = {404: "not_found", 410: "not_found", 403: "forbidden", 401: "forbidden"}.get(
            status, "http_4xx" if status >= 400 else "http_status"
        )
        raise ImageFetchError(f"{where}: HTTP {status}", code=code)

    # -- s3 -----------------------------------------------------------------------------------

    @property
    def s3(self) -> Any:
        with self._lock:
            if self._s3 is None:
                cfg = self.settings.s3
                key_id = cfg.access_key_id.get_secret_value() if cfg.access_key_id else None
                secret = (
                    cfg.secret_access_key.get_secret_value() if cfg.secret_access_key else None
                )
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
