"""Notices from outside, in one place: a report against an item puts it into human review.

:class:`NoticeDesk` takes a user's or a trusted flagger's notice (EU DSA Art. 16, 22) against one
of the tenant's jobs and:

1. keeps it, collapsing duplicates (the same reporter, job and reason: one notice, ``reports``
   counted; :func:`~moderation.core.notices.notice_id_for`);
2. answers it at once when a reviewer already decided the item (the standing human decision);
3. otherwise puts the item into review, or raises it there: an item the model did not send to
   review is queued with the notice's source (``user_report``, ``trusted_flagger``) and the
   reported category (when the reason names one of the verdict policy's categories, else the
   deciding one); a trusted flagger's notice adds :data:`~moderation.core.review.NOTICE_BOOST`
   to the item's sort key, so it goes ahead of the model's own items.

When the item's human decision is made, :func:`answer_notices` (called by
:meth:`~moderation.pipeline.outcomes.Outcomes.record_human_decision`) answers every open notice on
it and sends each reporter's outcome callback (``notice.outcome``, signed like every callback) to
the notice's ``callback_url``, or the job's. Answering is idempotent: a notice is answered once.

A job that ended without a verdict (an error: the source could not be fetched or decoded then)
is **scored again** (:class:`Rescoring`): when its image can be fetched again (a URL or an object
store key, not bytes sent inline, which went with the job), the job is reopened marked
``reported`` and published again; the worker's new verdict, whatever it decides, puts the item
into review under the notice's source with the bytes kept for the reviewer, and the notice is
answered when it is decided. Inline bytes that are gone: 409 ``notice_source_gone`` (submit the
image again and report the new job). A re-run that ends in an error again keeps the job's error
result and answers its open notices ``not_reviewable`` (``outcome_reason``: the error's code;
:func:`answer_unreviewable`, audited per notice, each reporter called back); a later notice
tries again.

Limits: a job that has not ended yet is refused (409 ``notice_not_reviewable``): the reporter
reports again once it has a result. An item the model allowed was scored without keeping its
bytes, so its review shows no image and a reviewer can remove or escalate it, not allow it, as
for any item whose bytes are gone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from moderation.core.admission import Tenant
from moderation.core.audit import record_for_unreviewable_notice
from moderation.core.callbacks import notice_callback_body
from moderation.core.jobs import Job, JobError, is_job_id, public_id, scoped_id
from moderation.core.media import VIDEO
from moderation.core.notices import (
    NOT_REVIEWABLE,
    Notice,
    NoticeState,
    ReporterType,
    notice_id_for,
)
from moderation.core.policy import Policy
from moderation.core.review import (
    NOTICE_BOOST,
    HumanDecision,
    item_from_verdict,
    review_id_for,
)
from moderation.core.sources import DecisionSource
from moderation.exceptions import (
    ImageFetchError,
    JobNotFoundError,
    JobRejected,
    RateLimited,
    ReviewInvalidDecision,
    ReviewNotFound,
)
from moderation.ports import (
    AuditSink,
    BlobStore,
    CallbackSender,
    DeliveryLog,
    JobRescorer,
    JobStore,
    NoticeStore,
    RateLimiter,
    ReviewQueue,
    TaskPublisher,
)

__all__ = ["Filed", "NoticeDesk", "Rescoring", "answer_notices", "answer_unreviewable"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Filed:
    """What became of a notice."""

    notice: Notice
    #: False when the same report was already there (it collapsed into it).
    new: bool


def _category_named(policy: Policy, reason: str) -> str | None:
    """The policy category a notice's reason names (``nudity`` or ``policy/nudity``), if any."""
    word = reason.strip().lower()
    if "/" in word:
        pid, _, word = word.partition("/")
        if pid != policy.id:
            return None
    return next((c.id for c in policy.categories if c.id == word), None)


