"""Verification of the audit log: walk segments in key order and report every broken link, gap,
edit, reordering and missing Object Lock retention as a :class:`Problem` naming the segment key
and, where it applies, the record index and id. Pure: the caller reads the store.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import ValidationError

from moderation.core.audit.records import GENESIS_HASH, AuditRecord
from moderation.core.audit.segments import (
    DecodedSegment,
    SegmentKey,
    decode_segment,
    describe_validation_error,
    parse_segment_key,
)
from moderation.exceptions import AuditSegmentCorrupt

__all__ = ["ChainVerifier", "Problem", "Retention", "VerifyReport", "dedupe"]


@dataclass(frozen=True, slots=True)
class Retention:
    """Object Lock retention of one stored segment."""

    mode: str
    retain_until: datetime


# --- verification -----------------------------------------------------------------------------

ProblemKind = Literal[
    "corrupt", "edited", "gap", "reordered", "link", "header", "duplicate", "retention", "key"
]


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding of :class:`ChainVerifier`."""

    kind: ProblemKind
    key: str
    message: str
    record_index: int | None = None
    record_id: str | None = None

    def __str__(self) -> str:
        where = self.key
        if self.record_index is not None:
            where += f" record {self.record_index}"
            if self.record_id:
                where += f" ({self.record_id})"
        return f"{self.kind}: {where}: {self.message}"


@dataclass(slots=True)
class VerifyReport:
    segments: int = 0
    records: int = 0
    chains: dict[str, int] = field(default_factory=dict)  # chain id -> segments seen
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(slots=True)
class _ChainState:
    last_key_seq: int | None = None
    last_key: str | None = None
    # seq -> (segment hash, last record hash, key) of recent segments, for link checks.
    recent: dict[int, tuple[str, str, str]] = field(default_factory=dict)


