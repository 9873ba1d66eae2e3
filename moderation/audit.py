"""Audit records, their hash chain, the segment format and its verification. Pure: no I/O.

A record's ``prev_hash`` links it to the record before it in its chain; the chain writer (the
audit adapter) fills it in, then ``record_hash`` seals the record. Editing any field of any record
changes its hash and breaks the link from the next record.

Each writer process owns one chain (``chain_id``). Its records are packed, in order, into
gzip-compressed JSON Lines *segments*::

    line 1   header: {"audit_segment": 1, "chain_id", "seq", "prev_segment_hash", "first_prev_hash",
                      "first_record_hash", "last_record_hash", "count", "created"}
    line 2+  one record per line, canonical JSON (the exact bytes its hash covers)

A segment's hash is the sha256 of its uncompressed bytes; the next segment of the chain names it
in ``prev_segment_hash``. Segment keys sort by time::

    {prefix}{YYYY}/{MM}/{DD}/{HH}/{YYYYMMDDTHHMMSS.ffffffZ}-{chain_id}-{seq:010d}.jsonl.gz

:class:`ChainVerifier` walks segments in key order and reports every broken link, gap, edit,
reordering and missing Object Lock retention as a :class:`Problem` naming the segment key and,
where it applies, the record index and id.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import uuid
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from moderation.decision import Verdict
from moderation.exceptions import AuditError, AuditSegmentCorrupt

__all__ = [
    "DSA_FIELDS",
    "GENESIS_HASH",
    "SEGMENT_FORMAT",
    "AuditRecord",
    "ChainVerifier",
    "DecodedSegment",
    "Problem",
    "Retention",
    "SegmentHeader",
    "SegmentKey",
    "SegmentStore",
    "VerifyReport",
    "decode_segment",
    "dedupe",
    "dsa_statement",
    "encode_segment",
    "key_bounds",
    "parse_segment_key",
    "record_for_review",
    "record_for_verdict",
    "seal",
    "segment_key",
]

GENESIS_HASH = "0" * 64
SEGMENT_FORMAT = 1
_TS_FORMAT = "%Y%m%dT%H%M%S.%fZ"
_PSEUDONYM = re.compile(r"rv_[A-Za-z0-9_-]{1,64}")


def _now() -> datetime:
    return datetime.now(UTC)


class AuditRecord(BaseModel):
    """One decision, automated or human, as it is kept forever."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    record_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    kind: Literal["automated", "human"]
    at: datetime = Field(default_factory=_now)
    job_id: str
    content_sha256: str | None
    content_ref: str | None
    policy_id: str | None
    policy_version: int | None
    compiled_policy_hash: str | None
    model_id: str | None
    weights_sha256: str | None
    category_id: str | None
    scores: dict[str, float] = Field(default_factory=dict)
    thresholds: dict[str, dict[str, float]] = Field(default_factory=dict)
    decision: str
    action: str | None = None
    reason_code: str | None = None
    actor: str = "system"  # "system" or a pseudonymous reviewer id ("rv_…")
    details: dict[str, Any] = Field(default_factory=dict)
    #: EU DSA statement-of-reasons category (the policy category's ``dsa_category``), if known.
    dsa_category: str | None = None
    #: When the content was posted or created, if the caller knows (DSA ``content_date``).
    content_date: datetime | None = None
    prev_hash: str | None = None

    def canonical_json(self) -> str:
        """Everything but nothing else: the bytes the hash covers."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def record_hash(self) -> str:
        """The sha256 (hex) of :meth:`canonical_json`."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    def chained(self, prev_hash: str) -> AuditRecord:
        """A copy linked to the record whose hash is ``prev_hash``."""
        return self.model_copy(update={"prev_hash": prev_hash})


def record_for_verdict(
    *,
    job_id: str,
    verdict: Verdict,
    content_sha256: str | None,
    content_ref: str | None,
    weights_sha256: str | None = None,
    record_id: str | None = None,
    dsa_category: str | None = None,
    content_date: datetime | None = None,
) -> AuditRecord:
    """The audit record of an automated verdict. ``record_id`` defaults to one derived from the
    job id so that a retried task rewrites the same record (deduplicated on read)."""
    deciding = verdict.categories[0] if verdict.categories else None
    policy = next((p for p in verdict.policies if p.id == verdict.policy_id), None)
    thresholds = {
        c.key: {"review": c.review_threshold, "block": c.block_threshold}
        for c in verdict.categories
    }
    return AuditRecord(
        record_id=record_id or hashlib.sha256(f"auto:{job_id}".encode()).hexdigest()[:32],
        kind="automated",
        job_id=job_id,
        content_sha256=content_sha256,
        content_ref=content_ref,
        policy_id=verdict.policy_id,
        policy_version=policy.version if policy else None,
        compiled_policy_hash=policy.compiled_hash if policy else None,
        model_id=verdict.model,
        weights_sha256=weights_sha256,
        category_id=verdict.category_id,
        scores=dict(verdict.scores),
        thresholds=thresholds,
        decision=verdict.decision.value,
        action=verdict.action.value,
        reason_code=verdict.reason_code,
        actor="system",
        dsa_category=dsa_category,
        content_date=content_date,
        details={
            "explanation": verdict.explain(),
            "severity": verdict.severity.value if verdict.severity else None,
            "policies": [p.model_dump() for p in verdict.policies],
            "top_prompts": [m.model_dump() for m in deciding.top_prompts] if deciding else [],
        },
    )


