"""The segment format of the audit log: sealed record lines packed into gzip JSON Lines. Pure.

Each writer process owns one chain (``chain_id``). Its records are packed, in order, into
gzip-compressed JSON Lines *segments*::

    line 1   header: {"audit_segment": 1, "chain_id", "seq", "prev_segment_hash", "first_prev_hash",
                      "first_record_hash", "last_record_hash", "count", "created"}
    line 2+  one record per line, canonical JSON (the exact bytes its hash covers)

A segment's hash is the sha256 of its uncompressed bytes; the next segment of the chain names it
in ``prev_segment_hash``. Segment keys sort by time::

    {prefix}{YYYY}/{MM}/{DD}/{HH}/{YYYYMMDDTHHMMSS.ffffffZ}-{chain_id}-{seq:010d}.jsonl.gz
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from moderation.core.audit.records import GENESIS_HASH, AuditRecord
from moderation.exceptions import AuditError, AuditSegmentCorrupt

__all__ = [
    "GENESIS_HASH",
    "SEGMENT_FORMAT",
    "DecodedSegment",
    "SegmentHeader",
    "SegmentKey",
    "decode_segment",
    "describe_validation_error",
    "encode_segment",
    "key_bounds",
    "parse_segment_key",
    "seal",
    "segment_key",
]

SEGMENT_FORMAT = 1
_TS_FORMAT = "%Y%m%dT%H%M%S.%fZ"


# --- the chain --------------------------------------------------------------------------------


def seal(record: AuditRecord, prev_hash: str) -> tuple[bytes, str]:
    """Link ``record`` after ``prev_hash``; returns (its canonical JSON line, its hash).

    The line (without newline) is exactly what is stored and what the hash covers.
    """
    line = record.chained(prev_hash).canonical_json().encode()
    return line, hashlib.sha256(line).hexdigest()


# --- segments ---------------------------------------------------------------------------------


class SegmentHeader(BaseModel):
    """First line of every segment."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    audit_segment: int = SEGMENT_FORMAT
    chain_id: str
    seq: int = Field(ge=0)
    prev_segment_hash: str
    first_prev_hash: str
    first_record_hash: str
    last_record_hash: str
    count: int = Field(ge=1)
    created: datetime


@dataclass(frozen=True, slots=True)
class SegmentKey:
    """What a segment's object key says about it."""

    created: datetime
    chain_id: str
    seq: int


_CHAIN_ID = re.compile(r"[A-Za-z0-9._-]{1,100}")
_KEY = re.compile(
    r"(?P<ts>\d{8}T\d{6}\.\d{6}Z)-(?P<chain>[A-Za-z0-9._-]{1,100})-(?P<seq>\d{10})\.jsonl\.gz"
)


def segment_key(prefix: str, created: datetime, chain_id: str, seq: int) -> str:
    """The object key of a segment: time-ordered, so listing returns segments in time order.

    Raises:
        AuditError: ``chain_id`` has characters outside ``[A-Za-z0-9._-]``.
    """
    if not _CHAIN_ID.fullmatch(chain_id):
        raise AuditError(f"invalid chain id {chain_id!r}", code="audit_chain_id")
    at = created.astimezone(UTC)
    return f"{prefix}{at:%Y/%m/%d/%H}/{at.strftime(_TS_FORMAT)}-{chain_id}-{seq:010d}.jsonl.gz"


def parse_segment_key(key: str) -> SegmentKey | None:
    """The created time, chain id and seq encoded in ``key``; None if it is not a segment key."""
    match = _KEY.fullmatch(key.rsplit("/", 1)[-1])
    if match is None:
        return None
    created = datetime.strptime(match["ts"], _TS_FORMAT).replace(tzinfo=UTC)
    return SegmentKey(created=created, chain_id=match["chain"], seq=int(match["seq"]))


def key_bounds(
    prefix: str, start: datetime | None, end: datetime | None
) -> tuple[str | None, str | None]:
    """(start_after, stop_after) key bounds of the segments created in ``[start, end]``.

    Keys strictly greater than ``start_after`` and not greater than ``stop_after`` are in range.
    """
    start_after = None
    stop_after = None
    if start is not None:
        at = start.astimezone(UTC)
        # "-" sorts before every digit: the greatest key below any segment created at ``start``.
        start_after = f"{prefix}{at:%Y/%m/%d/%H}/{at.strftime(_TS_FORMAT)}-"[:-1]
    if end is not None:
        at = end.astimezone(UTC)
        stop_after = f"{prefix}{at:%Y/%m/%d/%H}/{at.strftime(_TS_FORMAT)}-~"
    return start_after, stop_after


def encode_segment(
    *,
    chain_id: str,
    seq: int,
    prev_segment_hash: str,
    lines: Sequence[bytes],
    created: datetime,
) -> tuple[bytes, str, SegmentHeader]:
    """Pack sealed record lines (from :func:`seal`, in chain order) into one segment.

    Returns (gzip bytes, segment hash, header). The output is deterministic: the same inputs
    give the same bytes, so a re-upload after a crash rewrites an identical object.

    Raises:
        AuditError: ``lines`` is empty or is not valid records.
    """
    if not lines:
        raise AuditError("a segment holds at least one record", code="audit_empty_segment")
    first = json.loads(lines[0])
    header = SegmentHeader(
        chain_id=chain_id,
        seq=seq,
        prev_segment_hash=prev_segment_hash,
        first_prev_hash=first["prev_hash"],
        first_record_hash=hashlib.sha256(lines[0]).hexdigest(),
        last_record_hash=hashlib.sha256(lines[-1]).hexdigest(),
        count=len(lines),
        created=created.astimezone(UTC),
    )
    raw = b"\n".join([header.model_dump_json().encode(), *lines]) + b"\n"
    return gzip.compress(raw, compresslevel=6, mtime=0), hashlib.sha256(raw).hexdigest(), header


@dataclass(frozen=True, slots=True)
class DecodedSegment:
    header: SegmentHeader
    lines: list[bytes]  # record lines, without newline
    segment_hash: str

    def records(self) -> list[AuditRecord]:
        """The records of this segment, in chain order.

        Raises:
            AuditSegmentCorrupt: a line is not a valid record.
        """
        out = []
        for index, line in enumerate(self.lines):
            try:
                out.append(AuditRecord.model_validate_json(line))
            except ValidationError as exc:
                raise AuditSegmentCorrupt(
                    f"record {index}: {describe_validation_error(exc)}"
                ) from exc
        return out


def describe_validation_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ())) or "line"
    return f"{where}: {err.get('msg', 'invalid')}"


def decode_segment(data: bytes) -> DecodedSegment:
    """Decompress and split a segment; checks only that it is readable.

    Raises:
        AuditSegmentCorrupt: not gzip, CRC mismatch, or the header line is not a segment header.
    """
    try:
        raw = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise AuditSegmentCorrupt(f"gzip: {exc}") from exc
    if not raw.endswith(b"\n"):
        raise AuditSegmentCorrupt("truncated: no final newline")
    head, *lines = raw[:-1].split(b"\n")
    try:
        header = SegmentHeader.model_validate_json(head)
    except ValidationError as exc:
        raise AuditSegmentCorrupt(f"header: {describe_validation_error(exc)}") from exc
    return DecodedSegment(header, lines, hashlib.sha256(raw).hexdigest())
