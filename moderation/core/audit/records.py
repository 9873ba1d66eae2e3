"""Audit records: one decision, automated or human, as it is kept forever. Pure: no I/O.

A record's ``prev_hash`` links it to the record before it in its writer's chain; the chain writer
(the audit adapter) fills it in, then the record's hash seals it (:func:`moderation.core.audit.
segments.seal`). Editing any field of any record changes its hash and breaks the link from the
next record. Every job that ends leaves a record: its verdict, or its error; every human decision
leaves one per reviewer; every promotion of a shadow policy version to live leaves one (kind
``policy``, job id ``policy/<policy id>``, so ``moderation audit show policy/<id>`` lists a
policy's history).
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from moderation.core.decision import Verdict
from moderation.core.notices import NOT_REVIEWABLE
from moderation.core.review import HumanDecision
from moderation.core.sources import DecisionSource
from moderation.exceptions import AuditError

__all__ = [
    "GENESIS_HASH",
    "AuditRecord",
    "SecurityEvent",
    "record_for_bank_addition",
    "record_for_bank_entry",
    "record_for_error",
    "record_for_promotion",
    "record_for_review",
    "record_for_security",
    "record_for_unreviewable_notice",
    "record_for_verdict",
]

#: Security events of the reviewers' sign-in (kind ``security``; ``decision`` names the event).
SecurityEvent = Literal["login_failed", "login_locked", "sessions_ended"]

GENESIS_HASH = "0" * 64
_PSEUDONYM = re.compile(r"rv_[A-Za-z0-9_-]{1,64}")


def _now() -> datetime:
    return datetime.now(UTC)


class AuditRecord(BaseModel):
    """One decision, automated or human, as it is kept forever."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    record_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    #: ``security``: a sign-in event of the reviewers' pages (no job; ``job_id`` is empty);
    #: ``policy``: a policy promotion (``job_id`` is ``policy/<id>``); ``enforcement``: an
    #: uploader's action changed (``moderation.pipeline.strikes``; ``decision`` names it);
    #: ``bank``: a bank entry's state changed (``job_id`` is ``bank/<name>/<entry id>``);
    #: ``admin``: a review admin's action on the queue (:mod:`moderation.core.review_admin`).
    kind: Literal["automated", "human", "security", "policy", "enforcement", "bank", "admin"]
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
    actor: str = "system"  # "system", a pseudonymous reviewer id ("rv_…"), or a policy author
    details: dict[str, Any] = Field(default_factory=dict)
    #: EU DSA statement-of-reasons category (the policy category's ``dsa_category``), if known.
    dsa_category: str | None = None
    #: When the content was posted or created, if the caller knows (DSA ``content_date``).
    content_date: datetime | None = None
    prev_hash: str | None = None
    #: The tenant whose job this is (None: records written before tenants existed).
    tenant: str | None = None
    #: What started the decision (the model, a user's or a trusted flagger's notice, an
    #: appeal); None: records written before sources were kept (read as automated).
    source: DecisionSource | None = None

    def canonical_json(self) -> str:
        """Everything but nothing else: the bytes the hash covers. Fields added after records
        were first written (``tenant``, ``source``) are left out while unset, so older records
        keep their canonical form and hash."""
        data = self.model_dump(mode="json")
        for late in ("tenant", "source"):
            if data.get(late) is None:
                data.pop(late, None)
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    def chained(self, prev_hash: str) -> AuditRecord:
        """A copy linked to the record whose hash is ``prev_hash``."""
        return self.model_copy(update={"prev_hash": prev_hash})


def _derived_id(*parts: str) -> str:
    """A record id derived from ids, so a retried task rewrites the same record (deduplicated
    on read) instead of adding another."""
    return hashlib.sha256(":".join(parts).encode()).hexdigest()[:32]


def _auto_id(job_id: str, run: int) -> str:
    """An automated record's id: the job's first run keeps the id it always had."""
    return _derived_id("auto", job_id) if run == 0 else _derived_id("auto", job_id, str(run))