def record_for_review(
    *,
    job_id: str,
    review_id: str,
    decision: str,
    reviewer_pseudonym: str,
    content_sha256: str | None,
    content_ref: str | None,
    policy_id: str | None,
    policy_version: int | None,
    category_id: str | None,
    reason_code: str | None = None,
    scores: dict[str, float] | None = None,
    details: dict[str, Any] | None = None,
    dsa_category: str | None = None,
    content_date: datetime | None = None,
) -> AuditRecord:
    """The audit record of one human decision (``decision``: allow / remove / escalate).

    Raises:
        AuditError: ``reviewer_pseudonym`` is not a pseudonymous reviewer id (``rv_…``).
    """
    if not _PSEUDONYM.fullmatch(reviewer_pseudonym):
        raise AuditError(
            "reviewer ids in audit records must be pseudonymous ('rv_' + letters/digits)",
            code="audit_not_pseudonymous",
        )
    return AuditRecord(
        record_id=hashlib.sha256(f"human:{review_id}:{reviewer_pseudonym}".encode()).hexdigest()[
            :32
        ],
        kind="human",
        job_id=job_id,
        content_sha256=content_sha256,
        content_ref=content_ref,
        policy_id=policy_id,
        policy_version=policy_version,
        compiled_policy_hash=None,
        model_id=None,
        weights_sha256=None,
        category_id=category_id,
        scores=scores or {},
        decision=decision,
        reason_code=reason_code,
        actor=reviewer_pseudonym,
        details=details or {},
        dsa_category=dsa_category,
        content_date=content_date,
    )


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
                raise AuditSegmentCorrupt(f"record {index}: {_first_error(exc)}") from exc
        return out


def _first_error(exc: ValidationError) -> str:
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
        raise AuditSegmentCorrupt(f"header: {_first_error(exc)}") from exc
    return DecodedSegment(header, lines, hashlib.sha256(raw).hexdigest())


# --- stores (the port the adapters implement) -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Retention:
    """Object Lock retention of one stored segment."""

    mode: str
    retain_until: datetime


class SegmentStore(Protocol):
    """Where segments live: an S3 bucket (``adapters.s3_audit``) or a folder
    (``adapters.local_audit``). Implementations raise ``AuditSinkUnavailable`` when the store
    cannot be reached and ``AuditError`` for permanent failures."""

    @property
    def object_lock(self) -> bool:
        """Whether segments are expected to carry Object Lock retention."""
        ...

    def put(self, key: str, data: bytes, *, created: datetime) -> None: ...

    def list_keys(
        self, start: datetime | None = None, end: datetime | None = None
    ) -> Iterator[str]:
        """Segment keys created in ``[start, end]``, in key (time) order."""
        ...

    def get(self, key: str) -> bytes: ...

    def retention(self, key: str) -> Retention | None: ...

    def describe(self) -> str:
        """Where this store is, for messages (no credentials)."""
        ...


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
                    "edited", key, f"not a valid record: {_first_error(exc)}", record_index=index
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


# --- EU DSA statements of reasons -------------------------------------------------------------

DSA_FIELDS = (
    "puid",
    "decision_visibility",
    "decision_ground",
    "incompatible_content_ground",
    "illegal_content_legal_ground",
    "category",
    "content_type",
    "automated_detection",
    "automated_decision",
    "application_date",
    "content_date",
    "decision_facts",
    "source_type",
)

