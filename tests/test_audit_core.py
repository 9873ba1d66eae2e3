"""Pure core of the audit log: chain, segment format, verification, dedupe, DSA mapping.

In-memory segments only (no I/O); the real stores are exercised in test_audit_spool/_s3.
"""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime, timedelta

import pytest

from moderation.core.audit import (
    GENESIS_HASH,
    AuditRecord,
    ChainVerifier,
    Retention,
    decode_segment,
    dedupe,
    dsa_statement,
    encode_segment,
    key_bounds,
    parse_segment_key,
    seal,
    segment_key,
)
from moderation.exceptions import AuditError, AuditSegmentCorrupt

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def make_record(i: int, decision: str = "block", **kw: object) -> AuditRecord:
    base: dict[str, object] = {
        "record_id": f"rec{i:06d}",
        "kind": "automated",
        "job_id": f"job-{i}",
        "content_sha256": f"{i:064x}",
        "content_ref": f"s3://in/{i}.png",
        "policy_id": "testworld",
        "policy_version": 1,
        "compiled_policy_hash": "c" * 64,
        "model_id": "ModTest-RN-T",
        "weights_sha256": "w" * 64,
        "category_id": "contraband_symbol",
        "scores": {"testworld/contraband_symbol": 0.91},
        "decision": decision,
        "reason_code": "TW_CONTRABAND",
        "at": T0 + timedelta(seconds=i),
    }
    base.update(kw)
    return AuditRecord.model_validate(base)


def build_chain(
    n_segments: int, per_segment: int, chain_id: str = "host.1.abcd"
) -> list[tuple[str, bytes]]:
    """(key, gzip bytes) of a valid chain, in key order."""
    out = []
    prev_record, prev_segment = GENESIS_HASH, GENESIS_HASH
    for seq in range(n_segments):
        lines = []
        for j in range(per_segment):
            line, prev_record = seal(make_record(seq * per_segment + j), prev_record)
            lines.append(line)
        created = T0 + timedelta(minutes=seq * 20)
        data, prev_segment, _ = encode_segment(
            chain_id=chain_id,
            seq=seq,
            prev_segment_hash=prev_segment,
            lines=lines,
            created=created,
        )
        out.append((segment_key("audit/", created, chain_id, seq), data))
    return out


def verify(segments: list[tuple[str, bytes]], **kw: object) -> list[str]:
    verifier = ChainVerifier(from_start=True, object_lock=False)
    for key, data in segments:
        verifier.check(key, data)
    report = verifier.finish()
    return [str(p) for p in report.problems]


def recompress(data: bytes, edit: object) -> bytes:
    raw = gzip.decompress(data).split(b"\n")
    raw = edit(raw)  # type: ignore[operator]
    return gzip.compress(b"\n".join(raw), mtime=0)


def test_valid_chain_verifies_and_round_trips() -> None:
    segments = build_chain(4, 5)
    verifier = ChainVerifier(from_start=True, object_lock=False)
    for key, data in segments:
        verifier.check(key, data)
    report = verifier.finish()
    assert report.ok and report.segments == 4 and report.records == 20
    assert report.chains == {"host.1.abcd": 4}
    decoded = decode_segment(segments[1][1])
    assert decoded.header.seq == 1 and decoded.header.count == 5
    assert [r.job_id for r in decoded.records()] == [f"job-{i}" for i in range(5, 10)]
    # Deterministic: the same inputs give the same bytes (re-upload after a crash is identical).
    assert build_chain(4, 5) == segments


def test_keys_sort_by_time_and_parse_back() -> None:
    key = segment_key("audit/", T0, "host-a.42.ff", 7)
    assert key == "audit/2026/03/01/12/20260301T120000.000000Z-host-a.42.ff-0000000007.jsonl.gz"
    parsed = parse_segment_key(key)
    assert parsed is not None and (parsed.chain_id, parsed.seq, parsed.created) == (
        "host-a.42.ff",
        7,
        T0,
    )
    later = segment_key("audit/", T0 + timedelta(microseconds=1), "a", 0)
    assert later > key
    with pytest.raises(AuditError):
        segment_key("audit/", T0, "bad/chain", 0)
    start_after, stop_after = key_bounds("audit/", T0, T0 + timedelta(hours=1))
    assert start_after is not None and stop_after is not None
    assert start_after < key <= stop_after
    assert not (segment_key("audit/", T0 + timedelta(hours=2), "a", 0) <= stop_after)
    assert not (segment_key("audit/", T0 - timedelta(seconds=1), "a", 0) > start_after)


