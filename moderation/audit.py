"""Audit records: one per automated verdict and per human decision. Pure: no I/O.

A record's ``prev_hash`` links it to the record before it in its chain; the chain writer (the
audit adapter) fills it in, then ``record_hash`` seals the record. Editing any field of any record
changes its hash and breaks the link from the next record.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from moderation.decision import Verdict

__all__ = ["GENESIS_HASH", "AuditRecord", "record_for_review", "record_for_verdict"]

GENESIS_HASH = "0" * 64


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
    prev_hash: str | None = None

    def canonical_json(self) -> str:
        """Everything but nothing else: the bytes the hash covers."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def record_hash(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    def chained(self, prev_hash: str) -> AuditRecord:
        return self.model_copy(update={"prev_hash": prev_hash})


def record_for_verdict(
    *,
    job_id: str,
    verdict: Verdict,
    content_sha256: str | None,
    content_ref: str | None,
    weights_sha256: str | None = None,
    record_id: str | None = None,
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
        details={
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
) -> AuditRecord:
    """The audit record of one human decision (``decision``: allow / remove / escalate)."""
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
    )