class ChainVerifier:
    """Streaming verification of segments, fed one at a time in key order.

    Memory is bounded per chain (the last ``window`` segments' hashes). ``from_start``: the walk
    starts at the beginning of the log, so every chain must start at seq 0 from the genesis hash;
    otherwise the first segment seen of each chain is trusted as the anchor.
    """

    def __init__(self, *, from_start: bool, object_lock: bool, window: int = 64) -> None:
        self.report = VerifyReport()
        self._from_start = from_start
        self._object_lock = object_lock
        self._window = window
        self._chains: dict[str, _ChainState] = {}

    def _problem(self, kind: ProblemKind, key: str, message: str, **kw: Any) -> None:
        self.report.problems.append(Problem(kind, key, message, **kw))

    def check(self, key: str, data: bytes, retention: Retention | None = None) -> None:
        """Verify one segment (its stored bytes and retention) after those before it."""
        self.report.segments += 1
        parsed = parse_segment_key(key)
        if parsed is None:
            self._problem("key", key, "not a segment key")
            return
        state = self._chains.setdefault(parsed.chain_id, _ChainState())
        self.report.chains[parsed.chain_id] = self.report.chains.get(parsed.chain_id, 0) + 1
        self._check_order(key, parsed, state)
        if self._object_lock:
            self._check_retention(key, parsed, retention)
        try:
            segment = decode_segment(data)
        except AuditSegmentCorrupt as exc:
            self._problem("corrupt", key, str(exc))
            return
        header = segment.header
        if header.chain_id != parsed.chain_id or header.seq != parsed.seq:
            self._problem(
                "reordered",
                key,
                f"holds chain {header.chain_id} seq {header.seq}, but its key says chain "
                f"{parsed.chain_id} seq {parsed.seq} (segments swapped or renamed)",
            )
        last_hash = self._check_records(key, segment)
        self._check_link(key, segment, self._chains.setdefault(header.chain_id, _ChainState()))
        target = self._chains[header.chain_id]
        if last_hash is not None:
            target.recent[header.seq] = (segment.segment_hash, last_hash, key)
            while len(target.recent) > self._window:
                target.recent.pop(min(target.recent))

    def _check_order(self, key: str, parsed: SegmentKey, state: _ChainState) -> None:
        previous = state.last_key_seq
        if previous is None:
            if self._from_start and parsed.seq != 0:
                self._problem(
                    "gap",
                    key,
                    f"chain {parsed.chain_id} starts at seq {parsed.seq}: segments "
                    f"0..{parsed.seq - 1} are missing",
                )
        elif parsed.seq == previous:
            self._problem("duplicate", key, f"seq {parsed.seq} also stored at {state.last_key}")
        elif parsed.seq < previous:
            self._problem(
                "reordered", key, f"seq {parsed.seq} listed after seq {previous} ({state.last_key})"
            )
        elif parsed.seq > previous + 1:
            missing = (
                f"seq {previous + 1}"
                if parsed.seq == previous + 2
                else f"seqs {previous + 1}..{parsed.seq - 1}"
            )
            self._problem(
                "gap",
                key,
                f"{missing} of chain {parsed.chain_id} missing between "
                f"{state.last_key} and this segment (deleted?)",
            )
        state.last_key_seq = parsed.seq if previous is None else max(previous, parsed.seq)
        state.last_key = key

    def _check_retention(self, key: str, parsed: SegmentKey, retention: Retention | None) -> None:
        if retention is None:
            self._problem("retention", key, "no Object Lock retention on this segment")
        elif retention.retain_until <= parsed.created:
            self._problem(
                "retention",
                key,
                f"retention ends {retention.retain_until.isoformat()}, "
                "not after the segment was created",
            )

    def _check_records(self, key: str, segment: DecodedSegment) -> str | None:
        header = segment.header
        if header.count != len(segment.lines):
            self._problem(
                "header",
                key,
                f"header says {header.count} records, segment holds {len(segment.lines)}",
            )
        expected_prev = header.first_prev_hash
        prev_hash: str | None = None
        prev_id: str | None = None
        for index, line in enumerate(segment.lines):
            self.report.records += 1
            line_hash = hashlib.sha256(line).hexdigest()
            try:
                record = AuditRecord.model_validate_json(line)
            except ValidationError as exc:
                self._problem(
                    "edited",
                    key,
                    f"not a valid record: {describe_validation_error(exc)}",
                    record_index=index,
                )
                expected_prev, prev_hash, prev_id = line_hash, line_hash, None
                continue
            if record.canonical_json().encode() != line:
                self._problem(
                    "edited",
                    key,
                    "record is not in canonical form (edited)",
                    record_index=index,
                    record_id=record.record_id,
                )
            if record.prev_hash != expected_prev:
                if index == 0:
                    message = "prev_hash does not match the header's first_prev_hash"
                else:
                    message = (
                        f"prev_hash does not match the hash of record {index - 1}"
                        f" ({prev_id}): record {index - 1} edited, or records reordered or removed"
                    )
                self._problem(
                    "edited", key, message, record_index=index, record_id=record.record_id
                )
            if index == 0 and line_hash != header.first_record_hash:
                self._problem(
                    "edited",
                    key,
                    "hash differs from the header's first_record_hash",
                    record_index=0,
                    record_id=record.record_id,
                )
            expected_prev, prev_hash, prev_id = line_hash, line_hash, record.record_id
        if prev_hash is not None and prev_hash != header.last_record_hash:
            self._problem(
                "edited",
                key,
                "hash differs from the header's last_record_hash",
                record_index=len(segment.lines) - 1,
                record_id=prev_id,
            )
        return prev_hash

    def _check_link(self, key: str, segment: DecodedSegment, state: _ChainState) -> None:
        header = segment.header
        if header.seq == 0:
            if header.prev_segment_hash != GENESIS_HASH or header.first_prev_hash != GENESIS_HASH:
                self._problem("link", key, "seq 0 does not start from the genesis hash")
            return
        before = state.recent.get(header.seq - 1)
        if before is None:
            return  # predecessor outside the range, missing (reported as a gap) or corrupt
        seg_hash, last_record_hash, before_key = before
        if header.prev_segment_hash != seg_hash:
            self._problem(
                "link",
                key,
                f"prev_segment_hash does not match seq {header.seq - 1} "
                f"({before_key}): that segment was edited or replaced",
            )
        if header.first_prev_hash != last_record_hash:
            self._problem(
                "link",
                key,
                f"first record does not follow the last record of seq "
                f"{header.seq - 1} ({before_key})",
            )

    def finish(self) -> VerifyReport:
        """The report after every segment was checked."""
        return self.report


def dedupe(records: Iterable[AuditRecord]) -> Iterator[AuditRecord]:
    """Records in order, each ``record_id`` once (writes are at least once; the first wins)."""
    seen: set[str] = set()
    for record in records:
        if record.record_id not in seen:
            seen.add(record.record_id)
            yield record
