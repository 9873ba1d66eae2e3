"""Signed callbacks: the body upstream services receive and how they check it. Pure.

``POST callback_url`` with the JSON body ``{"event": ..., "result": JobResult}`` (the tenant's
own job id, and its tenant) and headers ``X-Moderation-Event``, ``X-Moderation-Job-Id`` (the
tenant's own id) and ``X-Moderation-Signature: t=<unix time>,
v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`` (see :func:`sign`, :func:`verify`). Receivers drop
duplicates by job id and event: delivery is at least once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Literal

from moderation.core.jobs import JobResult
from moderation.core.notices import Notice

__all__ = [
    "SIGNATURE_HEADER",
    "Delivered",
    "Event",
    "PendingCallback",
    "callback_body",
    "notice_callback_body",
    "sign",
    "verify",
]

Event = Literal["job.finished", "job.human_decision", "notice.outcome"]
SIGNATURE_HEADER = "X-Moderation-Signature"


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    """The ``X-Moderation-Signature`` header value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(
    secret: bytes, body: bytes, header: str, *, tolerance_s: int = 300, now: float | None = None
) -> bool:
    """Check a callback signature (for receivers): right MAC and a fresh timestamp."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
        mac = parts["v1"]
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    expected = sign(secret, body, timestamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected, mac)


def callback_body(event: Event, result: JobResult) -> bytes:
    """The body of a callback: the result as its tenant sees it (its own job id, its tenant)."""
    return json.dumps(
        {"event": event, "result": result.for_caller().model_dump(mode="json")},
        separators=(",", ":"),
    ).encode()


def notice_callback_body(notice: Notice) -> bytes:
    """The body of a notice's outcome callback (event ``notice.outcome``): the notice as its
    tenant sees it, with the outcome of the item's human review."""
    return json.dumps(
        {"event": "notice.outcome", "notice": notice.for_caller()}, separators=(",", ":")
    ).encode()


@dataclass(frozen=True, slots=True)
class PendingCallback:
    """A callback waiting in the outbox (:class:`~moderation.ports.CallbackOutbox`)."""

    #: The outbox's own id of this delivery.
    id: str
    tenant: str
    #: The tenant's own job id (``X-Moderation-Job-Id``).
    job_id: str
    url: str
    body: bytes
    #: Attempts made so far (0 before the first).
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class Delivered:
    """The outcome of one delivery attempt: ``ok`` (2xx), ``retry`` (later, with backoff) or
    ``failed`` (for good: a permanent answer, a refused URL, or the last attempt)."""

    status: Literal["ok", "retry", "failed"]
    problem: str | None = None
