"""Delivering signed callbacks over HTTP, through the SSRF-guarded client.

The body is signed with ``queue.callback_secret`` (:func:`moderation.core.callbacks.sign`). A 2xx
answer is delivered; 400/401/403/404/410/422 and a URL the SSRF guard refuses are permanent
failures; anything else (5xx, timeouts, connection errors) is retried by the caller until
``queue.callback_max_attempts``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Literal

import httpx

from moderation.adapters.support.ssrf import guarded_client
from moderation.core.callbacks import SIGNATURE_HEADER, sign
from moderation.exceptions import ModerationError, PermanentError
from moderation.metrics import metrics
from moderation.settings import Settings

__all__ = ["CallbackDelivery", "Delivered"]

log = logging.getLogger(__name__)
_PERMANENT_STATUS = frozenset({400, 401, 403, 404, 410, 422})


@dataclass(frozen=True, slots=True)
class Delivered:
    status: Literal["ok", "retry", "failed"]
    problem: str | None = None


class CallbackDelivery:
    """POSTs callbacks. Thread-safe; one per process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._http: httpx.Client | None = None

    def _client(self) -> httpx.Client:
        with self._lock:
            if self._http is None:
                self._http = guarded_client(self.settings)
            return self._http

    def deliver(self, job_id: str, url: str, body: bytes, *, attempt: int) -> Delivered:
        """One delivery attempt (``attempt`` counts from 1)."""
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
        try:
            response = self._client().post(url, content=body, headers=headers)
            if response.status_code < 300:
                m.callbacks.labels("ok").inc()
                return Delivered("ok")
            problem = f"HTTP {response.status_code}"
            permanent = response.status_code in _PERMANENT_STATUS
        except PermanentError as exc:  # refused by the SSRF guard: never retried
            problem, permanent = f"{exc.code}: {exc}", True
        except (httpx.HTTPError, ModerationError) as exc:
            problem, permanent = f"{type(exc).__name__}: {exc}", False
        if permanent or attempt >= q.callback_max_attempts:
            log.warning(
                "callback for job %s failed for good after %d attempts: %s",
                job_id,
                attempt,
                problem,
            )
            m.callbacks.labels("failed").inc()
            return Delivered("failed", problem)
        m.callbacks.labels("retry").inc()
        return Delivered("retry", problem)

    def backoff(self, attempt: int) -> float:
        return float(self.settings.queue.callback_backoff_s * 2 ** (attempt - 1))