def record_for_verdict(
    *,
    job_id: str,
    verdict: Verdict,
    content_sha256: str | None,
    content_ref: str | None,
    weights_sha256: str | None = None,
    dsa_category: str | None = None,
    content_date: datetime | None = None,
    details: dict[str, Any] | None = None,
    tenant: str | None = None,
    source: DecisionSource = DecisionSource.AUTOMATED,
    run: int = 0,
) -> AuditRecord:
    """The audit record of an automated verdict; its id is derived from the job id and
    ``run`` (:attr:`~moderation.core.jobs.Job.rescores`). ``source``: what started the
    scoring (a notice re-scores an item: its source)."""
    deciding = verdict.deciding
    policy = next((p for p in verdict.policies if p.id == verdict.policy_id), None)
    thresholds = {
        c.key: {"review": c.review_threshold, "block": c.block_threshold}
        for c in verdict.categories
    }
    return AuditRecord(
        record_id=_auto_id(job_id, run),
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
        tenant=tenant,
        source=source,
        details={
            "explanation": verdict.explain(),
            "severity": verdict.severity.value if verdict.severity else None,
            "signal": deciding.signal if deciding else None,
            "policies": [p.to_dict() for p in verdict.policies],
            "evidence": [e.to_dict() for e in deciding.evidence] if deciding else [],
            # a video or an animation: the segments per category and the top frame
            **({"video": verdict.video.to_dict()} if verdict.video is not None else {}),
            # signals not run because the decision was settled (cost order)
            **({"skipped": [s.to_dict() for s in verdict.skipped]} if verdict.skipped else {}),
            **(details or {}),
        },
    )


def record_for_error(
    *,
    job_id: str,
    code: str,
    message: str,
    attempts: int,
    transient: bool,
    content_sha256: str | None,
    content_ref: str | None,
    details: dict[str, Any] | None = None,
    tenant: str | None = None,
    run: int = 0,
) -> AuditRecord:
    """The audit record of a job that ended in an error (decision ``error``): the log accounts
    for every job, not only the decided ones. Its id is derived from the job id and ``run``
    (:attr:`~moderation.core.jobs.Job.rescores`)."""
    return AuditRecord(
        record_id=_auto_id(job_id, run),
        kind="automated",
        job_id=job_id,
        content_sha256=content_sha256,
        content_ref=content_ref,
        policy_id=None,
        policy_version=None,
        compiled_policy_hash=None,
        model_id=None,
        weights_sha256=None,
        category_id=None,
        decision="error",
        reason_code=code,
        actor="system",
        tenant=tenant,
        details={"error": message, "attempts": attempts, "transient": transient, **(details or {})},
    )


def record_for_unreviewable_notice(
    *,
    notice_id: str,
    job_id: str,
    source: DecisionSource,
    code: str,
    message: str,
    content_ref: str | None,
    tenant: str | None = None,
) -> AuditRecord:
    """The audit record of a notice answered ``not_reviewable`` without a reviewer: the job it
    reported ended without a verdict, and scoring it again for the notice ended in the error
    ``code`` again. One per notice (its id is derived from the notice's)."""
    return AuditRecord(
        record_id=_derived_id("notice", notice_id),
        kind="automated",
        job_id=job_id,
        content_sha256=None,
        content_ref=content_ref,
        policy_id=None,
        policy_version=None,
        compiled_policy_hash=None,
        model_id=None,
        weights_sha256=None,
        category_id=None,
        decision=NOT_REVIEWABLE,
        reason_code=code,
        actor="system",
        tenant=tenant,
        source=source,
        details={"notice_id": notice_id, "error": message},
    )


def _human_record(
    decision: HumanDecision,
    *,
    record_id: str,
    reviewer: str,
    decided: str,
    content_sha256: str | None,
    content_ref: str | None,
    details: dict[str, Any],
    **extra: Any,
) -> AuditRecord:
    """A record of a reviewer's act on a human decision: who, when, which job and policy.

    Raises:
        AuditError: ``reviewer`` is not a pseudonymous reviewer id (``rv_…``).
    """
    if not _PSEUDONYM.fullmatch(reviewer):
        raise AuditError(
            "reviewer ids in audit records must be pseudonymous ('rv_' + letters/digits)",
            code="audit_not_pseudonymous",
        )
    return AuditRecord(
        record_id=record_id,
        kind="human",
        at=decision.decided_at,
        job_id=decision.job_id,
        content_sha256=content_sha256,
        content_ref=content_ref,
        policy_id=decision.policy_id,
        policy_version=decision.policy_version,
        compiled_policy_hash=None,
        model_id=None,
        weights_sha256=None,
        category_id=decision.category_id,
        decision=decided,
        reason_code=decision.reason_code,
        actor=reviewer,
        details=details,
        **extra,
    )


