"""Appeals, in one place: filing one (the API and the client), reading them, and handing on an
appeal's outcome once its reviewer decided (see :mod:`moderation.core.appeals` for the rules).

Filing: the job must be the caller tenant's (another tenant's id answers 404, as an unknown
one), its standing decision must restrict the content, the appeal window must be open and the
job must not have had every appeal allowed; the appeal and its review item (queue ``appeal``,
barred to every earlier decider) are stored together (:meth:`~moderation.ports.AppealStore.
file`).

Outcome (:meth:`Appeals.record_outcome`, the review desk's ``on_final`` for appeal decisions,
:func:`route_final`), in the order of :mod:`moderation.pipeline.outcomes`: the audit record
linked to the decision appealed first, then the appeal's status, the job's result (its
``human`` becomes the outcome: an overturn makes the standing decision ``allow``), the signed
``job.appeal_decided`` callback, then every outcome hook (strikes). Each step is idempotent
(derived record id, same status, same result), so a redelivery from the review outbox repeats
nothing visible.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from moderation.core.appeals import (
    MAX_STATEMENT_CHARS,
    Appeal,
    AppealRules,
    OverturnRate,
    appeal_callback_body,
    appeal_id_for,
    appeal_item,
    appealed,
    check_window,
    overturn_rates,
    record_for_appeal,
)
from moderation.core.evidence import evidence_key
from moderation.core.jobs import Job, JobResult, is_job_id, scoped_id
from moderation.core.policy import Policy, Severity
from moderation.core.review import (
    APPEAL_DECISIONS,
    HumanDecision,
    PolicyText,
    ReviewItem,
    review_id_for,
)
from moderation.exceptions import (
    AppealNotFound,
    AppealRefused,
    JobNotFoundError,
    JobRejected,
    ReviewNotFound,
)
from moderation.metrics import metrics
from moderation.pipeline.review_outbox import OnFinal
from moderation.ports import AppealStore, AuditSink, CallbackSender, JobStore, ReviewQueue

__all__ = ["AppealOutcomeHook", "Appeals", "route_final", "rules_from"]

log = logging.getLogger(__name__)

#: Called after an appeal's outcome was recorded (the appeal as decided, the decision):
#: strikes are removed by an overturn.
AppealOutcomeHook = Callable[[Appeal, HumanDecision], object]


class Appeals:
    """The appeals use case.

    Args:
        store: job records and results.
        appeals: the appeal store (None: this deployment has no database; filing answers 503
            ``appeals_unavailable``).
        review: the review queue (the original item of a reviewed job).
        audit: the audit log.
        callbacks: schedules signed callbacks.
        policies: the policies in service (the written policy an appeal's reviewer reads for an
            automated block).
        rules: the appeal window and count of a tenant.
        clock: unix seconds.
    """

    def __init__(
        self,
        *,
        store: JobStore,
        appeals: AppealStore | None,
        review: ReviewQueue,
        audit: AuditSink,
        callbacks: CallbackSender,
        policies: Callable[[], Mapping[str, Policy]],
        rules: Callable[[str], AppealRules],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.appeals = appeals
        self.review = review
        self.audit = audit
        self.callbacks = callbacks
        self.policies = policies
        self.rules = rules
        self.clock = clock
        self.hooks: list[AppealOutcomeHook] = []

    def _store(self) -> AppealStore:
        if self.appeals is None:
            raise AppealRefused(
                "appeals need the database, which this deployment does not have",
                code="appeals_unavailable",
                status=503,
            )
        return self.appeals

    def _job(self, job_id: str, tenant: str) -> tuple[Job, JobResult]:
        if not is_job_id(job_id):
            raise JobNotFoundError(f"no job {job_id!r}")
        scoped = scoped_id(tenant, job_id)
        job = self.store.get_job(scoped)
        result = self.store.get_result(scoped)
        if job is None or result is None or job.tenant != tenant:
            raise JobNotFoundError(f"no job {job_id!r} (unknown or expired)")
        return job, result

    # --- an upstream service --------------------------------------------------------------

    def file(self, job_id: str, *, tenant: str, statement: str) -> Appeal:
        """File an appeal against the standing decision of ``tenant``'s job ``job_id`` (its own
        id), with the user's ``statement``; returns it as the tenant sees it. Filing the same
        statement again returns the same appeal.

        Raises:
            JobNotFoundError: no such job of this tenant (or its result expired).
            JobRejected: an empty or over-long statement (422 ``appeal_statement``).
            AppealRefused: nothing to appeal, the window has closed, the appeals allowed are
                used up (409), or no database (503).
            DatabaseUnavailable: transient.
        """
        text = statement.replace("\x00", "\ufffd")  # (PostgreSQL's jsonb takes no NUL)
        text = text.strip() or text  # (only what Python calls space: kept as written)
        if not text.strip(" \t\r\n") or len(text) > MAX_STATEMENT_CHARS:
            raise JobRejected(
                f"the statement must have 1 to {MAX_STATEMENT_CHARS} characters",
                status=422,
                code="appeal_statement",
            )
        appeals = self._store()
        job, result = self._job(job_id, tenant)
        scoped = job.id
        decided = appealed(result)
        earlier = appeals.for_job(scoped)
        same = next((a for a in earlier if a.statement == text), None)
        if same is not None and same.number == len(earlier):
            return same.for_caller()  # a retried filing
        now = datetime.fromtimestamp(self.clock(), UTC)
        check_window(decided, now=now, rules=self.rules(tenant), filed_before=len(earlier))
        number = len(earlier) + 1
        original = self._original(scoped)
        # Everyone who decided it before: the first review's reviewers, every earlier
        # appeal's reviewer and whoever those appeals were barred to.
        barred = {r for d in decided.earlier for r in d.reviewers}
        for before in earlier:
            if before.decided_by:
                barred.add(before.decided_by)
            with contextlib.suppress(ReviewNotFound):
                barred |= set(self.review.item(before.appeal_id).barred)
        appeal = Appeal(
            appeal_id=appeal_id_for(scoped, number),
            tenant=tenant,
            job_id=scoped,
            number=number,
            statement=text,
            filed_at=now,
            appealed_kind=decided.kind,
            appealed_decision=decided.decision,
            appealed_record_id=decided.record_id,
            policy_id=decided.policy_id,
            policy_version=decided.policy_version,
            category_id=decided.category_id,
        )
        text_, severity = self._policy_text(decided.policy_id, decided.category_id, result)
        item = appeal_item(
            appeal,
            decided,
            result,
            original=original,
            policy_text=text_,
            image=job.image,
            severity=severity,
            barred=barred,
            evidence_key=self._block_evidence(tenant, scoped, result),
            uploader_id=job.uploader_id,
        )
        stored = appeals.file(appeal, item)
        if stored == appeal:
            metrics().appeals_filed.labels(appeal.policy_id).inc()
        return stored.for_caller()

    def get(self, appeal_id: str, *, tenant: str) -> Appeal:
        """One of ``tenant``'s appeals, as it sees it.

        Raises:
            AppealNotFound: no such appeal of this tenant (another tenant's: the same answer).
        """
        appeal = self._store().get(appeal_id)
        if appeal is None or appeal.tenant != tenant:
            raise AppealNotFound(f"no appeal {appeal_id!r}")
        return appeal.for_caller()

    def for_job(self, job_id: str, *, tenant: str) -> list[Appeal]:
        """The appeals of one of ``tenant``'s jobs, oldest first.

        Raises:
            JobNotFoundError: no such job of this tenant.
        """
        job, _ = self._job(job_id, tenant)
        return [a.for_caller() for a in self._store().for_job(job.id)]

    # --- once a reviewer decided ------------------------------------------------------------

    def record_outcome(self, decision: HumanDecision) -> JobResult:
        """Hand on an appeal's outcome (see the module docstring). Safe to repeat.

        Raises:
            AppealNotFound: no such appeal.
            JobNotFoundError: its job is gone (expired).
            AuditSinkUnavailable, DatabaseUnavailable, QueueUnavailable: transient.
        """
        appeals = self._store()
        appeal = appeals.get(decision.review_id)
        if appeal is None:
            raise AppealNotFound(f"no appeal {decision.review_id!r}")
        job = self.store.get_job(appeal.job_id)
        result = self.store.get_result(appeal.job_id)
        if job is None or result is None:
            raise JobNotFoundError(f"no job {appeal.job_id!r} (unknown or expired)")
        self.audit.write(
            record_for_appeal(
                decision,
                appeal,
                content_sha256=result.content_sha256,
                content_ref=job.image.uri,
                dsa_category=self._dsa_category(appeal.policy_id, appeal.category_id),
            )
        )
        fresh = appeal.status.value == "open"
        decided = appeals.decide(appeal.appeal_id, decision=decision)
        updated = self.store.set_human(appeal.job_id, decision)
        if updated is None:
            raise JobNotFoundError(f"no job {appeal.job_id!r} (unknown or expired)")
        if job.callback_url:
            self.callbacks.send(
                job.public_id,
                job.callback_url,
                appeal_callback_body(decided, updated),
                tenant=job.tenant,
            )
        for hook in self.hooks:
            hook(decided, decision)
        if fresh:
            metrics().appeal_outcomes.labels(appeal.policy_id, decision.decision.value).inc()
        return updated

    # --- quality signal ---------------------------------------------------------------------

    def overturn_rates(self, *, since: float | None = None) -> dict[str, list[OverturnRate]]:
        """Overturn rates of decided appeals per category and per policy version."""
        decided = self._store().decided(since=since)
        return {
            "category": overturn_rates(decided, by="category"),
            "policy_version": overturn_rates(decided, by="policy_version"),
        }

    def backlog(self) -> tuple[int, float | None]:
        """Open appeals and the oldest one's age (0, None without a database)."""
        return self.appeals.backlog() if self.appeals is not None else (0, None)

    # --- internals --------------------------------------------------------------------------

    def _original(self, scoped: str) -> ReviewItem | None:
        try:
            return self.review.item(review_id_for(scoped))
        except ReviewNotFound:
            return None

    def _block_evidence(self, tenant: str, scoped: str, result: JobResult) -> str | None:
        """Where the blocked image's bytes were kept (if they were: see ``Outcomes``)."""
        if result.content_sha256 is None:
            return None
        try:
            return evidence_key(tenant, review_id_for(scoped), result.content_sha256)
        except ValueError:
            return None

    def _policy_text(
        self, policy_id: str, category_id: str, result: JobResult
    ) -> tuple[PolicyText, Severity]:
        policy = self.policies().get(policy_id)
        verdict = result.verdict
        fallback = (verdict.severity if verdict else None) or Severity.MEDIUM
        if policy is None:
            return PolicyText(
                policy_description=f"policy {policy_id} (no longer in service)",
                category_description=category_id,
                prompts=[],
                benign_prompts=[],
            ), fallback
        try:
            category = policy.category(category_id)
        except KeyError:
            return PolicyText(
                policy_description=policy.description,
                category_description=category_id,
                prompts=[],
                benign_prompts=[],
            ), fallback
        return PolicyText(
            policy_description=policy.description,
            category_description=category.description,
            prompts=list(category.prompts),
            benign_prompts=list(category.benign_prompts) or policy.benign_for(category)[:12],
        ), category.severity

    def _dsa_category(self, policy_id: str, category_id: str) -> str | None:
        policy = self.policies().get(policy_id)
        if policy is None:
            return None
        try:
            return policy.category(category_id).dsa_category
        except KeyError:
            return None


def route_final(appeals: Appeals | None, on_final: OnFinal) -> OnFinal:
    """The review desk's ``on_final``: appeal outcomes to :meth:`Appeals.record_outcome`, every
    other final decision to ``on_final``."""

    def hand_on(decision: HumanDecision) -> object:
        if decision.decision in APPEAL_DECISIONS:
            if appeals is None:
                raise AppealRefused(
                    "appeal outcomes need the database", code="appeals_unavailable", status=503
                )
            return appeals.record_outcome(decision)
        return on_final(decision)

    return hand_on


def rules_from(
    window_s: float, max_per_decision: int, tenants: Mapping[str, tuple[float | None, int | None]]
) -> Callable[[str], AppealRules]:
    """A tenant's appeal rules: its overrides (``window_s``, ``max``; None: the default)."""

    def rules(tenant: str) -> AppealRules:
        own_window, own_max = tenants.get(tenant, (None, None))
        return AppealRules(
            window_s=own_window if own_window is not None else window_s,
            max_per_decision=own_max if own_max is not None else max_per_decision,
        )

    return rules
