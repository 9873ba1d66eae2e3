"""Review evidence: the exact bytes a job was scored on, kept for the human reviewer. Pure.

When a job goes to review, the worker stores the bytes it fetched and scored (whose SHA-256 is
the job's ``content_sha256``) in the object store under :func:`evidence_key`; the review page
shows only those bytes, and only after :func:`verifies` (never the source URL again, which its
host may have changed since). The key is derived from the review item, namespaced by tenant,
and ends with the content hash: a key cannot be guessed without already holding the bytes.

Retention follows the item's life, not Redis: the bytes stay while the item waits; once it is
decided, a marker under :func:`retired_key` (by UTC day of the decision) lets the sweep delete
them ``review.evidence_retention_s`` later.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from datetime import UTC, datetime

__all__ = [
    "EVIDENCE_PREFIX",
    "RETIRED_PREFIX",
    "evidence_key",
    "evidence_of_marker",
    "retired_day_prefix",
    "retired_key",
    "tenant_segment",
    "verifies",
]

EVIDENCE_PREFIX = "review-evidence/"
RETIRED_PREFIX = "review-evidence-retired/"
_PLAIN = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def tenant_segment(tenant: str) -> str:
    """A key segment for ``tenant``: the name when it is plain, else ``t=`` + its hash (two
    tenants never share a segment)."""
    if _PLAIN.fullmatch(tenant):
        return tenant
    return "t=" + hashlib.sha256(tenant.encode()).hexdigest()[:40]


def evidence_key(tenant: str, review_id: str, content_sha256: str) -> str:
    """Where the scored bytes of review ``review_id`` are kept.

    Raises:
        ValueError: ``content_sha256`` is not a lowercase hex SHA-256, or ``review_id`` is not
            a plain segment.
    """
    if not _SHA256.fullmatch(content_sha256):
        raise ValueError("content_sha256 must be 64 lowercase hex digits")
    if not _PLAIN.fullmatch(review_id):
        raise ValueError(f"review id {review_id[:40]!r} is not a plain key segment")
    return f"{EVIDENCE_PREFIX}{tenant_segment(tenant)}/{review_id}/{content_sha256}"


def retired_day_prefix(day: str) -> str:
    """The markers of items decided on UTC ``day`` (``YYYY-MM-DD``)."""
    return f"{RETIRED_PREFIX}{day}/"


def retired_key(evidence: str, decided_at: datetime) -> str:
    """The marker of evidence whose item was decided at ``decided_at`` (it names the evidence
    key, so the sweep needs nothing else)."""
    day = decided_at.astimezone(UTC).strftime("%Y-%m-%d")
    return retired_day_prefix(day) + evidence.removeprefix(EVIDENCE_PREFIX).replace("/", ".")


def evidence_of_marker(marker: str) -> str:
    """The evidence key a marker (from :func:`retired_key`) names."""
    name = marker.rsplit("/", 1)[-1]
    return EVIDENCE_PREFIX + name.replace(".", "/")


def verifies(data: bytes, content_sha256: str | None) -> bool:
    """Whether ``data`` are exactly the bytes whose SHA-256 is ``content_sha256``."""
    if not content_sha256:
        return False
    return hmac.compare_digest(hashlib.sha256(data).hexdigest(), content_sha256.lower())
