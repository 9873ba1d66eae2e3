"""Audit records for tests."""

from __future__ import annotations

from moderation.audit import AuditRecord


def make_record(job: str, decision: str = "block", *, ref: str | None = None) -> AuditRecord:
    """An automated test-world record for ``job``."""
    return AuditRecord(
        kind="automated",
        job_id=job,
        content_sha256="ab" * 32,
        content_ref=ref if ref is not None else f"mem://{job}",
        policy_id="testworld",
        policy_version=1,
        compiled_policy_hash="c" * 64,
        model_id="ModTest-RN-T",
        weights_sha256="d" * 64,
        category_id="contraband_symbol",
        scores={"testworld/contraband_symbol": 0.9},
        decision=decision,
        reason_code="TW_X",
    )
