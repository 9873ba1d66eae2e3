"""How a job ends, and what follows: audit record, result, review item, callback, metrics.

Order, chosen so that a crash at any point loses nothing and duplicates nothing visible:

1. the audit record is written first, for verdicts and errors alike (its id is derived from the
   job id, so a redelivered task rewrites the same record, deduplicated on read): the log
   accounts for every job;
2. the final result is written with compare-and-set semantics: only the first writer ends the
   job (a second delivery of a finished job is a no-op);
3. side effects (a REVIEW verdict's review item, the signed callback) run, then are marked done;
   a redelivery that finds the result written but the effects not marked done runs them again
   (review submission is idempotent by job id; callbacks carry the job id so receivers can drop
   a duplicate).

A human decision follows the same order: one audit record per reviewer, then the result, then
the ``job.human_decision`` callback.

Shadow policy versions are recorded with the verdict, never acted on: their verdicts go into the
job's automated audit record (``details.shadow``) and, once the job is ended by this call, into
``moderation_shadow_decisions_total``; nothing else (result, review, callback) sees them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime

from moderation.core.audit import record_for_error, record_for_review, record_for_verdict
from moderation.core.callbacks import callback_body
from moderation.core.decision import Decision, Verdict
from moderation.core.jobs import Job, JobError, JobResult
from moderation.core.policy import Policy
from moderation.core.review import HumanDecision, item_from_verdict
from moderation.core.shadow import ShadowVerdict
from moderation.exceptions import JobNotFoundError, ReviewInvalidDecision
from moderation.metrics import metrics
from moderation.ports import AuditSink, CallbackSender, JobStore, ReviewQueue

__all__ = ["Outcomes"]

log = logging.getLogger(__name__)


class Outcomes:
    """Ends jobs and dispatches their side effects. Thread-safe if its collaborators are.

    Args:
        store: job records and results.
        audit: this process's audit log (always required: a process that cannot audit does not
            decide anything).
        callbacks: schedules signed callbacks.
        review: the human-review queue (None in processes that never send to review).
        policies: the policies in service by id, for the review item's policy text.
        weights_sha256: the model weights' hash, recorded with every automated decision.
        keep_inline_s: how long inline images of REVIEW verdicts are kept for the reviewer.
    """

    def __init__(
        self,
        store: JobStore,
        *,
        audit: AuditSink,
        callbacks: CallbackSender,
        review: ReviewQueue | None = None,
        policies: Callable[[], Mapping[str, Policy]] = dict,
        weights_sha256: str | None = None,
        keep_inline_s: int = 7 * 24 * 3600,
    ) -> None:
        self.store = store
        self.audit = audit
        self.callbacks = callbacks
        self.review = review
        self.policies = policies
        self.weights_sha256 = weights_sha256
        self.keep_inline_s = keep_inline_s

    def finish_verdict(
        self,
        job: Job,
        verdict: Verdict,
        *,
        content_sha256: str | None,
        shadows: Sequence[ShadowVerdict] = (),
    ) -> bool:
        """End ``job`` with ``verdict``. Returns False when it had already ended (no-op).

        ``shadows``: the shadow policy versions' verdicts on the same image (recorded and
        measured, never acted on).

        Raises:
            AuditSinkUnavailable, QueueUnavailable: transient; the task retries.
        """
        self.audit.write(
            record_for_verdict(
                job_id=job.id,
                verdict=verdict,
                content_sha256=content_sha256,
                content_ref=job.image.uri,
                weights_sha256=self.weights_sha256,
                dsa_category=self._dsa_category(verdict),
                details={"shadow": [s.to_dict() for s in shadows]} if shadows else None,
            )
        )
        result = JobResult.ended(job, verdict=verdict, content_sha256=content_sha256)
        won = self.store.finish(result)
        if won:
            m = metrics()
            m.jobs.labels("verdict").inc()
            m.decisions.labels(
                verdict.policy_id or "none", verdict.category_id or "none", verdict.decision.value
            ).inc()
            m.latency.labels("total").observe((datetime.now(UTC) - job.created_at).total_seconds())
            for shadow in shadows:
                m.shadow_decisions.labels(
                    shadow.policy_id,
                    str(shadow.version),
                    shadow.live_decision.value if shadow.live_decision else "none",
                    shadow.decision.value,
                ).inc()
        self.complete_effects(job)
        return won

    def finish_error(self, job: Job, error: JobError, *, content_sha256: str | None = None) -> bool:
        """End ``job`` with an error result (audited like a verdict). Returns False when it had
        already ended.

        Raises:
            AuditSinkUnavailable, QueueUnavailable: transient; the task retries.
        """
        self.audit.write(
            record_for_error(
                job_id=job.id,
                code=error.code,
                message=error.message,
                attempts=error.attempts,
                transient=error.transient,
                content_sha256=content_sha256,
                content_ref=job.image.uri,
            )
        )
        result = JobResult.ended(job, error=error, content_sha256=content_sha256)
        won = self.store.finish(result)
        if won:
            m = metrics()
            m.jobs.labels("dead_letter" if error.code == "poison_message" else "error").inc()
            m.errors.labels(error.code).inc()
        self.complete_effects(job)
        return won

    def complete_effects(self, job: Job) -> None:
        """Run the side effects of an ended job unless they already ran (idempotent)."""
        if self.store.effects_done(job.id):
            return
        result = self.store.get_result(job.id)
        if result is None or not result.status.final:
            return
        if (
            self.review is not None
            and result.verdict is not None
            and result.verdict.decision is Decision.REVIEW
        ):
            self._send_to_review(job, result.verdict, result.content_sha256)
        if job.callback_url:
            self.callbacks.send(job.id, job.callback_url, callback_body("job.finished", result))
        self.store.mark_effects_done(job.id)

    def _send_to_review(self, job: Job, verdict: Verdict, content_sha256: str | None) -> None:
        assert self.review is not None
        policy = self.policies().get(verdict.policy_id or "")
        if policy is None:
            log.error(
                "job %s: REVIEW verdict of unknown policy %r not queued", job.id, verdict.policy_id
            )
            return
        if job.image.inline:
            # Inline bytes normally expire after queue.inline_ttl_s; reviewers need them longer.
            self.store.keep_inline(job.image.inline_key, self.keep_inline_s)
        try:
            item = item_from_verdict(
                job_id=job.id,
                image=job.image,
                verdict=verdict,
                policy=policy,
                content_sha256=content_sha256,
            )
        except ReviewInvalidDecision as exc:
            log.error("job %s: cannot build its review item: %s", job.id, exc)
            return
        self.review.submit(item)

    def _dsa_category(self, verdict: Verdict) -> str | None:
        policy = self.policies().get(verdict.policy_id or "")
        if policy is None or verdict.category_id is None:
            return None
        try:
            return policy.category(verdict.category_id).dsa_category
        except KeyError:
            return None

    def record_human_decision(self, decision: HumanDecision) -> JobResult:
        """Attach a reviewer's final decision to its job: audit records (one per reviewer), the
        updated result, the ``job.human_decision`` callback. Safe to repeat (same record ids).

        Raises:
            JobNotFoundError: no such job (or its result expired).
            AuditSinkUnavailable, QueueUnavailable: transient.
        """
        job = self.store.get_job(decision.job_id)
        result = self.store.get_result(decision.job_id)
        if job is None or result is None:
            raise JobNotFoundError(f"no job {decision.job_id!r} (unknown or expired)")
        for position, reviewer in enumerate(decision.reviewers, start=1):
            self.audit.write(
                record_for_review(
                    decision,
                    reviewer=reviewer,
                    position=position,
                    content_sha256=result.content_sha256,
                    content_ref=job.image.uri,
                    verdict=result.verdict,
                    dsa_category=self._dsa_category(result.verdict) if result.verdict else None,
                )
            )
        updated = self.store.set_human(decision.job_id, decision)
        if updated is None:
            raise JobNotFoundError(f"no job {decision.job_id!r} (unknown or expired)")
        if job.callback_url:
            self.callbacks.send(
                job.id, job.callback_url, callback_body("job.human_decision", updated)
            )
        return updated