def test_flipped_compressed_byte_is_named_corrupt() -> None:
    segments = build_chain(3, 4)
    key, data = segments[1]
    edited = bytearray(data)
    edited[len(edited) // 2] ^= 0x01
    segments[1] = (key, bytes(edited))
    problems = verify(segments)
    assert problems and problems[0].startswith(f"corrupt: {key}: gzip")
    with pytest.raises(AuditSegmentCorrupt):
        decode_segment(bytes(edited))


def test_edited_record_is_named_by_index_and_id() -> None:
    segments = build_chain(3, 4)
    key, data = segments[2]
    lines = gzip.decompress(data).split(b"\n")  # line 0 is the header
    victim, after = json.loads(lines[2])["record_id"], json.loads(lines[3])["record_id"]

    def edit(lines: list[bytes]) -> list[bytes]:
        lines[2] = lines[2].replace(b'"decision":"block"', b'"decision":"allow"')
        return lines

    segments[2] = (key, recompress(data, edit))
    problems = verify(segments)
    assert problems == [
        f"edited: {key} record 2 ({after}): prev_hash does not match the hash of record 1 "
        f"({victim}): record 1 edited, or records reordered or removed"
    ]


def test_deleted_segment_is_a_gap() -> None:
    segments = build_chain(5, 2)
    deleted = segments.pop(2)[0]
    problems = verify(segments)
    assert len(problems) == 1
    assert problems[0].startswith(f"gap: {segments[2][0]}: seq 2 of chain host.1.abcd missing")
    assert segments[1][0] in problems[0] and deleted not in problems[0]


def test_swapped_segments_are_each_named() -> None:
    segments = build_chain(4, 3)
    (k1, d1), (k2, d2) = segments[1], segments[2]
    segments[1], segments[2] = (k1, d2), (k2, d1)
    problems = verify(segments)
    assert problems == [
        f"reordered: {k1}: holds chain host.1.abcd seq 2, but its key says chain host.1.abcd "
        "seq 1 (segments swapped or renamed)",
        f"reordered: {k2}: holds chain host.1.abcd seq 1, but its key says chain host.1.abcd "
        "seq 2 (segments swapped or renamed)",
    ]


def test_swapped_records_are_named() -> None:
    segments = build_chain(2, 4)
    key, data = segments[0]

    def swap(lines: list[bytes]) -> list[bytes]:
        lines[2], lines[3] = lines[3], lines[2]
        return lines

    segments[0] = (key, recompress(data, swap))
    problems = verify(segments)
    # Records 1 and 2 traded places: each link around them is named; the segment's own hash
    # changed too, so the next segment's link to it breaks.
    assert [p.split(":", 2)[:2] for p in problems] == [
        ["edited", f" {key} record 1 (rec000002)"],
        ["edited", f" {key} record 2 (rec000001)"],
        ["edited", f" {key} record 3 (rec000003)"],
        ["link", f" {segments[1][0]}"],
    ]


def test_chain_must_start_at_genesis_when_walking_from_the_start() -> None:
    segments = build_chain(4, 2)
    assert verify(segments[2:])[0].startswith(f"gap: {segments[2][0]}: chain host.1.abcd starts")
    # A time range: the first segment in range is the anchor.
    verifier = ChainVerifier(from_start=False, object_lock=False)
    for key, data in segments[2:]:
        verifier.check(key, data)
    assert verifier.finish().ok


def test_missing_retention_is_reported_under_object_lock() -> None:
    segments = build_chain(2, 2)
    verifier = ChainVerifier(from_start=True, object_lock=True)
    verifier.check(*segments[0], Retention("COMPLIANCE", T0 + timedelta(days=3650)))
    verifier.check(*segments[1], None)
    problems = [str(p) for p in verifier.finish().problems]
    assert problems == [f"retention: {segments[1][0]}: no Object Lock retention on this segment"]


def test_dedupe_keeps_first_write_of_each_record_id() -> None:
    a, b = make_record(1), make_record(2)
    again = a.model_copy(update={"at": T0 + timedelta(hours=1)})
    assert again.record_id == a.record_id
    assert [r.at for r in dedupe([a, b, again])] == [a.at, b.at]


def test_reviewer_ids_must_be_pseudonymous() -> None:
    from tests.audit_support import human_record

    record = human_record("j", "r1", "rv_3f9a0c1d2e4b5a6f")
    assert record.actor == "rv_3f9a0c1d2e4b5a6f" and record.kind == "human"
    assert record.policy_version == 1 and record.details["review_id"] == "r1"
    for raw in ("alice@example.com", "alice", "rv_alice@example.com"):
        with pytest.raises(AuditError):
            human_record("j", "r1", raw)


def test_dsa_statements_only_for_restrictions() -> None:
    assert dsa_statement(make_record(1, decision="allow")) is None
    assert dsa_statement(make_record(1, decision="review")) is None
    auto = dsa_statement(make_record(1, content_date=T0 - timedelta(days=2)))
    assert auto is not None
    assert auto["puid"] == "job-1"
    assert auto["decision_ground"] == "DECISION_GROUND_INCOMPATIBLE_CONTENT"
    assert auto["incompatible_content_ground"].startswith("testworld/contraband_symbol")
    assert auto["automated_decision"] == "AUTOMATED_DECISION_FULLY"
    assert auto["content_type"] == ["CONTENT_TYPE_IMAGE"]
    assert auto["category"] == "STATEMENT_CATEGORY_UNSAFE_AND_PROHIBITED_PRODUCTS"  # fallback
    assert (auto["application_date"], auto["content_date"]) == ("2026-03-01", "2026-02-27")
    assert "score 0.910" in auto["decision_facts"] and "TW_CONTRABAND" in auto["decision_facts"]
    human = dsa_statement(
        make_record(
            2,
            decision="remove",
            kind="human",
            actor="rv_0123456789abcdef",
            dsa_category="STATEMENT_CATEGORY_VIOLENCE",
            details={"legal_ground": "Art. 130 StGB"},
        )
    )
    assert human is not None
    assert human["automated_decision"] == "AUTOMATED_DECISION_PARTIALLY"
    assert human["category"] == "STATEMENT_CATEGORY_VIOLENCE"
    assert human["decision_ground"] == "DECISION_GROUND_ILLEGAL_CONTENT"
    assert human["illegal_content_legal_ground"] == "Art. 130 StGB"
    assert human["incompatible_content_ground"] is None
