"""How a job ends, and what follows: audit record, result, review item, callback, metrics.

Order, chosen so that a crash at any point loses nothing and duplicates nothing visible:

1. the audit record is written first, for verdicts and errors alike (its id is derived from the
   job id, so a redelivered task rewrites the same record, deduplicated on read): the log
   accounts for every job;
2. the final result is written with compare-and-set semantics: only the first writer ends the
   job (a second delivery of a finished job is a no-op);
3. side effects (a REVIEW verdict's review item, the signed callback) run, then are marked done
   (a batch's review items are queued in one write, before its callbacks);
   a redelivery that finds the result written but the effects not marked done runs them again
   (review submission is idempotent by job id; callbacks carry the job id so receivers can drop
   a duplicate). A review item's scored bytes go to the object store *before* the item is
   queued (:class:`~moderation.pipeline.review_evidence.ReviewEvidence`; the key is derived
   from the item, so a rerun rewrites the same object); bytes that could not be kept (the
   store refused them, or a redelivery no longer has them) leave the item without evidence:
   the reviewer is told, and it can only be removed or escalated.

A human decision follows the same order: one audit record per reviewer, then the result, then
the ``job.human_decision`` callback; then, for a final removal a reviewer asked to bank ("remove
and add to bank"), the image's PDQ hash goes into the bank and that is audited too (idempotent:
a redelivered decision finds the hash banked and rewrites the same record).

Shadow policy versions are recorded with the verdict, never acted on: their verdicts go into the
job's automated audit record (``details.shadow``) and, once the job is ended by this call, into
``moderation_shadow_decisions_total``; nothing else (result, review, callback) sees them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from moderation.core.audit import record_for_error, record_for_review, record_for_verdict
from moderation.core.callbacks import callback_body
from moderation.core.decision import Decision, Verdict
from moderation.core.jobs import Job, JobError, JobResult
from moderation.core.payload import Payload
from moderation.core.policy import Policy
from moderation.core.review import (
    NOTICE_BOOST,
    HumanDecision,
    ReviewDecision,
    ReviewItem,
    item_from_verdict,
    review_id_for,
)
from moderation.core.shadow import ShadowVerdict
from moderation.core.sources import DecisionSource
from moderation.exceptions import JobNotFoundError, ModerationError, ReviewInvalidDecision
from moderation.metrics import metrics
from moderation.pipeline.notices import answer_notices, answer_unreviewable
from moderation.pipeline.video_banks import frames_of_verdict
from moderation.ports import (
    AuditSink,
    CallbackSender,
    DeliveryLog,
    JobStore,
    NoticeStore,
    ReviewQueue,
)

if TYPE_CHECKING:
    from moderation.pipeline.bank_guard import BankGuard
    from moderation.pipeline.banks import BankService
    from moderation.pipeline.review_evidence import ReviewEvidence
    from moderation.pipeline.strikes import Enforcement

__all__ = ["Decided", "Outcomes"]

log = logging.getLogger(__name__)


class Decided(NamedTuple):
    """A job with its verdict, ready to end."""

    job: Job
    verdict: Verdict
    content_sha256: str | None = None
    #: The image's content identifiers from the image signals (``pdq``, ``pdq_quality``).
    fingerprints: Mapping[str, Any] | None = None
    #: The shadow policy versions' verdicts on the same image.
    shadows: tuple[ShadowVerdict, ...] = ()
    #: The bytes that were scored (kept for the reviewer when the verdict is REVIEW), or the
    #: local file a large video was streamed into.
    data: Payload | None = None
    #: A video's sampled frames as stills, and when each was shown (kept with the bytes).
    stills: tuple[bytes, ...] = ()
    still_times: tuple[float, ...] = ()


def _details(decided: Decided) -> dict[str, Any] | None:
    """The audit record's ``details``: content fingerprints and shadow verdicts."""
    details: dict[str, Any] = {f"content_{k}": v for k, v in (decided.fingerprints or {}).items()}
    if decided.shadows:
        details["shadow"] = [s.to_dict() for s in decided.shadows]
    return details or None


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
        keep_inline_s: how long inline images of REVIEW verdicts are kept where there is
            no ``evidence`` store (a store that keeps them past the job's end: the Redis and
            PostgreSQL stores drop them when the job ends:
            :func:`~moderation.core.jobs.keeps_inline`).
        banks: carries out reviewers' "add to bank" requests (None: not offered).
        evidence: keeps the scored bytes of REVIEW verdicts for the reviewer.
        notices: the notices from outside, answered by each human decision (None: none kept).
        bank_guard: counts the bank entries the ended jobs matched (flood quarantine).
        keep_block_evidence: also keep the scored bytes of BLOCK verdicts (for the reviewer of
            an appeal; retired at once, so deleted when the appeal window has passed).
        enforcement: uploader strikes (None: none recorded): a block or a removal of a job
            that names its uploader records a strike; a repeat offender's review items get a
            higher priority.
    """

    def __init__(
        self,
        store: JobStore,
        *,
        deliveries: DeliveryLog,
        audit: AuditSink,
        callbacks: CallbackSender,
        review: ReviewQueue | None = None,
        policies: Callable[[], Mapping[str, Policy]] = dict,
        weights_sha256: str | None = None,
        keep_inline_s: int = 7 * 24 * 3600,
        banks: BankService | None = None,
        evidence: ReviewEvidence | None = None,
        notices: NoticeStore | None = None,
        bank_guard: BankGuard | None = None,
        keep_block_evidence: bool = False,
        enforcement: Enforcement | None = None,
    ) -> None:
        self.store = store
        self.deliveries = deliveries
        self.audit = audit
        self.callbacks = callbacks
        self.review = review
        self.policies = policies
        self.weights_sha256 = weights_sha256
        self.keep_inline_s = keep_inline_s
        self.banks = banks
        self.evidence = evidence
        self.notices = notices
        self.bank_guard = bank_guard
        self.keep_block_evidence = keep_block_evidence
        self.enforcement = enforcement

    def finish_verdict(
        self,
        job: Job,
        verdict: Verdict,
        *,
        content_sha256: str | None,
        fingerprints: Mapping[str, Any] | None = None,
        shadows: Sequence[ShadowVerdict] = (),
    ) -> bool:
        """End ``job`` with ``verdict``; see :meth:`finish_many`."""
        return self.finish_many(
            [Decided(job, verdict, content_sha256, fingerprints, tuple(shadows))]
        )[0]

    def finish_many(self, decided: Sequence[Decided]) -> list[bool]:
        """End jobs with their verdicts: their audit records (durable together), then their
        results (one store round trip), then their side effects. Returns, per job, False when
        it had already ended (a no-op).

        Each :class:`Decided` may carry the image's ``fingerprints`` (``pdq`` and
        ``pdq_quality`` from the image signals: kept with the result and in the audit record)
        and the ``shadows``, the shadow policy versions' verdicts on the same image (recorded and
        measured, never acted on).

        Raises:
            AuditSinkUnavailable, QueueUnavailable: transient; the task retries.
        """
        if not decided:
            return []
        self.audit.write_many(
            [
                record_for_verdict(
                    job_id=d.job.id,
                    run=d.job.rescores,
                    verdict=d.verdict,
                    content_sha256=d.content_sha256,
                    content_ref=d.job.image.uri,
                    weights_sha256=self.weights_sha256,
                    dsa_category=self._dsa_category(d.verdict),
                    details=_details(d),
                    tenant=d.job.tenant,
                )
                for d in decided
            ]
        )
        results = [
            JobResult.ended(
                d.job,
                verdict=d.verdict,
                content_sha256=d.content_sha256,
                content_pdq=(d.fingerprints or {}).get("pdq"),
                content_pdq_quality=(d.fingerprints or {}).get("pdq_quality"),
            )
            for d in decided
        ]
        won = self.store.finish_many(results)
        m = metrics()
        now = datetime.now(UTC)
        for d, ended in zip(decided, won, strict=True):
            if ended:
                m.jobs.labels("verdict").inc()
                m.tenant_jobs.labels(d.job.tenant, "verdict").inc()
                m.decisions.labels(
                    d.verdict.policy_id or "none",
                    d.verdict.category_id or "none",
                    d.verdict.decision.value,
                ).inc()
                m.latency.labels("total").observe((now - d.job.created_at).total_seconds())
                for skipped in d.verdict.skipped:
                    m.signal_skips.labels(skipped.signal, skipped.reason).inc()
                for shadow in d.shadows:
                    m.shadow_decisions.labels(
                        shadow.policy_id,
                        str(shadow.version),
                        shadow.live_decision.value if shadow.live_decision else "none",
                        shadow.decision.value,
                    ).inc()
        self._effects(
            [
                (d.job, result)
                for d, result, ended in zip(decided, results, won, strict=True)
                if ended
            ],
            [d.job for d, ended in zip(decided, won, strict=True) if not ended],
            data={d.job.id: d.data for d in decided if d.data is not None},
            stills={d.job.id: (d.still_times, d.stills) for d in decided if d.stills},
        )
        if self.bank_guard is not None:  # best effort: never fails the jobs
            self.bank_guard.observe(
                [d.verdict for d, ended in zip(decided, won, strict=True) if ended]
            )
        return won

    def finish_error(self, job: Job, error: JobError, *, content_sha256: str | None = None) -> bool:
        """End ``job`` with an error result; see :meth:`finish_errors`."""
        return self.finish_errors([(job, error, content_sha256)])[0]

    def finish_errors(self, failed: Sequence[tuple[Job, JobError, str | None]]) -> list[bool]:
        """End jobs with error results, audited like verdicts (records first, then results,
        then side effects). Returns, per job, False when it had already ended.

        Raises:
            AuditSinkUnavailable, QueueUnavailable: transient; the task retries.
        """
        if not failed:
            return []
        self.audit.write_many(
            [
                record_for_error(
                    job_id=job.id,
                    run=job.rescores,
                    code=error.code,
                    message=error.message,
                    attempts=error.attempts,
                    transient=error.transient,
                    content_sha256=digest,
                    content_ref=job.image.uri,
                    tenant=job.tenant,
                )
                for job, error, digest in failed
            ]
        )
        results = [
            JobResult.ended(job, error=error, content_sha256=digest)
            for job, error, digest in failed
        ]
        won = self.store.finish_many(results)
        m = metrics()
        for (job, error, _), ended in zip(failed, won, strict=True):
            if ended:
                outcome = "dead_letter" if error.code == "poison_message" else "error"
                m.jobs.labels(outcome).inc()
                m.tenant_jobs.labels(job.tenant, outcome).inc()
                m.errors.labels(error.code).inc()
        self._effects(
            [
                (job, result)
                for (job, _, _), result, ended in zip(failed, results, won, strict=True)
                if ended
            ],
            [job for (job, _, _), ended in zip(failed, won, strict=True) if not ended],
        )
        return won

    def complete_effects(self, job: Job) -> None:
        """Run the side effects of an ended job unless they already ran (idempotent)."""
        self.complete_effects_many([job])

    def complete_effects_many(self, jobs: Sequence[Job]) -> None:
        """Run the side effects of ended jobs whose effects have not run yet (idempotent): a
        REVIEW verdict's review item, the ``job.finished`` callback; then mark them done."""
        self._effects([], jobs)

    def _effects(
        self,
        ended: Sequence[tuple[Job, JobResult]],
        others: Sequence[Job],
        *,
        data: Mapping[str, Payload] | None = None,
        stills: Mapping[str, tuple[tuple[float, ...], tuple[bytes, ...]]] | None = None,
    ) -> None:
        """Side effects of ``ended`` (their results just written by this call) and of
        ``others`` (ended earlier, results read back), unless they already ran. ``data``: the
        scored bytes by job id, where this call has them; ``stills``: a video's sampled frames
        (timestamps, JPEG stills) by job id."""
        jobs = [job for job, _ in ended] + list(others)
        done = self.deliveries.effects_done_many([job.id for job in jobs])
        known = {job.id: result for job, result in ended}
        todo = [job for job, ran in zip(jobs, done, strict=True) if not ran]
        unknown = [job.id for job in todo if job.id not in known]
        known.update(zip(unknown, self.store.get_results(unknown), strict=True))  # type: ignore[arg-type]
        ended_now = [
            (job, result)
            for job in todo
            if (result := known.get(job.id)) is not None and result.status.final
        ]
        # The batch's review items in one write, before any of their callbacks go out.
        items = [
            item
            for job, result in ended_now
            if self.review is not None
            and result.verdict is not None
            and (result.verdict.decision is Decision.REVIEW or job.reported is not None)
            and (
                item := self._review_item(
                    job, result, (data or {}).get(job.id), (stills or {}).get(job.id)
                )
            )
            is not None
        ]
        if items and self.review is not None:
            self.review.submit_many(items)
        finished = []
        for job, result in ended_now:
            if (
                job.reported is not None
                and result.error is not None
                and result.verdict is None
                and self.notices is not None
            ):  # scored again for a notice and failed again: no reviewer can decide it
                answer_unreviewable(
                    job,
                    result.error,
                    notices=self.notices,
                    callbacks=self.callbacks,
                    audit=self.audit,
                )
            if result.verdict is not None and result.verdict.decision is Decision.BLOCK:
                if self.keep_block_evidence:
                    self._keep_blocked(job, result, (data or {}).get(job.id))
                if self.enforcement is not None and job.uploader_id is not None:
                    verdict = result.verdict
                    self.enforcement.on_decision(
                        job,
                        decision=verdict.decision.value,
                        source="automated",
                        policy_id=verdict.policy_id,
                        category_id=verdict.category_id,
                        severity=verdict.severity.value if verdict.severity else None,
                        at=result.finished_at,
                    )
            if job.callback_url:
                self.callbacks.send(
                    job.public_id,
                    job.callback_url,
                    callback_body("job.finished", result),
                    tenant=job.tenant,
                )
            finished.append(job.id)
        self.deliveries.mark_effects_done_many(finished)

    def _review_item(
        self,
        job: Job,
        result: JobResult,
        data: Payload | None,
        stills: tuple[tuple[float, ...], tuple[bytes, ...]] | None = None,
    ) -> ReviewItem | None:
        """The review item of a REVIEW verdict (its bytes, and a video's stills, kept for the
        reviewer); None when it cannot be built (logged)."""
        assert result.verdict is not None
        verdict = result.verdict
        policy = self.policies().get(verdict.policy_id or "")
        if policy is None:
            log.error(
                "job %s: REVIEW verdict of unknown policy %r not queued", job.id, verdict.policy_id
            )
            return None
        if job.image.inline and self.evidence is None:
            # Inline bytes normally expire after queue.inline_ttl_s; reviewers need them longer.
            self.store.keep_inline(job.image.inline_key, self.keep_inline_s)
        evidence_key = self._keep_evidence(job, result, data)
        if stills is not None:
            self._keep_filmstrip(job, result, *stills)
        boost = (
            self.enforcement.boost(job.tenant, job.uploader_id)
            if self.enforcement is not None
            else 0.0
        )
        if job.reported is not None:  # scored again for a notice: reviewed whatever it decided
            boost = max(boost, NOTICE_BOOST[job.reported])
        try:
            item = item_from_verdict(
                job_id=job.id,
                image=job.image,
                verdict=verdict,
                policy=policy,
                content_sha256=result.content_sha256,
                content_pdq=result.content_pdq,
                content_pdq_quality=result.content_pdq_quality,
                evidence_key=evidence_key,
                uploader_id=job.uploader_id,
                priority_boost=boost,
                # scored again for a notice: its source; an allowed verdict names no category
                source=job.reported or DecisionSource.AUTOMATED,
                category_id=verdict.category_id or policy.categories[0].id,
            )
        except ReviewInvalidDecision as exc:
            log.error("job %s: cannot build its review item: %s", job.id, exc)
            return None
        return item

    def _keep_evidence(self, job: Job, result: JobResult, data: Payload | None) -> str | None:
        """Store the scored bytes for the reviewer; their key, or None when they cannot be
        kept (the item then says so and cannot be allowed)."""
        if self.evidence is None:
            return None
        if data is None or result.content_sha256 is None:
            log.warning("job %s: the scored bytes are not at hand; reviewed without them", job.id)
            return None
        try:
            return self.evidence.keep(
                tenant=job.tenant,
                review_id=review_id_for(job.id),
                content_sha256=result.content_sha256,
                data=data,
            )
        except (ModerationError, ValueError) as exc:
            log.error("job %s: the scored bytes could not be kept for review: %s", job.id, exc)
            return None

    def _keep_filmstrip(
        self, job: Job, result: JobResult, timestamps: tuple[float, ...], stills: tuple[bytes, ...]
    ) -> None:
        """Store a video's sampled frames for the reviewer (best effort: without them the item
        says so and can only be removed or escalated)."""
        if self.evidence is None or result.content_sha256 is None:
            return
        try:
            self.evidence.keep_filmstrip(
                tenant=job.tenant,
                review_id=review_id_for(job.id),
                content_sha256=result.content_sha256,
                timestamps=timestamps,
                stills=stills,
            )
        except (ModerationError, ValueError) as exc:
            log.error("job %s: the sampled frames could not be kept for review: %s", job.id, exc)

    def _keep_blocked(self, job: Job, result: JobResult, data: Payload | None) -> None:
        """Keep a blocked image's scored bytes for an appeal's reviewer, marked for deletion
        when the appeal window has passed (:meth:`ReviewEvidence.retire_key`)."""
        key = self._keep_evidence(job, result, data)
        if key is None or self.evidence is None:
            return
        try:
            self.evidence.retire_key(key, result.finished_at or datetime.now(UTC))
        except ModerationError as exc:
            log.error(
                "job %s: the blocked image's bytes were not marked to expire: %s", job.id, exc
            )

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
                    tenant=job.tenant,
                )
            )
        updated = self.store.set_human(decision.job_id, decision)
        if updated is None:
            raise JobNotFoundError(f"no job {decision.job_id!r} (unknown or expired)")
        if job.callback_url:
            self.callbacks.send(
                job.public_id,
                job.callback_url,
                callback_body("job.human_decision", updated),
                tenant=job.tenant,
            )
        if self.notices is not None:
            answer_notices(decision, job=job, notices=self.notices, callbacks=self.callbacks)
        if (
            self.enforcement is not None
            and job.uploader_id is not None
            and decision.decision is ReviewDecision.REMOVE
        ):
            verdict = result.verdict
            self.enforcement.on_decision(
                job,
                decision=decision.decision.value,
                source="human",
                policy_id=decision.policy_id,
                category_id=decision.category_id,
                severity=verdict.severity.value if verdict and verdict.severity else None,
                at=decision.decided_at,
            )
        if self.banks is not None:
            self.banks.add_reviewed(
                decision,
                pdq=result.content_pdq,
                quality=result.content_pdq_quality,
                content_sha256=result.content_sha256,
                content_ref=job.image.uri,
                audit=self.audit,
                frames=frames_of_verdict(video.frame_hashes)
                if (video := result.verdict.video if result.verdict else None) is not None
                else (),
            )
        return updated
