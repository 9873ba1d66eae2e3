"""Review evidence: the exact bytes a job was scored on, kept for the human reviewer. Pure.

When a job goes to review, the worker stores the bytes it fetched and scored (whose SHA-256 is
the job's ``content_sha256``) in the object store under :func:`evidence_key`; the review page
shows only those bytes, and only after :func:`verifies` (never the source URL again, which its
host may have changed since). The key is derived from the review item, namespaced by tenant,
and ends with the content hash: a key cannot be guessed without already holding the bytes.

Retention follows the item's life, not Redis: the bytes stay while the item waits; once it is
decided, a marker under :func:`retired_key` (by UTC day of the decision) lets the sweep delete
them ``review.evidence_retention_s`` later.

A video (or an animation) also keeps its **filmstrip**: the sampled frames that were scored, as
small JPEG stills made from the very frames the model saw, in one object under
:func:`filmstrip_key` (:func:`pack_filmstrip`). The reviewer is shown those frames, never the
source again and never a re-decode. The object names the content hash of the video it was cut
from and each still's SHA-256, checked on read (:func:`unpack_filmstrip`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = [
    "EVIDENCE_PREFIX",
    "RETIRED_PREFIX",
    "Filmstrip",
    "evidence_key",
    "evidence_of_marker",
    "filmstrip_key",
    "pack_filmstrip",
    "retired_day_prefix",
    "retired_key",
    "tenant_segment",
    "unpack_filmstrip",
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


#: The first line of a filmstrip object (its format and version).
_FILMSTRIP_MAGIC = b"moderation-filmstrip/1\n"
#: Stills per filmstrip, at most (the sampler's cap is far lower; a corrupt header is refused).
MAX_FILMSTRIP_FRAMES = 10_000


def filmstrip_key(tenant: str, review_id: str, content_sha256: str) -> str:
    """Where the filmstrip (sampled frames) of review ``review_id`` is kept: beside its
    evidence (same tenant segment, same unguessable content hash).

    Raises:
        ValueError: as :func:`evidence_key`.
    """
    return evidence_key(tenant, review_id, content_sha256) + "-frames"


@dataclass(frozen=True, slots=True)
class Filmstrip:
    """The sampled frames of a video as the reviewer sees them: one JPEG still per sample, with
    the time it was shown (seconds), in time order."""

    content_sha256: str
    timestamps: tuple[float, ...]
    stills: tuple[bytes, ...]

    def __len__(self) -> int:
        return len(self.stills)


def pack_filmstrip(
    content_sha256: str, timestamps: Sequence[float], stills: Sequence[bytes]
) -> bytes:
    """One object holding a video's stills: a JSON header line (the video's content hash, each
    still's time, size and SHA-256), then the stills back to back.

    Raises:
        ValueError: no stills, or times and stills disagree in number.
    """
    if not stills or len(stills) != len(timestamps):
        raise ValueError(f"{len(stills)} stills for {len(timestamps)} timestamps")
    header = {
        "content_sha256": content_sha256,
        "frames": [
            {"t": round(float(t), 3), "size": len(b), "sha256": hashlib.sha256(b).hexdigest()}
            for t, b in zip(timestamps, stills, strict=True)
        ],
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    return _FILMSTRIP_MAGIC + head + b"\n" + b"".join(stills)


def unpack_filmstrip(data: bytes, content_sha256: str | None) -> Filmstrip:
    """The stills of a filmstrip object, checked: it was cut from the video whose SHA-256 is
    ``content_sha256``, and every still hashes to what its header says.

    Raises:
        ValueError: not a filmstrip, another video's, truncated, or a still altered.
    """
    if not data.startswith(_FILMSTRIP_MAGIC):
        raise ValueError("not a filmstrip object")
    head, sep, body = data[len(_FILMSTRIP_MAGIC) :].partition(b"\n")
    if not sep:
        raise ValueError("filmstrip header is truncated")
    try:
        header = json.loads(head)
        frames = header["frames"]
        owner = str(header["content_sha256"])
        if not isinstance(frames, list) or not 0 < len(frames) <= MAX_FILMSTRIP_FRAMES:
            raise ValueError("bad frame list")
        sizes = [int(f["size"]) for f in frames]
        times = tuple(float(f["t"]) for f in frames)
        digests = [str(f["sha256"]) for f in frames]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"filmstrip header is corrupt: {exc}") from None
    if not content_sha256 or not hmac.compare_digest(owner, content_sha256.lower()):
        raise ValueError("the filmstrip belongs to other content")
    if any(size < 0 for size in sizes) or sum(sizes) != len(body):
        raise ValueError("filmstrip is truncated or has extra bytes")
    stills: list[bytes] = []
    offset = 0
    for size, digest in zip(sizes, digests, strict=True):
        still = body[offset : offset + size]
        offset += size
        if not hmac.compare_digest(hashlib.sha256(still).hexdigest(), digest):
            raise ValueError("a still of the filmstrip does not match its hash")
        stills.append(still)
    return Filmstrip(owner, times, tuple(stills))