def record_for_review(
    decision: HumanDecision,
    *,
    reviewer: str,
    position: int,
    content_sha256: str | None,
    content_ref: str | None,
    verdict: Verdict | None,
    dsa_category: str | None = None,
    content_date: datetime | None = None,
    tenant: str | None = None,
) -> AuditRecord:
    """The audit record of one reviewer's part in a human decision (one record per reviewer;
    ``position`` 1 is the first reviewer). Its id is derived from the review and the reviewer.
    Its source is the decision's (what put the item into review).

    Raises:
        AuditError: ``reviewer`` is not a pseudonymous reviewer id (``rv_…``).
    """
    return _human_record(
        decision,
        record_id=_derived_id("human", decision.review_id, reviewer),
        reviewer=reviewer,
        decided=decision.decision.value,
        content_sha256=content_sha256,
        content_ref=content_ref,
        details={
            "review_id": decision.review_id,
            "automated_decision": verdict.decision.value if verdict else None,
            "reviewer_position": position,
            "reviewers": len(decision.reviewers),
            # The bytes the (deciding) reviewer was shown, verified against content_sha256.
            "seen_sha256": decision.seen_sha256,
            **_disagreement(decision, reviewer),
        },
        scores=dict(verdict.scores) if verdict else {},
        dsa_category=dsa_category,
        content_date=content_date,
        tenant=tenant,
        source=decision.source,
    )


def _disagreement(decision: HumanDecision, reviewer: str) -> dict[str, Any]:
    """A decision that settled a disagreement: what each of the two reviewers decided, and
    what this one did (empty otherwise)."""
    if not decision.votes:
        return {}
    own = next((v for v in decision.votes if v.reviewer == reviewer), None)
    return {
        "disagreement": [
            {
                "reviewer": v.reviewer,
                "decision": v.decision.value,
                "reason_code": v.reason_code,
                "decided_at": v.decided_at.isoformat(),
            }
            for v in decision.votes
        ],
        "own_decision": own.decision.value if own else decision.decision.value,
        "own_reason_code": own.reason_code if own else decision.reason_code,
    }


def record_for_security(
    event: SecurityEvent, *, actor: str, details: dict[str, Any] | None = None
) -> AuditRecord:
    """The audit record of a sign-in event: a failed or locked-out sign-in, or an admin ending
    an account's sessions. ``actor`` is the account's pseudonym (``rv_…``, also for a username
    that does not exist); ``details`` say from where and why (never a password)."""
    return AuditRecord(
        kind="security",
        job_id="",
        content_sha256=None,
        content_ref=None,
        policy_id=None,
        policy_version=None,
        compiled_policy_hash=None,
        model_id=None,
        weights_sha256=None,
        category_id=None,
        decision=event,
        actor=actor,
        details=dict(details or {}),
    )


def record_for_bank_addition(
    decision: HumanDecision,
    *,
    reviewer: str,
    bank: str,
    entry_id: int,
    pdq: str,
    quality: int | None,
    created: bool,
    content_sha256: str | None,
    content_ref: str | None,
    video: dict[str, Any] | None = None,
) -> AuditRecord:
    """The audit record of a reviewer's removal put into a bank ("remove and add to bank"):
    decision ``add_to_bank``, the bank, entry and hash in ``details``. Its id is derived from the
    review and the bank, so a redelivered decision rewrites the same record. A banked video
    (``video``: its key, frame counts and entry ids) is under ``details["video"]``; the entry
    and hash are its first frame's.

    Raises:
        AuditError: ``reviewer`` is not a pseudonymous reviewer id.
    """
    return _human_record(
        decision,
        record_id=_derived_id("bank", decision.review_id, bank),
        reviewer=reviewer,
        decided="add_to_bank",
        content_sha256=content_sha256,
        content_ref=content_ref,
        details={
            "review_id": decision.review_id,
            "bank": bank,
            "entry_id": entry_id,
            "content_pdq": pdq,
            "content_pdq_quality": quality,
            "new_entry": created,
            "reviewers": list(decision.reviewers),
            **({"video": video} if video is not None else {}),
        },
    )


