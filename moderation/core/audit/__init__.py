"""The append-only audit log's pure half: records, the hash chain and segment format, verification
and DSA statements. The spool, uploader and stores are adapters
(:mod:`moderation.adapters.audit_log`, ``s3_audit``, ``local_audit``)."""

from moderation.core.audit.dsa import DSA_FIELDS, dsa_statement
from moderation.core.audit.records import (
    GENESIS_HASH,
    AuditRecord,
    record_for_bank_addition,
    record_for_bank_entry,
    record_for_error,
    record_for_promotion,
    record_for_publication,
    record_for_review,
    record_for_security,
    record_for_unreviewable_notice,
    record_for_verdict,
)
from moderation.core.audit.segments import (
    DecodedSegment,
    SegmentHeader,
    SegmentKey,
    decode_segment,
    encode_segment,
    key_bounds,
    parse_segment_key,
    seal,
    segment_key,
)
from moderation.core.audit.transparency_db import tdb_body, tdb_puid
from moderation.core.audit.transparency_report import report_table, transparency_report
from moderation.core.audit.verify import ChainVerifier, Problem, Retention, VerifyReport, dedupe

__all__ = [
    "DSA_FIELDS",
    "GENESIS_HASH",
    "AuditRecord",
    "ChainVerifier",
    "DecodedSegment",
    "Problem",
    "Retention",
    "SegmentHeader",
    "SegmentKey",
    "VerifyReport",
    "decode_segment",
    "dedupe",
    "dsa_statement",
    "encode_segment",
    "key_bounds",
    "parse_segment_key",
    "record_for_bank_addition",
    "record_for_bank_entry",
    "record_for_error",
    "record_for_promotion",
    "record_for_publication",
    "record_for_review",
    "record_for_security",
    "record_for_unreviewable_notice",
    "record_for_verdict",
    "report_table",
    "seal",
    "segment_key",
    "tdb_body",
    "tdb_puid",
    "transparency_report",
]
