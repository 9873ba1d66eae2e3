"""Human review: items, leases, decisions, priority and the second-reviewer rule. Pure: no I/O.

Priority
--------
A waiting item's priority at time ``t`` is::

    priority(t) = W[severity] × max(score, 0.01) × 2 ** ((t − created_at) / age_doubling_s)

    W = {low: 1, medium: 2, high: 4, critical: 8}

Severity and score put the worst content first; the age factor doubles the priority every
``age_doubling_s`` seconds (default 900 s), so nothing starves: an item whose ``W × score`` is
``k`` times smaller than a fresh arrival's overtakes it after ``log2(k) × age_doubling_s`` seconds
(at most ``log2(8 / 0.01) ≈ 9.6`` doublings). Because the age factor is exponential, the order of
two waiting items never changes over time, so the queue stores one static sort key per item::

    rank_key = log2(W × score) − created_at / age_doubling_s      (higher is served first)

Queues
------
Every item is in one named queue. It starts in its ``queue`` (``review``, the default; other
workflows put theirs in their own); ``escalate`` moves it to ``escalation``, which only senior
reviewers and admins work (:func:`moderation.core.reviewers.allowed_queues`). In the escalation
queue a decision is final at once (one senior reviewer suffices, even for a critical removal),
and ``escalate`` is refused: it is already there.

Decisions and the second-reviewer rule
--------------------------------------
A reviewer decides ``allow``, ``remove`` (with a reason code from the policy) or ``escalate``.
Every decision is final at once, except ``remove`` in a category of severity ``critical``: that
needs a second, independent reviewer (not the first one). The second reviewer agreeing (``remove``)
makes the removal final; any other second decision is a **disagreement**: nothing is final, the
item moves to the escalation queue with both decisions kept (the pending decision is the second
reviewer's, with the first's in ``disputes``), and a third reviewer, a senior who is neither of
the two, settles it there. That decision is final and names all three reviewers, and it carries
both earlier decisions (``HumanDecision.votes``: the audit records keep them), so neither of the
two is overwritten by the other.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from moderation.core.decision import Verdict
from moderation.core.image_ref import EVIDENCE_SCHEME, INLINE_SCHEME, SPILL_SCHEME, ImageRef
from moderation.core.policy import Policy, Severity
from moderation.core.sources import DecisionSource
from moderation.exceptions import ReviewInvalidDecision

__all__ = [
    "DEFAULT_QUEUE",
    "ESCALATION_QUEUE",
    "NOTICE_BOOST",
    "QUEUE_APPEAL",
    "QUEUE_REVIEW",
    "SEVERITY_WEIGHT",
    "AppealContext",
    "FirstDecision",
    "HumanDecision",
    "Lease",
    "PolicyText",
    "ReasonOption",
    "ReviewDecision",
    "ReviewItem",
    "ReviewOutcome",
    "ReviewerVote",
    "apply_decision",
    "export_row",
    "item_from_verdict",
    "item_rank",
    "outbox_delay",
    "plain_reasons",
    "priority",
    "pseudonym",
    "rank_key",
    "reason_codes_for",
    "reason_labels_for",
    "reason_options",
    "review_id_for",
]

SEVERITY_WEIGHT: dict[Severity, float] = {
    Severity.LOW: 1.0,
    Severity.MEDIUM: 2.0,
    Severity.HIGH: 4.0,
    Severity.CRITICAL: 8.0,
}
MIN_SCORE = 0.01
#: Where every item starts unless its workflow names another queue.
DEFAULT_QUEUE = "review"
#: Where ``escalate`` sends an item (senior reviewers and admins).
ESCALATION_QUEUE = "escalation"


class ReviewDecision(str, Enum):
    ALLOW = "allow"
    REMOVE = "remove"
    ESCALATE = "escalate"
    #: Outcomes of an appeal (:mod:`moderation.core.appeals`): the restriction stands, or it is
    #: reversed. Only appeal items take them, and appeal items take nothing else.
    UPHOLD = "uphold"
    OVERTURN = "overturn"


#: The queue of first (and second) reviews, and the appeals' own queue (an appeal item starts
#: there; senior reviewers and admins work it, others by a grant).
QUEUE_REVIEW = DEFAULT_QUEUE
QUEUE_APPEAL = "appeal"
APPEAL_DECISIONS = frozenset({ReviewDecision.UPHOLD, ReviewDecision.OVERTURN})


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PolicyText(_Frozen):
    """What the reviewer reads next to the image: the category's written policy."""

    policy_description: str
    category_description: str
    prompts: list[str]
    benign_prompts: list[str]


