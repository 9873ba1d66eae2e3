"""The ``http://`` / ``https://`` image source.

Requests go through :func:`moderation.adapters.support.ssrf.guarded_client` (SSRF guard on every
hop, pinned addresses, no environment proxies), with connect/read timeouts, at most
``images.max_redirects`` redirects and a streaming size cap: a ``Content-Length`` over
``images.max_bytes`` is refused before the body is read, and the body is counted while streaming
(a missing or lying header does not help), under an overall ``images.fetch_deadline_s``.

Internal hosts are reachable as the operator allows: ``queue.allow_private_hosts`` for every
tenant, plus ``tenants.<name>.allow_private_hosts`` for that tenant's jobs only (a tenant's own
on-premises image host is not another tenant's way into the network). Each tenant with hosts of
its own gets its own guarded client.

Errors::

    ImageFetchError (permanent)       400/403/404/410 and other 4xx, bad URL
    ├── UrlRefusedError               SSRF guard, redirect to a bad scheme
    └── ImageFetchTooLarge            over images.max_bytes
    ImageFetchTransient (transient)   timeouts, connection errors, 5xx, 408, 425, 429
"""

from __future__ import annotations

import threading
import time

import httpx

from moderation.adapters.support.spool import Spool
from moderation.adapters.support.ssrf import ANY_ADDRESS, Allowlist, check_url, guarded_client
from moderation.core.image_ref import ImageRef
from moderation.core.payload import Payload
from moderation.exceptions import (
    ImageFetchError,
    ImageFetchTooLarge,
    ImageFetchTransient,
    ModerationError,
    UrlRefusedError,
)
from moderation.settings import Settings

__all__ = ["HttpSource"]

_IDENTITY = {"Accept-Encoding": "identity", "Accept": "image/*,*/*;q=0.8"}
_TRANSIENT_STATUS = frozenset({408, 425, 429})


class HttpSource:
    """Fetches untrusted ``http(s)://`` images. Thread-safe; one per process."""

    schemes = ("http", "https")
    public = True

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.max_bytes = settings.images.max_bytes
        shared = list(settings.queue.allow_private_hosts)
        self._allowed: dict[str | None, list[str]] = {None: shared}
        for name, own in settings.tenants.items():
            if own.allow_private_hosts:
                self._allowed[name] = [*shared, *own.allow_private_hosts]
        self._allowlists = {who: Allowlist.parse(hosts) for who, hosts in self._allowed.items()}
        self._lock = threading.Lock()
        self._clients: dict[str | None, httpx.Client] = {}

    def check(self, ref: ImageRef, *, tenant: str | None) -> None:
        """Scheme and syntax only: addresses are vetted at fetch time, after DNS.

        Raises:
            UrlRefusedError: not an http(s) URL this guard accepts.
        """
        check_url(ref.uri, ANY_ADDRESS)

    def fetch(self, ref: ImageRef, *, tenant: str | None) -> bytes:
        """Download ``ref`` (at most ``images.max_bytes``).

        Raises:
            UrlRefusedError: the SSRF guard refused a host or redirect.
            ImageFetchTooLarge: the body is larger than ``images.max_bytes``.
            ImageFetchError: not found, forbidden, gone, bad request.
            ImageFetchTransient: timeout, connection error, 5xx, 429.
        """
        data = self._fetch_http(
            ref.uri, tenant if tenant in self._allowed else None, memory_bytes=self.max_bytes
        )
        assert isinstance(data, bytes)  # the whole cap fits in memory: never a file
        return data

    def fetch_media(self, ref: ImageRef, *, tenant: str | None) -> Payload:
        """:meth:`fetch`, streamed into a temporary file once the body passes
        ``video.stream_above_bytes`` (the caller :func:`discards
        <moderation.adapters.support.spool.discard>` it)."""
        return self._fetch_http(
            ref.uri,
            tenant if tenant in self._allowed else None,
            memory_bytes=self.settings.video.stream_above_bytes,
        )

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()

    @property
    def http(self) -> httpx.Client:
        """The guarded client of every tenant without private hosts of its own."""
        return self._client(None)

    def _client(self, who: str | None) -> httpx.Client:
        with self._lock:
            client = self._clients.get(who)
            if client is None:
                queue = self.settings.queue.model_copy(
                    update={"allow_private_hosts": self._allowed[who]}
                )
                client = guarded_client(self.settings.model_copy(update={"queue": queue}))
                self._clients[who] = client
            return client

    def _fetch_http(self, url: str, who: str | None, *, memory_bytes: int) -> Payload:
        # Clear refusals before httpx parses the URL its way.
        check_url(url, self._allowlists[who])
        deadline = time.monotonic() + self.settings.images.fetch_deadline_s
        try:
            with self._client(who).stream("GET", url, headers=_IDENTITY) as response:
                self._check_status(url, response)
                declared = response.headers.get("content-length")
                if declared and declared.strip().isdigit() and int(declared) > self.max_bytes:
                    raise ImageFetchTooLarge(
                        f"{url[:200]}: Content-Length {int(declared)} exceeds the "
                        f"{self.max_bytes}-byte limit"
                    )
                spool = Spool(
                    max_bytes=self.max_bytes,
                    memory_bytes=memory_bytes,
                    too_large=lambda cap: ImageFetchTooLarge(
                        f"{url[:200]}: body exceeds the {cap}-byte limit (stopped reading)"
                    ),
                )
                try:
                    for chunk in response.iter_bytes():
                        spool.write(chunk)
                        if time.monotonic() > deadline:
                            raise ImageFetchTransient(
                                f"{url[:200]}: download took longer than "
                                f"{self.settings.images.fetch_deadline_s}s"
                            )
                except BaseException:
                    spool.abort()
                    raise
                return spool.finish()
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
        except OSError as exc:  # the temporary file of a large download (a full disk)
            raise ImageFetchTransient(f"{url[:200]}: cannot keep the download: {exc}") from exc

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