def record_for_bank_entry(
    *,
    bank: str,
    entry_id: int,
    state: str,
    actor: str,
    reason: str = "",
    details: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> AuditRecord:
    """The audit record of a bank entry's state changing (decision ``bank_<state>``:
    ``bank_confirmed``, ``bank_disabled``, ``bank_quarantined``, ``bank_active``): who (a
    reviewer's pseudonym, or ``system`` for the flood rule), which entry, and why. Restricts no
    content, so it gives no statement of reasons.

    Raises:
        AuditError: ``actor`` is empty.
    """
    if not actor.strip():
        raise AuditError("a bank entry change names who made it", code="audit_no_actor")
    return AuditRecord(
        kind="bank",
        at=at or _now(),
        job_id=f"bank/{bank}/{entry_id}",
        content_sha256=None,
        content_ref=None,
        policy_id=None,
        policy_version=None,
        compiled_policy_hash=None,
        model_id=None,
        weights_sha256=None,
        category_id=None,
        decision=f"bank_{state}",
        actor=actor.strip(),
        details={
            "bank": bank,
            "entry_id": entry_id,
            "state": state,
            "reason": reason,
            **(details or {}),
        },
    )


def record_for_publication(
    *,
    policy_id: str,
    version: int,
    body_sha256: str,
    actor: str,
    at: datetime | None = None,
) -> AuditRecord:
    """The audit record of publishing a policy's first live version to the policy store
    (decision ``publish``): what is acted on changes there only by this or a promotion. Its id is
    derived from the policy and the published text, so a retried publication rewrites it.

    Raises:
        AuditError: ``actor`` is empty.
    """
    return _policy_record(
        "publish",
        policy_id=policy_id,
        version=version,
        content=body_sha256,
        actor=actor,
        at=at,
        details={"body_sha256": body_sha256, "slot": "live"},
    )


def record_for_promotion(
    *,
    policy_id: str,
    version: int,
    policy_hash: str,
    previous_version: int | None,
    previous_hash: str | None,
    actor: str,
    files: dict[str, str],
    note: str | None = None,
    at: datetime | None = None,
) -> AuditRecord:
    """The audit record of promoting a shadow policy version to live (decision ``promote``).
    Its id is derived from the policy id and the promoted content, so a retried promotion
    rewrites the same record.

    Raises:
        AuditError: ``actor`` is empty.
    """
    return _policy_record(
        "promote",
        policy_id=policy_id,
        version=version,
        content=policy_hash,
        actor=actor,
        at=at,
        details={
            "policy_hash": policy_hash,
            "previous_version": previous_version,
            "previous_policy_hash": previous_hash,
            "files": files,
            **({"note": note} if note else {}),
        },
    )


def _policy_record(
    decision: str,
    *,
    policy_id: str,
    version: int,
    content: str,
    actor: str,
    at: datetime | None,
    details: dict[str, Any],
) -> AuditRecord:
    """A record of kind ``policy``: who changed which version is acted on. Its id is derived
    from the decision, the policy and ``content`` (a retry rewrites the same record)."""
    if not actor.strip():
        raise AuditError(f"a policy {decision} names who made it", code="audit_no_actor")
    return AuditRecord(
        record_id=_derived_id(decision, policy_id, str(version), content),
        kind="policy",
        at=at or _now(),
        job_id=f"policy/{policy_id}",
        content_sha256=None,
        content_ref=None,
        policy_id=policy_id,
        policy_version=version,
        compiled_policy_hash=None,
        model_id=None,
        weights_sha256=None,
        category_id=None,
        decision=decision,
        actor=actor.strip(),
        details=details,
    )