class ReasonOption(_Frozen):
    """A removal reason as the reviewer picks it: the policy's code and a readable label."""

    code: str
    label: str
    #: The category whose band gives this code (the item's own category's come first).
    category_id: str | None = None


class AppealContext(_Frozen):
    """What an appeal reviewer reads besides the item: the user's statement and the decision
    appealed, with every earlier decision on the item."""

    appeal_id: str
    statement: str
    filed_at: float  # unix seconds
    #: The decision appealed: ``automated`` (the model blocked it) or ``human`` (a removal).
    appealed_kind: str
    appealed_decision: str
    appealed_reason_code: str | None = None
    #: The audit record of the decision appealed (the overturn's record links to it).
    appealed_record_id: str
    #: Earlier human decisions on the item (the first review's), oldest first.
    earlier: list[HumanDecision] = Field(default_factory=list)


class ReviewItem(_Frozen):
    """One image waiting for a human decision, with everything needed to decide it."""

    review_id: str
    job_id: str
    image: ImageRef
    content_sha256: str | None = None
    #: Where the exact bytes that were scored are kept for the reviewer (the object store; see
    #: :mod:`moderation.core.evidence`); None when they could not be kept.
    evidence_key: str | None = None
    #: The image's PDQ hash and quality (for "remove and add to bank").
    content_pdq: str | None = None
    content_pdq_quality: int | None = None
    verdict: Verdict
    policy_id: str
    policy_version: int
    category_id: str
    severity: Severity
    score: float
    policy_text: PolicyText
    #: Reason codes a reviewer may pick for ``remove`` (this category's first).
    reason_codes: list[str] = Field(min_length=1)
    #: The same codes with readable labels from the policy (empty on items queued before
    #: labels existed: :func:`reason_options` falls back to the codes).
    reasons: list[ReasonOption] = Field(default_factory=list)
    created_at: float  # unix seconds
    #: The queue the item starts in (an escalation moves it; see the module docstring).
    queue: str = Field(default=DEFAULT_QUEUE, pattern=r"^[a-z][a-z0-9_-]{0,31}$")
    #: What put the item into review: the model (default), a notice, an appeal.
    source: DecisionSource = DecisionSource.AUTOMATED
    #: Added to the item's sort key (log2 units): a trusted flagger's notice jumps the queue
    #: (:data:`NOTICE_BOOST`). 0 for the model's own items.
    priority_boost: float = 0.0
    #: Pseudonymous reviewers who may not claim or decide it (an appeal: everyone who decided
    #: the item before).
    barred: list[str] = Field(default_factory=list)
    #: The appeal, on an appeal item.
    appeal: AppealContext | None = None
    #: The job's pseudonymous uploader (repeat-offender context on the review page).
    uploader_id: str | None = None

    @property
    def critical(self) -> bool:
        return self.severity is Severity.CRITICAL


@dataclass(frozen=True, slots=True)
class Lease:
    """A reviewer's exclusive, time-limited claim on an item."""

    review_id: str
    reviewer: str
    token: str
    expires_at: float

    def seconds_left(self, now: float) -> float:
        return max(0.0, self.expires_at - now)


class FirstDecision(_Frozen):
    """A recorded decision that is not final yet: a critical removal awaiting a second review,
    or (``disputes`` set) a second reviewer's decision that disagreed with the first one's, the
    item waiting in the escalation queue for a third reviewer."""

    reviewer: str
    decision: ReviewDecision
    reason_code: str | None
    token: str
    at: float
    #: The first reviewer's decision this one disagreed with (a disagreement).
    disputes: FirstDecision | None = None

    def votes(self) -> list[ReviewerVote]:
        """The decisions recorded so far, oldest first."""
        own = ReviewerVote(
            reviewer=self.reviewer,
            decision=self.decision,
            reason_code=self.reason_code,
            decided_at=datetime.fromtimestamp(self.at, UTC),
        )
        return [*(self.disputes.votes() if self.disputes else []), own]

    def deciders(self) -> list[str]:
        """The reviewers who decided the item so far, oldest first."""
        return [v.reviewer for v in self.votes()]


