"""Appeals (EU DSA Art. 20): a complaint against a decision that restricted content. Pure: no I/O.

An upstream service files an appeal against one of its jobs whose standing decision restricts
the content: an automated ``block``, or a reviewer's ``remove`` (or an upheld appeal). It may do
so within the appeal window after that decision (default 6 months, the DSA's minimum) and at
most ``max_per_decision`` times per job (default once). The appeal becomes a review item in its
own queue (:data:`~moderation.core.review.QUEUE_APPEAL`) that every reviewer who decided the
item before is barred from (``ReviewItem.barred``: enforced where items are claimed and again
where they are decided), carrying the user's statement, the decision appealed and the earlier
decisions (:class:`~moderation.core.review.AppealContext`). One reviewer decides it: ``uphold``
or ``overturn``, each with a reason code from :data:`APPEAL_REASON_CODES`.

An overturn reverses the decision: the job's standing decision becomes ``allow`` (its result's
``human`` is the overturn), a new audit record links to the record of the decision appealed
(:func:`record_for_appeal`), the statement of reasons of that decision says it was reversed
(:func:`statement_after_appeal`), and the review export labels the item with the corrected
label (:func:`corrected_row`), so calibration learns from it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from moderation.core.audit.records import AuditRecord, _derived_id
from moderation.core.decision import Decision
from moderation.core.image_ref import ImageRef
from moderation.core.jobs import JobResult, public_id
from moderation.core.policy import Severity
from moderation.core.review import (
    QUEUE_APPEAL,
    AppealContext,
    HumanDecision,
    PolicyText,
    ReviewDecision,
    ReviewItem,
    export_row,
)
from moderation.core.sources import DecisionSource
from moderation.exceptions import AppealRefused

__all__ = [
    "APPEAL_REASON_CODES",
    "MAX_STATEMENT_CHARS",
    "Appeal",
    "AppealRules",
    "AppealStatus",
    "Appealed",
    "OverturnRate",
    "appeal_callback_body",
    "appeal_id_for",
    "appeal_item",
    "appealed",
    "check_window",
    "corrected_row",
    "export_with_appeals",
    "overturn_rates",
    "record_for_appeal",
    "statement_after_appeal",
]

#: Reason codes of appeal outcomes: why a decision was overturned, or why it stands.
APPEAL_REASON_CODES = (
    "APPEAL_MODEL_ERROR",  # overturn: the model was wrong
    "APPEAL_REVIEWER_ERROR",  # overturn: the first reviewer was wrong
    "APPEAL_CONTEXT",  # overturn: allowed in context (news, education, art, counter-speech)
    "APPEAL_POLICY_CHANGED",  # overturn: the policy no longer restricts it
    "APPEAL_VIOLATION_CONFIRMED",  # uphold: the decision was right
    "APPEAL_INSUFFICIENT_GROUNDS",  # uphold: the statement gives nothing to reconsider
)
MAX_STATEMENT_CHARS = 5000
_RESTRICTING = {Decision.BLOCK}


class AppealStatus(str, Enum):
    OPEN = "open"
    UPHELD = "upheld"
    OVERTURNED = "overturned"


@dataclass(frozen=True, slots=True)
class AppealRules:
    """How long a decision can be appealed, and how often."""

    window_s: float
    max_per_decision: int = 1


class Appeal(BaseModel):
    """One appeal, as stored and as its tenant reads it (:meth:`for_caller`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    appeal_id: str
    tenant: str
    #: The scoped job id (see :mod:`moderation.core.jobs`).
    job_id: str
    #: 1 for the first appeal of the job, 2 for the second (where the rules allow more).
    number: int = Field(ge=1)
    statement: str
    filed_at: datetime
    status: AppealStatus = AppealStatus.OPEN
    appealed_kind: str
    appealed_decision: str
    appealed_record_id: str
    policy_id: str
    policy_version: int
    category_id: str
    reason_code: str | None = None
    decided_by: str | None = None
    decided_at: datetime | None = None

    def for_caller(self) -> Appeal:
        """The appeal as its tenant sees it: its own job id."""
        return self.model_copy(update={"job_id": public_id(self.job_id)})


@dataclass(frozen=True, slots=True)
class Appealed:
    """The standing decision of a job, as an appeal names it."""

    kind: str  # "automated" or "human"
    decision: str
    reason_code: str | None
    record_id: str
    decided_at: datetime
    policy_id: str
    policy_version: int
    category_id: str
    earlier: tuple[HumanDecision, ...]


def appeal_id_for(job_id: str, number: int) -> str:
    """The id of a job's ``number``-th appeal (also its review item's id): derived, so a
    retried filing collapses."""
    return "apl_" + hashlib.sha256(f"{job_id}:appeal:{number}".encode()).hexdigest()[:24]


def appealed(result: JobResult) -> Appealed:
    """The decision an appeal of ``result``'s job is against: its standing decision.

    Raises:
        AppealRefused: the job has not ended, or its standing decision restricts nothing
            (``appeal_not_allowed``).
    """
    verdict = result.verdict
    decision = result.decision
    if verdict is None or decision not in _RESTRICTING or verdict.policy_id is None:
        raise AppealRefused(
            "only a decision that restricted the content (a block or a removal) can be appealed",
            code="appeal_not_allowed",
        )
    human = result.human
    if human is not None:
        upheld = human.decision is ReviewDecision.UPHOLD
        return Appealed(
            kind="human",
            decision=human.decision.value,
            reason_code=human.reason_code,
            record_id=(
                _derived_id("appeal", human.review_id)
                if upheld
                else _derived_id("human", human.review_id, human.reviewers[-1])
            ),
            decided_at=human.decided_at,
            policy_id=human.policy_id,
            policy_version=human.policy_version,
            category_id=human.category_id,
            earlier=(human,),
        )
    policy = next((p for p in verdict.policies if p.id == verdict.policy_id), None)
    return Appealed(
        kind="automated",
        decision=verdict.decision.value,
        reason_code=verdict.reason_code,
        record_id=_derived_id("auto", result.job_id),
        decided_at=result.finished_at or result.created_at or datetime.now(UTC),
        policy_id=verdict.policy_id,
        policy_version=policy.version if policy else 0,
        category_id=verdict.category_id or "",
        earlier=(),
    )


def check_window(
    decided: Appealed, *, now: datetime, rules: AppealRules, filed_before: int
) -> None:
    """Raises:
    AppealRefused: the window has closed (``appeal_window_closed``) or the job had every
        appeal the rules allow (``appeal_limit_reached``).
    """
    if (now - decided.decided_at).total_seconds() > rules.window_s:
        raise AppealRefused(
            f"the appeal window ({rules.window_s / 86400:g} days after the decision) has closed",
            code="appeal_window_closed",
        )
    if filed_before >= rules.max_per_decision:
        raise AppealRefused(
            f"this decision was already appealed ({rules.max_per_decision} appeal"
            f"{'s' if rules.max_per_decision != 1 else ''} allowed)",
            code="appeal_limit_reached",
        )


def appeal_item(
    appeal: Appeal,
    decided: Appealed,
    result: JobResult,
    *,
    original: ReviewItem | None,
    policy_text: PolicyText,
    image: ImageRef,
    severity: Severity,
    barred: Iterable[str],
    evidence_key: str | None = None,
    uploader_id: str | None = None,
) -> ReviewItem:
    """The review item of an appeal: the original item's evidence and text where the item was
    reviewed, else the automated verdict's; barred to everyone who decided it before."""
    assert result.verdict is not None  # appealed() checked
    first: list[HumanDecision] = list(decided.earlier)
    return ReviewItem(
        review_id=appeal.appeal_id,
        job_id=appeal.job_id,
        image=original.image if original else image,
        content_sha256=result.content_sha256,
        evidence_key=original.evidence_key if original else evidence_key,
        content_pdq=result.content_pdq,
        content_pdq_quality=result.content_pdq_quality,
        verdict=result.verdict,
        policy_id=decided.policy_id,
        policy_version=decided.policy_version,
        category_id=decided.category_id,
        severity=original.severity if original else severity,
        score=original.score if original else result.verdict.score,
        policy_text=original.policy_text if original else policy_text,
        reason_codes=list(APPEAL_REASON_CODES),
        created_at=appeal.filed_at.timestamp(),
        queue=QUEUE_APPEAL,
        source=DecisionSource.APPEAL,
        barred=sorted(set(barred)),
        uploader_id=uploader_id,
        appeal=AppealContext(
            appeal_id=appeal.appeal_id,
            statement=appeal.statement,
            filed_at=appeal.filed_at.timestamp(),
            appealed_kind=decided.kind,
            appealed_decision=decided.decision,
            appealed_reason_code=decided.reason_code,
            appealed_record_id=decided.record_id,
            earlier=first,
        ),
    )


def record_for_appeal(
    decision: HumanDecision,
    appeal: Appeal,
    *,
    content_sha256: str | None,
    content_ref: str | None,
    dsa_category: str | None = None,
) -> AuditRecord:
    """The audit record of an appeal's outcome (decision ``uphold`` or ``overturn``), linked to
    the record of the decision appealed (``details.appeal_of``). Its id is derived from the
    appeal, so a redelivered outcome rewrites the same record."""
    return AuditRecord(
        record_id=_derived_id("appeal", appeal.appeal_id),
        kind="human",
        at=decision.decided_at,
        job_id=appeal.job_id,
        content_sha256=content_sha256,
        content_ref=content_ref,
        policy_id=decision.policy_id,
        policy_version=decision.policy_version,
        compiled_policy_hash=None,
        model_id=None,
        weights_sha256=None,
        category_id=decision.category_id,
        decision=decision.decision.value,
        reason_code=decision.reason_code,
        actor=decision.reviewers[-1],
        dsa_category=dsa_category,
        tenant=appeal.tenant,
        source=DecisionSource.APPEAL,
        details={
            "appeal_id": appeal.appeal_id,
            "appeal_of": appeal.appealed_record_id,
            "appealed_kind": appeal.appealed_kind,
            "appealed_decision": appeal.appealed_decision,
            "appeal_filed_at": appeal.filed_at.isoformat(),
            "review_id": decision.review_id,
            "seen_sha256": decision.seen_sha256,
            "reinstated": decision.decision is ReviewDecision.OVERTURN,
        },
    )


def appeal_callback_body(appeal: Appeal, result: JobResult) -> bytes:
    """The body of the ``job.appeal_decided`` callback: the appeal (outcome, reason code) and
    the job's result as its tenant sees them."""
    return json.dumps(
        {
            "event": "job.appeal_decided",
            "appeal": appeal.for_caller().model_dump(mode="json"),
            "result": result.for_caller().model_dump(mode="json"),
        },
        separators=(",", ":"),
    ).encode()


def statement_after_appeal(statement: dict[str, Any], outcome: AuditRecord) -> dict[str, Any]:
    """A statement of reasons updated by its appeal's outcome: an overturn says the content
    was reinstated, when and why; an upheld appeal says the decision stands."""
    when = outcome.at.astimezone(UTC).strftime("%Y-%m-%d")
    if outcome.decision == ReviewDecision.OVERTURN.value:
        note = f"overturned on appeal on {when} ({outcome.reason_code}): content reinstated"
    else:
        note = f"upheld on appeal on {when} ({outcome.reason_code})"
    return {**statement, "decision_facts": f"{statement['decision_facts']}; {note}"}


_CORRECTED_LABEL = {
    ReviewDecision.OVERTURN.value: ReviewDecision.ALLOW.value,
    ReviewDecision.UPHOLD.value: ReviewDecision.REMOVE.value,
}


def corrected_row(
    row: dict[str, Any], appeal_decision: str | None, reason_code: str | None
) -> dict[str, Any]:
    """A review-export row with its latest appeal's outcome (``uphold``/``overturn``; None:
    never appealed): an overturned removal is labelled ``allow`` (what calibration should
    learn), the reviewer's label kept beside it as ``original_human_label``."""
    if appeal_decision is None:
        return row
    fixed = dict(row, appeal_outcome=appeal_decision, appeal_reason_code=reason_code)
    label = _CORRECTED_LABEL[appeal_decision]
    before = row.get("human_label")
    if before not in _CORRECTED_LABEL and before != label:  # (an appeal's own row: none before)
        fixed["original_human_label"] = before
    fixed["human_label"] = label
    return fixed


def export_with_appeals(
    decided: Iterable[tuple[ReviewItem, HumanDecision]],
) -> Iterator[dict[str, Any]]:
    """Labelled export rows of decided items (in decision order), one per job: a reviewed
    item's row carries its latest appeal's outcome (:func:`corrected_row`); an appeal's own row
    appears only for a job that had no human review (an automated block appealed)."""
    pairs = list(decided)
    latest: dict[str, HumanDecision] = {}
    reviewed: set[str] = set()
    for item, final in pairs:
        if item.queue == QUEUE_APPEAL:
            latest[item.job_id] = final
        else:
            reviewed.add(item.job_id)
    for item, final in pairs:
        appeal = latest.get(item.job_id)
        if item.queue == QUEUE_APPEAL and (item.job_id in reviewed or appeal is not final):
            continue
        yield corrected_row(
            export_row(item, final),
            appeal.decision.value if appeal else None,
            appeal.reason_code if appeal else None,
        )


@dataclass(frozen=True, slots=True)
class OverturnRate:
    """Decided appeals of one group (a category, or a policy version) and how many were
    overturned: a quality signal of the model (automated decisions) and of the reviewers."""

    key: str
    decided: int
    overturned: int

    @property
    def rate(self) -> float:
        return self.overturned / self.decided if self.decided else 0.0


def overturn_rates(appeals: Iterable[Appeal], *, by: str) -> list[OverturnRate]:
    """Overturn rates of decided appeals grouped ``by`` ``"category"`` (``policy/category``)
    or ``"policy_version"`` (``policy@vN``), highest rate first."""
    counts: dict[str, list[int]] = {}
    for a in appeals:
        if a.status is AppealStatus.OPEN:
            continue
        key = (
            f"{a.policy_id}/{a.category_id}"
            if by == "category"
            else f"{a.policy_id}@v{a.policy_version}"
        )
        n = counts.setdefault(key, [0, 0])
        n[0] += 1
        n[1] += a.status is AppealStatus.OVERTURNED
    rows = [OverturnRate(key=k, decided=d, overturned=o) for k, (d, o) in counts.items()]
    return sorted(rows, key=lambda r: (-r.rate, r.key))