@dataclass(frozen=True, slots=True)
class Rescoring:
    """Run an ended job again for a notice: reopen it marked ``reported``, forget its delivery
    count and side-effect mark, publish it on its lane. A crash between the reopen and the
    publish leaves it pending: the lost-message sweep publishes it."""

    jobs: JobRescorer
    deliveries: DeliveryLog
    publisher: TaskPublisher

    def __call__(self, job: Job, source: DecisionSource) -> bool:
        """False when the job is gone (expired between the read and now).

        Raises:
            QueueUnavailable, DatabaseUnavailable: transient.
        """
        again = self.jobs.rescore(job.id, reported=source)
        if again is None:
            return False
        self.deliveries.reset(job.id)
        self.publisher.publish([job.id], high=again.priority == "high", video=again.media == VIDEO)
        log.info("job %s: scored again for a %s notice", job.id, source.value)
        return True


class NoticeDesk:
    """The notice use case.

    Args:
        store: job records and results (the reported job must be the tenant's).
        notices: where notices are kept.
        review: the human-review queue.
        callbacks: schedules the reporters' outcome callbacks.
        policies: the policies in service by id (the reviewed category's policy text).
        check_callback_url: refuses a callback URL the deployment would not call.
        limiter: admits a tenant's notices at its job rate (``rate_per_s``, ``burst``), in a
            bucket of their own (``<tenant>:notices``), so reports cannot flood the shared
            review queue nor spend the tenant's job quota (None: no limit).
    """

    def __init__(
        self,
        *,
        store: JobStore,
        notices: NoticeStore,
        review: ReviewQueue,
        callbacks: CallbackSender,
        policies: Callable[[], Mapping[str, Policy]],
        check_callback_url: Callable[[str], None] | None = None,
        limiter: RateLimiter | None = None,
        rescoring: Rescoring | None = None,
        blobs: BlobStore | None = None,
    ) -> None:
        self.rescoring = rescoring
        #: Where spilled and streamed bytes are kept (``spill:`` references): a job to score
        #: again needs them still there.
        self.blobs = blobs
        self.store = store
        self.notices = notices
        self.review = review
        self.callbacks = callbacks
        self.policies = policies
        self.check_callback_url = check_callback_url
        self.limiter = limiter

    def file(
        self,
        *,
        tenant: Tenant,
        job_id: str,
        reporter_type: ReporterType,
        reporter: str,
        reason: str,
        text: str = "",
        callback_url: str | None = None,
    ) -> Filed:
        """Take a notice against one of ``tenant``'s jobs (its own id).

        Raises:
            JobNotFoundError: no such job of this tenant (another tenant's is not found either).
            JobRejected: 400 ``bad_callback_url``; 403 ``trusted_flagger_not_allowed`` (a
                trusted flagger's notice from a tenant not allowed to file them:
                ``tenants.<name>.trusted_flagger_notices``); 409 ``notice_not_reviewable`` (the
                job has not ended, or ended without a verdict where nothing can score it
                again); 409 ``notice_source_gone`` (it ended without a verdict and its bytes,
                sent inline, are gone).
            RateLimited: 429 ``rate_limited``, the tenant reports faster than its job rate.
            QueueUnavailable, DatabaseUnavailable: transient.
        """
        if callback_url is not None and self.check_callback_url is not None:
            try:
                self.check_callback_url(callback_url)
            except ImageFetchError as exc:
                raise JobRejected(
                    f"callback_url: {exc}", status=400, code="bad_callback_url"
                ) from exc
        if reporter_type is ReporterType.TRUSTED_FLAGGER and not tenant.trusted_flagger_notices:
            raise JobRejected(
                "this API key may not file trusted flaggers' notices (they are reviewed ahead "
                "of every tenant's items); file it as a user's, or ask the operator to set "
                f"tenants.{tenant.name}.trusted_flagger_notices",
                status=403,
                code="trusted_flagger_not_allowed",
            )
        self._admit(tenant)
        scoped = scoped_id(tenant.name, job_id) if is_job_id(job_id) else None
        job = self.store.get_job(scoped) if scoped else None
        result = self.store.get_result(scoped) if scoped else None
        if job is None or result is None or scoped is None:
            raise JobNotFoundError(f"no job {job_id!r} (unknown or expired)")
        # Ended without a verdict: scored again (below); being scored again: its verdict goes
        # to review whatever it is, so a notice now is kept and answered with it.
        rescore = result.human is None and result.status.final and result.verdict is None
        again = job.reported is not None and not result.status.final
        if result.human is None and not result.status.final and not again:
            raise JobRejected(
                f"job {job_id!r} has no verdict to review yet; report it again once it ended",
                status=409,
                code="notice_not_reviewable",
            )
        if rescore:
            self._check_rescorable(job)
        notice, new = self.notices.add(
            Notice(
                notice_id=notice_id_for(scoped, reporter_type, reporter, reason),
                tenant=tenant.name,
                job_id=scoped,
                reporter_type=reporter_type,
                reporter=reporter,
                reason=reason.strip(),
                text=text,
                callback_url=callback_url,
            )
        )
        if not new:
            return Filed(notice=notice, new=False)
        if result.human is not None:  # a reviewer already decided it: that is the answer
            answer_notices(result.human, job=job, notices=self.notices, callbacks=self.callbacks)
            answered = self.notices.get(tenant.name, notice.notice_id)
            return Filed(notice=answered or notice, new=True)
        if rescore or again:
            if rescore and self.rescoring is not None and not self.rescoring(job, notice.source):
                raise JobNotFoundError(f"no job {job_id!r} (unknown or expired)")
            review_id = review_id_for(job.id)  # the item the new verdict puts into review
        else:
            review_id = self._into_review(job, notice)
        self.notices.set_review(notice.notice_id, review_id)
        return Filed(notice=notice.model_copy(update={"review_id": review_id}), new=True)

    def _check_rescorable(self, job: Job) -> None:
        """Raises JobRejected (409) when the job that ended without a verdict cannot be scored
        again: its inline bytes went with it, or this deployment cannot re-run jobs."""
        if job.image.inline:
            raise JobRejected(
                f"job {job.public_id!r} ended without a verdict and its bytes (sent inline) are "
                "gone: submit the image again and report the new job",
                status=409,
                code="notice_source_gone",
            )
        if (
            job.image.spilled
            and self.blobs is not None
            and not self.blobs.exists(job.image.uri.partition(":")[2])
        ):
            raise JobRejected(
                f"job {job.public_id!r} ended without a verdict and its uploaded bytes are no "
                "longer kept: submit the image again and report the new job",
                status=409,
                code="notice_source_gone",
            )
        if self.rescoring is None:
            raise JobRejected(
                f"job {job.public_id!r} ended without a verdict and cannot be scored again here "
                "(its records need the database)",
                status=409,
                code="notice_not_reviewable",
            )

    def _admit(self, tenant: Tenant) -> None:
        if self.limiter is None:
            return
        lane = Tenant(
            name=f"{tenant.name}:notices",
            rate_per_s=tenant.rate_per_s,
            burst=tenant.burst,
            high_per_minute=0,
        )
        admission = self.limiter.admit(lane, 1)
        if not admission.granted:
            raise RateLimited(
                f"tenant {tenant.name} files more than {tenant.rate_per_s:g} notices/s "
                f"(bursts of {tenant.burst}); retry in {admission.retry_after_s:.1f} s",
                code="rate_limited",
                retry_after_s=admission.retry_after_s,
            )

    def _into_review(self, job: Job, notice: Notice) -> str:
        """Queue the item for review, or raise it there; its review id."""
        review_id = review_id_for(job.id)
        boost = NOTICE_BOOST[notice.source]
        try:
            existing = self.review.item(review_id)
        except ReviewNotFound:
            existing = None
        if existing is not None:
            if boost > existing.priority_boost:
                self.review.submit(existing.model_copy(update={"priority_boost": boost}))
            return review_id
        result = self.store.get_result(job.id)
        verdict = result.verdict if result is not None else None
        policy = self.policies().get(verdict.policy_id or "") if verdict is not None else None
        if verdict is None or policy is None or result is None:
            raise JobRejected(
                f"job {job.public_id!r}: its policy is no longer in service",
                status=409,
                code="notice_not_reviewable",
            )
        try:
            item = item_from_verdict(
                job_id=job.id,
                image=job.image,
                verdict=verdict,
                policy=policy,
                content_sha256=result.content_sha256,
                content_pdq=result.content_pdq,
                content_pdq_quality=result.content_pdq_quality,
                source=notice.source,
                category_id=_category_named(policy, notice.reason)
                or verdict.category_id
                or policy.categories[0].id,
                priority_boost=boost,
            )
        except ReviewInvalidDecision as exc:
            raise JobRejected(str(exc), status=409, code="notice_not_reviewable") from exc
        self.review.submit(item)
        return review_id

    def get(self, *, tenant: Tenant, notice_id: str) -> Notice:
        """One of ``tenant``'s notices.

        Raises:
            JobNotFoundError: no such notice of this tenant.
        """
        notice = self.notices.get(tenant.name, notice_id)
        if notice is None:
            raise JobNotFoundError(f"no notice {notice_id!r}")
        return notice