class ReviewerVote(_Frozen):
    """One reviewer's own decision on an item, kept in a final decision that settled a
    disagreement (the audit records name what each reviewer decided)."""

    reviewer: str
    decision: ReviewDecision
    reason_code: str | None = None
    decided_at: datetime


class HumanDecision(_Frozen):
    """A final human decision on a job's REVIEW verdict: what the review queue hands on once,
    what the job result carries and what the audit log records. One shape all the way."""

    job_id: str
    review_id: str
    decision: ReviewDecision
    reason_code: str | None
    #: Pseudonymous reviewer ids (``rv_…``), first reviewer first; two when a critical removal
    #: needed a second, independent reviewer.
    reviewers: list[str] = Field(min_length=1)
    category_id: str
    policy_id: str
    policy_version: int
    decided_at: datetime
    #: SHA-256 of the bytes the deciding reviewer was shown (verified against the scored
    #: bytes' ``content_sha256``); None when they were gone or did not verify.
    seen_sha256: str | None = None
    #: What put the item into review (kept in the audit record and the statement of reasons).
    source: DecisionSource = DecisionSource.AUTOMATED
    #: The two reviewers' own decisions when they disagreed and ``reviewers[-1]`` settled it in
    #: the escalation queue (empty otherwise).
    votes: list[ReviewerVote] = Field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ReviewOutcome:
    """The result of applying one decision: final, or waiting for another reviewer (a second
    review; or, ``moved_to`` set, a disagreement sent to the escalation queue)."""

    final: HumanDecision | None = None
    pending: FirstDecision | None = None
    #: The queue the pending item moves to (None: it stays where it is).
    moved_to: str | None = None

    @property
    def disagreement(self) -> bool:
        return self.pending is not None and self.pending.disputes is not None


def priority(severity: Severity, score: float, age_s: float, *, age_doubling_s: float) -> float:
    """Priority of a waiting item (see the module docstring)."""
    age_factor: float = 2.0 ** (age_s / age_doubling_s)
    return SEVERITY_WEIGHT[severity] * max(score, MIN_SCORE) * age_factor


def rank_key(
    severity: Severity, score: float, created_at: float, *, age_doubling_s: float
) -> float:
    """Static sort key: ``rank_key(a) > rank_key(b)`` iff ``priority(a, t) > priority(b, t)``."""
    weight = SEVERITY_WEIGHT[severity] * max(score, MIN_SCORE)
    return math.log2(weight) - created_at / age_doubling_s


#: Sort-key boost of an item a notice put into (or raised in) review, in log2 units. The spread
#: of ``log2(W × score)`` over fresh items is under 10 (``log2(8 / 0.01)``), so a trusted
#: flagger's notice goes ahead of every fresh automated item, and of older ones up to ten
#: age doublings; a user's notice weighs like a critical category's fresh item.
NOTICE_BOOST: dict[DecisionSource, float] = {
    DecisionSource.AUTOMATED: 0.0,
    DecisionSource.USER_REPORT: 0.0,
    DecisionSource.TRUSTED_FLAGGER: 10.0,
    DecisionSource.APPEAL: 0.0,
}


def item_rank(item: ReviewItem, *, age_doubling_s: float) -> float:
    """The stored sort key of an item: :func:`rank_key` plus its ``priority_boost``."""
    base = rank_key(item.severity, item.score, item.created_at, age_doubling_s=age_doubling_s)
    return base + item.priority_boost


def pseudonym(secret: str, username: str) -> str:
    """The reviewer id that leaves the review system: ``rv_`` + HMAC-SHA256 prefix."""
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha256).hexdigest()
    return "rv_" + digest[:16]


def reason_codes_for(policy: Policy, category_id: str) -> list[str]:
    """Reason codes a reviewer may give for removal: the category's own (block band first), then
    every other code of the policy, deduplicated.

    Raises:
        KeyError: the category is not in the policy.
    """
    own = policy.category(category_id)
    ordered = [own, *(c for c in policy.categories if c.id != category_id)]
    codes: list[str] = []
    for category in ordered:
        for band in (category.actions.block, category.actions.review):
            if band.reason_code and band.reason_code not in codes:
                codes.append(band.reason_code)
    return codes or [f"{policy.id.upper().replace('-', '_')}_VIOLATION"]


