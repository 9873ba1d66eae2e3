"""Audit records for tests."""

from __future__ import annotations

from moderation.core.audit import AuditRecord


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


def human_record(
    job: str,
    review_id: str,
    reviewer: str,
    *,
    decision: str = "remove",
    reason_code: str | None = "TW_CONTRABAND",
    content_ref: str | None = None,
) -> AuditRecord:
    """The audit record of one reviewer's final decision on ``job``'s test-world item."""
    from datetime import UTC, datetime

    from moderation.core.audit import record_for_review
    from moderation.core.review import HumanDecision, ReviewDecision

    final = HumanDecision(
        job_id=job,
        review_id=review_id,
        decision=ReviewDecision(decision),
        reason_code=reason_code,
        reviewers=[reviewer],
        category_id="contraband_symbol",
        policy_id="testworld",
        policy_version=1,
        decided_at=datetime.now(UTC),
    )
    return record_for_review(
        final,
        reviewer=reviewer,
        position=1,
        content_sha256="ab" * 32,
        content_ref=content_ref or f"mem://{job}",
        verdict=None,
    )
