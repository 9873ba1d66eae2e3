"""Delivering signed callbacks over HTTP, through the SSRF-guarded client.

The body is signed with ``queue.callback_secret`` (:func:`moderation.core.callbacks.sign`). A 2xx
answer is delivered; 400/401/403/404/410/422, a redirect (callbacks are never redirected) and a
URL the SSRF guard refuses are permanent failures; anything else (5xx, timeouts, connection
errors) is retried by the caller until ``queue.callback_max_attempts``.

A receiver cannot hold a deliverer: each attempt has a *total* deadline
(``queue.callback_deadline_s``: connect, TLS, sending, the answer's headers and what is read of
its body together; every socket read and write waits at most what is left of it, so a host that
answers one byte at a time is cut off at the deadline), and at most
``queue.callback_max_reply_bytes`` of the answer's body are read (the rest is never received:
the connection is closed).
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

from moderation.adapters.support.ssrf import Allowlist, GuardedBackend, guarded_client
from moderation.core.callbacks import SIGNATURE_HEADER, Delivered, sign
from moderation.exceptions import ModerationError, PermanentError
from moderation.metrics import metrics
from moderation.settings import Settings

__all__ = ["CallbackDelivery", "Delivered"]

log = logging.getLogger(__name__)
_PERMANENT_STATUS = frozenset({400, 401, 403, 404, 410, 422})


class _Deadline(threading.local):
    """The deadline (``time.monotonic()``) of the delivery running on this thread."""

    at: float | None = None

    def timeout(self, timeout: float | None) -> float | None:
        if self.at is None:
            return timeout
        left = self.at - time.monotonic()
        if left <= 0:
            raise httpcore.ReadTimeout("the callback's deadline passed")
        return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A network stream whose every read and write waits at most what is left of the deadline."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: _Deadline) -> None:
        self.inner = inner
        self.deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.inner.read(max_bytes, self.deadline.timeout(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.inner.write(buffer, self.deadline.timeout(timeout))

    def close(self) -> None:
        self.inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        upgraded = self.inner.start_tls(
            ssl_context, server_hostname, timeout=self.deadline.timeout(timeout)
        )
        return _DeadlineStream(upgraded, self.deadline)

    def get_extra_info(self, info: str) -> Any:
        return self.inner.get_extra_info(info)


class _DeadlineBackend(GuardedBackend):
    def __init__(self, allowlist: Allowlist, deadline: _Deadline) -> None:
        super().__init__(allowlist)
        self.deadline = deadline

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = super().connect_tcp(
            host,
            port,
            timeout=self.deadline.timeout(timeout),
            local_address=local_address,
            socket_options=socket_options,
        )
        return _DeadlineStream(stream, self.deadline)


class CallbackDelivery:
    """POSTs callbacks. Thread-safe; one per process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._deadline = _Deadline()
        self._http: httpx.Client | None = None

    def _client(self) -> httpx.Client:
        with self._lock:
            if self._http is None:
                q = self.settings.queue
                backend = _DeadlineBackend(Allowlist.parse(q.allow_private_hosts), self._deadline)
                self._http = guarded_client(
                    self.settings,
                    max_redirects=0,
                    backend=backend,
                    limits=httpx.Limits(
                        max_connections=max(32, q.callback_slots),
                        max_keepalive_connections=8,
                    ),
                )
                self._http.follow_redirects = False
            return self._http

    def close(self) -> None:
        with self._lock:
            if self._http is not None:
                self._http.close()
                self._http = None

    def deliver(self, job_id: str, url: str, body: bytes, *, attempt: int) -> Delivered:
        """One delivery attempt (``attempt`` counts from 1), within ``queue.callback_deadline_s``
        all told."""
        q = self.settings.queue
        try:
            event = str(json.loads(body).get("event", "job.finished"))
        except ValueError:
            event = "job.finished"
        headers = {
            "Content-Type": "application/json",
            "X-Moderation-Event": event,
            "X-Moderation-Job-Id": job_id,
            SIGNATURE_HEADER: sign(
                q.callback_secret.get_secret_value().encode(), body, int(time.time())
            ),
        }
        m = metrics()
        deadline = self._deadline.at = time.monotonic() + q.callback_deadline_s
        try:
            status = self._post(url, body, headers)
            if status < 300:
                m.callbacks.labels("ok").inc()
                return Delivered("ok")
            problem = f"HTTP {status}"
            permanent = status in _PERMANENT_STATUS or 300 <= status < 400
        except PermanentError as exc:  # refused by the SSRF guard: never retried
            problem, permanent = f"{exc.code}: {exc}", True
        except httpx.TimeoutException as exc:
            permanent = False
            if time.monotonic() >= deadline - 0.05:
                problem = f"no complete answer within the {q.callback_deadline_s:g} s deadline"
            else:
                problem = f"{type(exc).__name__}: {exc}"
        except (httpx.HTTPError, ModerationError) as exc:
            problem, permanent = f"{type(exc).__name__}: {exc}", False
        finally:
            self._deadline.at = None
        if permanent or attempt >= q.callback_max_attempts:
            log.warning(
                "callback for job %r failed for good after %d attempts: %s",
                job_id,
                attempt,
                problem,
            )
            m.callbacks.labels("failed").inc()
            return Delivered("failed", problem)
        m.callbacks.labels("retry").inc()
        return Delivered("retry", problem)

    def _post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        """The answer's status, having read at most ``queue.callback_max_reply_bytes`` of its
        body (a short answer is read whole, so its connection can be kept)."""
        cap = self.settings.queue.callback_max_reply_bytes
        with self._client().stream("POST", url, content=body, headers=headers) as response:
            read = 0
            for chunk in response.iter_raw(chunk_size=1024):
                read += len(chunk)
                if read > cap:
                    break
            return response.status_code

    def backoff(self, attempt: int) -> float:
        """Seconds before attempt ``attempt + 1``: doubling from ``queue.callback_backoff_s``, at
        most ``queue.retry_backoff_max_s``."""
        q = self.settings.queue
        return float(min(q.callback_backoff_s * 2 ** (attempt - 1), q.retry_backoff_max_s))