def _title(category_id: str) -> str:
    return category_id.replace("_", " ").replace("-", " ").strip().capitalize()


def reason_labels_for(policy: Policy, category_id: str) -> list[ReasonOption]:
    """The reason codes of :func:`reason_codes_for`, each with a readable label: the category
    it comes from and its description ("borderline" for a review band's own code).

    Raises:
        KeyError: the category is not in the policy.
    """
    own = policy.category(category_id)
    ordered = [own, *(c for c in policy.categories if c.id != category_id)]
    out: list[ReasonOption] = []
    seen: set[str] = set()
    for category in ordered:
        for band, extra in (
            (category.actions.block, ""),
            (category.actions.review, " (borderline)"),
        ):
            code = band.reason_code
            if code and code not in seen:
                seen.add(code)
                description = category.description.rstrip(".")
                label = (
                    f"{_title(category.id)}{extra}: {description}"
                    if description
                    else (f"{_title(category.id)}{extra}")
                )
                out.append(ReasonOption(code=code, label=label, category_id=category.id))
    if not out:
        code = f"{policy.id.upper().replace('-', '_')}_VIOLATION"
        out.append(ReasonOption(code=code, label=f"Violates {policy.id}", category_id=None))
    return out


def reason_options(item: ReviewItem) -> list[ReasonOption]:
    """What the reviewer picks from: the item's labelled reasons, or (an item queued before
    labels existed) its codes, labelled with themselves."""
    if item.reasons:
        return list(item.reasons)
    return [ReasonOption(code=c, label=c.replace("_", " ").capitalize()) for c in item.reason_codes]


def _pct(value: float) -> str:
    return f"{round(value * 100)}%"


def plain_reasons(item: ReviewItem) -> list[str]:
    """Why the model sent ``item`` to review, in plain words, one line per piece of evidence
    of the deciding category: the prompt it matched against the allowed look-alike it was
    weighed against, a bank entry it matched, or a classifier's label."""
    deciding = next((c for c in item.verdict.categories if c.category_id == item.category_id), None)
    if deciding is None:
        return []
    out: list[str] = []
    matched = [
        e for e in deciding.evidence if str(e.details.get("kind", "")).startswith("positive")
    ]
    allowed = [e for e in deciding.evidence if str(e.details.get("kind", "")).startswith("benign")]
    if matched:
        top = matched[0]
        line = f"matches “{top.label}” {_pct(top.score)}"
        if allowed:
            line += f" against the allowed “{allowed[0].label}” {_pct(allowed[0].score)}"
        out.append(line)
        out.extend(f"also “{e.label}” {_pct(e.score)}" for e in matched[1:])
    elif allowed:
        out.append(f"closest allowed look-alike “{allowed[0].label}” only {_pct(allowed[0].score)}")
    for e in deciding.evidence:
        d = e.details
        if e.signal == "hash_bank" and "entry_id" in d:
            line = f"matches bank {d.get('bank')} entry #{d['entry_id']}"
            line += f" ({d.get('distance')} of 256 bits differ)"
            if d.get("label"):
                line += f", filed as {d['label']}"
            out.append(line)
        elif "kind" not in d and e.signal != "hash_bank":
            out.append(f"{e.signal} says {e.label} {_pct(e.score)}")
    return out


def review_id_for(job_id: str) -> str:
    """The review id of a job's review: derived from the job id, so a resubmit collapses."""
    return "rev_" + hashlib.sha256(job_id.encode()).hexdigest()[:24]


