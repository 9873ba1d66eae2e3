"""What happens after a job is decided: result, audit record, review queue, callback, metrics.

Order, chosen so that a crash at any point loses nothing and duplicates nothing visible:

1. the audit record is written first (its id is derived from the job id, so a redelivered task
   rewrites the same record, deduplicated on read);
2. the final result is written with compare-and-set semantics: only the first writer ends the
   job (a second delivery of a finished job is a no-op);
3. side effects (REVIEW verdicts to the review queue, the signed callback) run, then are marked
   done; a redelivery that finds the result written but the effects not marked done re-runs
   them (review submission is idempotent by job id; callbacks carry the job id so receivers can
   drop a duplicate).

Callbacks: ``POST callback_url`` with the JSON body ``{"event": ..., "result": JobResult}`` and
headers ``X-Moderation-Event``, ``X-Moderation-Job-Id`` and ``X-Moderation-Signature:
t=<unix time>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`` (see :func:`sign`, :func:`verify`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Literal, Protocol

from moderation.audit import record_for_review, record_for_verdict
from moderation.decision import Decision, Verdict
from moderation.exceptions import JobNotFoundError
from moderation.jobs import HumanDecision, Job, JobError, JobResult, JobStatus, ReviewRequest
from moderation.metrics import metrics
from moderation.ports import AuditSink, ReviewSink

__all__ = ["CallbackEnqueuer", "Outcomes", "ResultStore", "callback_body", "sign", "verify"]

#: ``(job_id, url, body)`` -> schedules delivery (a Celery task in the workers).
CallbackEnqueuer = Callable[[str, str, bytes], None]
Event = Literal["job.finished", "job.human_decision"]
SIGNATURE_HEADER = "X-Moderation-Signature"


class ResultStore(Protocol):
    def get_job(self, job_id: str) -> Job | None: ...

    def get_result(self, job_id: str) -> JobResult | None: ...

    def finish(self, result: JobResult) -> bool: ...

    def set_human(self, job_id: str, human: HumanDecision) -> JobResult | None: ...

    def effects_done(self, job_id: str) -> bool: ...

    def mark_effects_done(self, job_id: str) -> None: ...


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    """The ``X-Moderation-Signature`` header value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: bytes, body: bytes, header: str, *, tolerance_s: int = 300,
           now: float | None = None) -> bool:
    """Check a callback signature (for receivers): right MAC and a fresh timestamp."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
        mac = parts["v1"]
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    expected = sign(secret, body, timestamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected, mac)


def callback_body(event: Event, result: JobResult) -> bytes:
    return json.dumps(
        {"event": event, "result": result.model_dump(mode="json")}, separators=(",", ":")
    ).encode()


class Outcomes:
    """Ends jobs and dispatches their side effects. Thread-safe if its collaborators are."""

    def __init__(
        self,
        store: ResultStore,
        *,
        audit: AuditSink | None = None,
        review: ReviewSink | None = None,
        enqueue_callback: CallbackEnqueuer | None = None,
        weights_sha256: str | None = None,
    ) -> None:
        self.store = store
        self.audit = audit
        self.review = review
        self.enqueue_callback = enqueue_callback
        self.weights_sha256 = weights_sha256

    def finish_verdict(self, job: Job, verdict: Verdict, *, content_sha256: str | None) -> bool:
        """End ``job`` with ``verdict``. Returns False when it had already ended (no-op).

        Raises:
            AuditSinkUnavailable, QueueUnavailable: transient; the task retries.
        """
        if self.audit is not None:
            self.audit.write(record_for_verdict(
                job_id=job.id, verdict=verdict, content_sha256=content_sha256,
                content_ref=job.image_ref, weights_sha256=self.weights_sha256,
            ))
        result = JobResult(
            job_id=job.id, status=JobStatus.DONE, verdict=verdict, content_sha256=content_sha256,
            metadata=job.metadata, created_at=job.created_at, finished_at=datetime.now(UTC),
        )
        won = self.store.finish(result)
        if won:
            m = metrics()
            m.jobs.labels("verdict").inc()
            m.decisions.labels(verdict.policy_id or "none", verdict.category_id or "none",
                               verdict.decision.value).inc()
            m.latency.labels("total").observe(
                (result.finished_at - job.created_at).total_seconds()  # type: ignore[operator]
            )
        self.complete_effects(job)
        return won

    def finish_error(self, job: Job, error: JobError) -> bool:
        """End ``job`` with an error result. Returns False when it had already ended.

        Raises:
            QueueUnavailable: transient; the task retries.
        """
        result = JobResult(
            job_id=job.id, status=JobStatus.ERROR, error=error, metadata=job.metadata,
            created_at=job.created_at, finished_at=datetime.now(UTC),
        )
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
        if (self.review is not None and result.verdict is not None
                and result.verdict.decision is Decision.REVIEW):
            self.review.submit(ReviewRequest(
                job_id=job.id, image_ref=job.image_ref, content_sha256=result.content_sha256,
                verdict=result.verdict, metadata=job.metadata,
            ))
        if job.callback_url and self.enqueue_callback is not None:
            self.enqueue_callback(job.id, job.callback_url, callback_body("job.finished", result))
        self.store.mark_effects_done(job.id)

    def record_human_decision(
        self,
        job_id: str,
        *,
        decision: Literal["allow", "remove", "escalate"],
        reason_code: str | None,
        reviewers: Sequence[str],
        review_id: str,
    ) -> JobResult:
        """Attach a reviewer's decision to a job: audit record, updated result, callback.

        Args:
            job_id: the job whose REVIEW verdict was decided.
            decision: allow / remove / escalate.
            reason_code: the reviewer's reason code.
            reviewers: pseudonymous reviewer ids (never names or emails), first reviewer first;
                two when a critical removal needed a second, independent reviewer.
            review_id: the review item's id (one audit record per review and reviewer).

        Returns:
            The updated job result.

        Raises:
            JobNotFoundError: no such job (or its result expired).
            AuditSinkUnavailable, QueueUnavailable: transient.
        """
        job = self.store.get_job(job_id)
        result = self.store.get_result(job_id)
        if job is None or result is None:
            raise JobNotFoundError(f"no job {job_id!r} (unknown or expired)")
        verdict = result.verdict
        if not reviewers:
            raise ValueError("a human decision needs at least one reviewer")
        if self.audit is not None:
            policy = next((p for p in verdict.policies if p.id == verdict.policy_id), None) \
                if verdict else None
            for position, reviewer in enumerate(reviewers, start=1):
                self.audit.write(record_for_review(
                    job_id=job_id, review_id=review_id, decision=decision,
                    reviewer_pseudonym=reviewer, content_sha256=result.content_sha256,
                    content_ref=job.image_ref, policy_id=verdict.policy_id if verdict else None,
                    policy_version=policy.version if policy else None,
                    category_id=verdict.category_id if verdict else None,
                    reason_code=reason_code,
                    scores=dict(verdict.scores) if verdict else None,
                    details={
                        "automated_decision": verdict.decision.value if verdict else None,
                        "reviewer_position": position,
                        "reviewers": len(reviewers),
                    },
                ))
        human = HumanDecision(decision=decision, reason_code=reason_code,
                              reviewer=",".join(reviewers), review_id=review_id)
        updated = self.store.set_human(job_id, human)
        if updated is None:
            raise JobNotFoundError(f"no job {job_id!r} (unknown or expired)")
        if job.callback_url and self.enqueue_callback is not None:
            self.enqueue_callback(job_id, job.callback_url,
                                  callback_body("job.human_decision", updated))
        return updated