def answer_notices(
    decision: HumanDecision,
    *,
    job: Job,
    notices: NoticeStore,
    callbacks: CallbackSender,
    at: datetime | None = None,
) -> list[Notice]:
    """Answer every open notice on ``decision``'s job with it and schedule each reporter's
    ``notice.outcome`` callback (to the notice's ``callback_url``, else the job's). Idempotent:
    an answered notice is not answered (nor called back) again. Returns the notices answered.

    Raises:
        QueueUnavailable, DatabaseUnavailable: transient (a retry answers the rest; a notice
            whose callback was scheduled but not marked answered is called back twice).
    """
    return _answer(
        job,
        notices.open_for_job(decision.job_id),
        outcome=decision.decision.value,
        reason=decision.reason_code,
        notices=notices,
        callbacks=callbacks,
        at=at,
    )


def answer_unreviewable(
    job: Job,
    error: JobError,
    *,
    notices: NoticeStore,
    callbacks: CallbackSender,
    audit: AuditSink,
    at: datetime | None = None,
) -> list[Notice]:
    """Answer the open notices on ``job``, scored again for them and ended in ``error`` again,
    with :data:`~moderation.core.notices.NOT_REVIEWABLE` (``outcome_reason``: the error's code):
    an audit record per notice first, then each reporter's ``notice.outcome`` callback, as
    :func:`answer_notices`. Idempotent. Returns the notices answered.

    Raises:
        AuditSinkUnavailable, QueueUnavailable, DatabaseUnavailable: transient.
    """
    open_ = notices.open_for_job(job.id)
    if open_:
        audit.write_many(
            [
                record_for_unreviewable_notice(
                    notice_id=notice.notice_id,
                    job_id=job.id,
                    source=notice.source,
                    code=error.code,
                    message=error.message,
                    content_ref=job.image.uri,
                    tenant=job.tenant,
                )
                for notice in open_
            ]
        )
    return _answer(
        job,
        open_,
        outcome=NOT_REVIEWABLE,
        reason=error.code,
        notices=notices,
        callbacks=callbacks,
        at=at,
    )


def _answer(
    job: Job,
    open_: Sequence[Notice],
    *,
    outcome: str,
    reason: str | None,
    notices: NoticeStore,
    callbacks: CallbackSender,
    at: datetime | None,
) -> list[Notice]:
    answered: list[Notice] = []
    when = at or datetime.now(UTC)
    for notice in open_:
        final = notice.model_copy(
            update={
                "state": NoticeState.ANSWERED,
                "outcome": outcome,
                "outcome_reason": reason,
                "answered_at": when,
            }
        )
        # The callback is scheduled before the notice is marked answered: a crash in between
        # sends it again on the retry (at least once, as every callback), never not at all.
        url = notice.callback_url or job.callback_url
        if url:
            callbacks.send(public_id(job.id), url, notice_callback_body(final), tenant=job.tenant)
        done = notices.answer(notice.notice_id, outcome=outcome, reason=reason, at=when)
        if done is not None:
            answered.append(done)
    if answered:
        log.info("job %s: %d notice(s) answered (%s)", job.id, len(answered), outcome)
    return answered