def item_from_verdict(
    *,
    job_id: str,
    image: ImageRef,
    verdict: Verdict,
    policy: Policy,
    content_sha256: str | None = None,
    created_at: float | None = None,
    review_id: str | None = None,
    content_pdq: str | None = None,
    content_pdq_quality: int | None = None,
    evidence_key: str | None = None,
    source: DecisionSource = DecisionSource.AUTOMATED,
    category_id: str | None = None,
    priority_boost: float = 0.0,
    uploader_id: str | None = None,
) -> ReviewItem:
    """Build the review item for a REVIEW verdict, with the deciding category's policy text.

    ``category_id`` reviews another category of the verdict's policy than the deciding one (a
    notice naming it); ``source`` and ``priority_boost`` say what put the item into review.

    Raises:
        ReviewInvalidDecision: the verdict names no category, or one that ``policy`` lacks.
    """
    reviewed = category_id or verdict.category_id
    if reviewed is None or verdict.policy_id != policy.id:
        raise ReviewInvalidDecision(
            f"verdict for job {job_id} has no category of policy {policy.id!r} to review"
        )
    try:
        category = policy.category(reviewed)
    except KeyError as exc:
        raise ReviewInvalidDecision(f"policy {policy.id!r} has no category {reviewed!r}") from exc
    return ReviewItem(
        review_id=review_id or review_id_for(job_id),
        job_id=job_id,
        image=image,
        content_sha256=content_sha256,
        evidence_key=evidence_key,
        content_pdq=content_pdq,
        content_pdq_quality=content_pdq_quality,
        verdict=verdict,
        policy_id=policy.id,
        policy_version=policy.version,
        category_id=category.id,
        severity=category.severity,
        score=verdict.scores.get(f"{policy.id}/{category.id}", verdict.score)
        if category_id
        else verdict.score,
        policy_text=PolicyText(
            policy_description=policy.description,
            category_description=category.description,
            prompts=list(category.prompts),
            # The category's own look-alikes; the policy-wide contrast set is generic and long.
            benign_prompts=list(category.benign_prompts) or policy.benign_for(category)[:12],
        ),
        reason_codes=reason_codes_for(policy, category.id),
        reasons=reason_labels_for(policy, category.id),
        created_at=created_at if created_at is not None else datetime.now(UTC).timestamp(),
        source=source,
        priority_boost=priority_boost,
        uploader_id=uploader_id,
    )


def apply_decision(
    item: ReviewItem,
    first: FirstDecision | None,
    *,
    reviewer: str,
    decision: ReviewDecision,
    reason_code: str | None,
    token: str,
    now: float,
    seen_sha256: str | None = None,
    queue: str = DEFAULT_QUEUE,
) -> ReviewOutcome:
    """Apply one reviewer's decision to an item (see the module docstring for the rules).

    ``reviewer`` is the pseudonymous id. ``first`` is the pending first decision, if any.
    ``seen_sha256``: the hash of the bytes this reviewer was shown (None: none verified).
    ``queue``: the queue the item is in now (in the escalation queue every decision is final).

    Raises:
        ReviewInvalidDecision: removal without a valid reason code, a reason code on a
            non-removal, the first reviewer deciding the second review too, or "escalate" in
            the escalation queue.
    """
    if reviewer in item.barred:
        raise ReviewInvalidDecision(
            "you decided this item before: its appeal goes to a different reviewer",
            code="review_reviewer_barred",
        )
    if item.queue == QUEUE_APPEAL or decision in APPEAL_DECISIONS:
        return _appeal_outcome(
            item,
            reviewer=reviewer,
            decision=decision,
            reason_code=reason_code,
            now=now,
            seen_sha256=seen_sha256,
        )
    if decision is ReviewDecision.REMOVE:
        if reason_code not in item.reason_codes:
            raise ReviewInvalidDecision(
                f"removal needs a reason code from the policy: {', '.join(item.reason_codes)}"
            )
    elif reason_code is not None:
        raise ReviewInvalidDecision("a reason code is only given with a removal")

    def final(
        d: ReviewDecision,
        code: str | None,
        reviewers: list[str],
        votes: list[ReviewerVote] | None = None,
    ) -> ReviewOutcome:
        return ReviewOutcome(
            final=HumanDecision(
                job_id=item.job_id,
                review_id=item.review_id,
                decision=d,
                reason_code=code,
                reviewers=reviewers,
                category_id=item.category_id,
                policy_id=item.policy_id,
                policy_version=item.policy_version,
                decided_at=datetime.fromtimestamp(now, UTC),
                seen_sha256=seen_sha256,
                source=item.source,
                votes=votes or [],
            )
        )

    if queue == ESCALATION_QUEUE:
        if decision is ReviewDecision.ESCALATE:
            raise ReviewInvalidDecision(
                "the item is already in the escalation queue: allow or remove it",
                code="review_already_escalated",
            )
        if first is not None and first.disputes is not None:
            # A disagreement: settled by a third reviewer, never by one of the two.
            if reviewer in first.deciders():
                raise ReviewInvalidDecision(
                    "you decided this item before: its disagreement goes to another reviewer",
                    code="review_reviewer_barred",
                )
            return final(decision, reason_code, [*first.deciders(), reviewer], first.votes())
        earlier = [first.reviewer] if first is not None and first.reviewer != reviewer else []
        return final(decision, reason_code, [*earlier, reviewer])
    if first is None:
        if decision is ReviewDecision.REMOVE and item.critical:
            return ReviewOutcome(
                pending=FirstDecision(
                    reviewer=reviewer,
                    decision=decision,
                    reason_code=reason_code,
                    token=token,
                    at=now,
                )
            )
        return final(decision, reason_code, [reviewer])
    if reviewer == first.reviewer:
        raise ReviewInvalidDecision("the second review must be done by a different reviewer")
    if decision is ReviewDecision.REMOVE:
        return final(decision, reason_code, [first.reviewer, reviewer])
    # A disagreement: neither decision wins; both wait in the escalation queue.
    return ReviewOutcome(
        pending=FirstDecision(
            reviewer=reviewer,
            decision=decision,
            reason_code=reason_code,
            token=token,
            at=now,
            disputes=first,
        ),
        moved_to=ESCALATION_QUEUE,
    )