#: Fallback when a category sets no ``dsa_category``: substrings of the category id.
_DSA_BY_WORD = (
    ("child", "STATEMENT_CATEGORY_PROTECTION_OF_MINORS"),
    ("minor", "STATEMENT_CATEGORY_PROTECTION_OF_MINORS"),
    ("violen", "STATEMENT_CATEGORY_VIOLENCE"),
    ("gore", "STATEMENT_CATEGORY_VIOLENCE"),
    ("weapon", "STATEMENT_CATEGORY_VIOLENCE"),
    ("terror", "STATEMENT_CATEGORY_VIOLENCE"),
    ("hate", "STATEMENT_CATEGORY_ILLEGAL_OR_HARMFUL_SPEECH"),
    ("nud", "STATEMENT_CATEGORY_PORNOGRAPHY_OR_SEXUALIZED_CONTENT"),
    ("sex", "STATEMENT_CATEGORY_PORNOGRAPHY_OR_SEXUALIZED_CONTENT"),
    ("porn", "STATEMENT_CATEGORY_PORNOGRAPHY_OR_SEXUALIZED_CONTENT"),
    ("self_harm", "STATEMENT_CATEGORY_SELF_HARM"),
    ("drug", "STATEMENT_CATEGORY_UNSAFE_AND_PROHIBITED_PRODUCTS"),
    ("contraband", "STATEMENT_CATEGORY_UNSAFE_AND_PROHIBITED_PRODUCTS"),
    ("scam", "STATEMENT_CATEGORY_SCAMS_AND_FRAUD"),
    ("fraud", "STATEMENT_CATEGORY_SCAMS_AND_FRAUD"),
    ("logo", "STATEMENT_CATEGORY_INTELLECTUAL_PROPERTY_INFRINGEMENTS"),
    ("trademark", "STATEMENT_CATEGORY_INTELLECTUAL_PROPERTY_INFRINGEMENTS"),
    ("copyright", "STATEMENT_CATEGORY_INTELLECTUAL_PROPERTY_INFRINGEMENTS"),
)
_DSA_OTHER = "STATEMENT_CATEGORY_SCOPE_OF_PLATFORM_SERVICE"
_RESTRICTING = {"block", "remove"}


def _dsa_category(record: AuditRecord) -> str:
    if record.dsa_category:
        return record.dsa_category
    word = (record.category_id or "").lower()
    return next((cat for needle, cat in _DSA_BY_WORD if needle in word), _DSA_OTHER)


def dsa_statement(
    record: AuditRecord, *, automated_detection: bool | None = None
) -> dict[str, Any] | None:
    """The EU DSA statement of reasons for one record, or None if it restricts nothing.

    Only decisions that restrict content (``block`` by the model, ``remove`` by a reviewer) give
    a statement. Ground: ILLEGAL_CONTENT when the record's details carry ``illegal`` or a
    ``legal_ground``, else INCOMPATIBLE_CONTENT (the platform's terms, i.e. the policy). Automated
    decisions are FULLY automated; a reviewer's decision on a model-flagged item is PARTIALLY
    automated (detection was automated), otherwise NOT_AUTOMATED.
    """
    if record.decision not in _RESTRICTING:
        return None
    illegal = bool(record.details.get("illegal") or record.details.get("legal_ground"))
    detected = (
        automated_detection
        if automated_detection is not None
        else (record.kind == "automated" or bool(record.details.get("flagged_by_model", True)))
    )
    if record.kind == "automated":
        automated = "AUTOMATED_DECISION_FULLY"
    else:
        automated = (
            "AUTOMATED_DECISION_PARTIALLY" if detected else "AUTOMATED_DECISION_NOT_AUTOMATED"
        )
    score = record.scores.get(f"{record.policy_id}/{record.category_id}")
    facts = [
        f"{'Automated classifier' if record.kind == 'automated' else 'Human reviewer'} decision "
        f"'{record.decision}' under policy {record.policy_id} v{record.policy_version}, "
        f"category {record.category_id}"
    ]
    if score is not None:
        facts.append(f"score {score:.3f}")
    if record.reason_code:
        facts.append(f"reason {record.reason_code}")
    ground = "ILLEGAL_CONTENT" if illegal else "INCOMPATIBLE_CONTENT"
    return {
        "puid": record.job_id,
        "decision_visibility": ["DECISION_VISIBILITY_CONTENT_REMOVED"],
        "decision_ground": f"DECISION_GROUND_{ground}",
        "incompatible_content_ground": None
        if illegal
        else (f"{record.policy_id}/{record.category_id}: {record.reason_code or record.decision}"),
        "illegal_content_legal_ground": record.details.get("legal_ground") if illegal else None,
        "category": _dsa_category(record),
        "content_type": ["CONTENT_TYPE_IMAGE"],
        "automated_detection": "Yes" if detected else "No",
        "automated_decision": automated,
        "application_date": record.at.astimezone(UTC).strftime("%Y-%m-%d"),
        "content_date": (record.content_date or record.at).astimezone(UTC).strftime("%Y-%m-%d"),
        "decision_facts": "; ".join(facts),
        "source_type": "SOURCE_VOLUNTARY",
    }