def _appeal_outcome(
    item: ReviewItem,
    *,
    reviewer: str,
    decision: ReviewDecision,
    reason_code: str | None,
    now: float,
    seen_sha256: str | None,
) -> ReviewOutcome:
    """An appeal is decided by one reviewer: uphold or overturn, each with a reason code."""
    if item.queue != QUEUE_APPEAL or decision not in APPEAL_DECISIONS:
        raise ReviewInvalidDecision(
            "an appeal is upheld or overturned, and only an appeal is"
            if item.queue == QUEUE_APPEAL
            else "only an appeal can be upheld or overturned"
        )
    if reason_code not in item.reason_codes:
        raise ReviewInvalidDecision(
            f"an appeal outcome needs a reason code: {', '.join(item.reason_codes)}"
        )
    return ReviewOutcome(
        final=HumanDecision(
            job_id=item.job_id,
            review_id=item.review_id,
            decision=decision,
            reason_code=reason_code,
            reviewers=[reviewer],
            category_id=item.category_id,
            policy_id=item.policy_id,
            policy_version=item.policy_version,
            decided_at=datetime.fromtimestamp(now, UTC),
            seen_sha256=seen_sha256,
            source=DecisionSource.APPEAL,
        )
    )


def export_row(item: ReviewItem, final: HumanDecision) -> dict[str, Any]:
    """One reviewed item as a labelled row (``moderation review export``, the policy tools)."""
    deciding = next((c for c in item.verdict.categories if c.category_id == item.category_id), None)
    # Bytes sent with the request go when the job ends; the scored copy kept for the reviewer
    # (in the object store until the evidence retention) is what the policy tools can read.
    image = (
        f"{EVIDENCE_SCHEME}:{item.evidence_key}"
        if item.evidence_key and item.image.scheme in (INLINE_SCHEME, SPILL_SCHEME)
        else item.image.uri
    )
    return {
        "review_id": item.review_id,
        "job_id": item.job_id,
        "image": image,
        "content_sha256": item.content_sha256,
        "policy_id": item.policy_id,
        "policy_version": item.policy_version,
        "category": item.category_id,
        "signal": deciding.signal if deciding else None,
        "severity": item.severity.value,
        "human_label": final.decision.value,
        "reason_code": final.reason_code,
        "model_score": item.score,
        "model_decision": item.verdict.decision.value,
        "scores": dict(item.verdict.scores),
        "model": item.verdict.model,
        "reviewers": list(final.reviewers),
        "decided_at": final.decided_at.isoformat(),
        "source": final.source.value,
    }


def outbox_delay(attempts: int, *, base_s: float, max_s: float) -> float:
    """Seconds before the next delivery of a final decision whose delivery failed ``attempts``
    times: ``base_s`` doubling per failure, at most ``max_s``."""
    if attempts <= 0:
        return 0.0
    return float(min(max_s, base_s * 2.0 ** min(attempts - 1, 60)))


FirstDecision.model_rebuild()
AppealContext.model_rebuild()
ReviewItem.model_rebuild()
