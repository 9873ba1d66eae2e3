"""Composition root for the human-review queue: connects the pipeline (job store, outcomes,
callbacks, audit) with the review queue and the reviewers' pages. Only entry points (the API
app, the Celery worker) import this module."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from moderation.adapters.job_store import JobStore
from moderation.adapters.redis_review import RedisReviewerStore, RedisReviewQueue, connect
from moderation.exceptions import ImageFetchError
from moderation.jobs import ReviewRequest
from moderation.outcomes import CallbackEnqueuer, Outcomes
from moderation.policy import Policy
from moderation.ports import AuditSink, ImageSource
from moderation.review.model import FinalReviewDecision, item_from_verdict
from moderation.settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["ReviewQueueSink", "mount_review", "open_review_queue"]

log = logging.getLogger(__name__)

INLINE_PREFIX = "inline:"
REMOTE_SCHEMES = ("s3://", "http://", "https://")


def open_review_queue(settings: Settings) -> RedisReviewQueue:
    """The Redis review queue at ``settings.redis_url``."""
    if not settings.redis_url:
        raise ValueError("the review queue needs settings.redis_url")
    review = settings.review
    return RedisReviewQueue(
        connect(settings.redis_url),
        lease_s=review.lease_s,
        age_doubling_s=review.age_doubling_s,
        prefix=review.key_prefix,
    )


class ReviewQueueSink:
    """The pipeline's :class:`~moderation.ports.ReviewSink`: REVIEW verdicts become review items
    (with the deciding category's policy text). Idempotent by job id."""

    def __init__(
        self,
        queue: RedisReviewQueue,
        policies: Callable[[], Mapping[str, Policy]],
        *,
        store: JobStore | None = None,
        keep_inline_s: int = 7 * 24 * 3600,
    ) -> None:
        self.queue = queue
        self.policies = policies
        self.store = store
        self.keep_inline_s = keep_inline_s

    def submit(self, item: ReviewRequest) -> None:
        policy_id = item.verdict.policy_id
        policy = self.policies().get(policy_id or "")
        if policy is None:
            log.error("job %s: REVIEW verdict of unknown policy %r not queued", item.job_id,
                      policy_id)
            return
        inline = item.image_ref.startswith(INLINE_PREFIX)
        if inline and self.store is not None:
            # Inline bytes normally expire after queue.inline_ttl_s; reviewers need them longer.
            self.store.keep_inline(item.job_id, self.keep_inline_s)
        self.queue.submit(item_from_verdict(
            job_id=item.job_id, image_ref=None if inline else item.image_ref,
            verdict=item.verdict, policy=policy,
        ))


def mount_review(
    app: FastAPI,
    settings: Settings,
    store: JobStore,
    *,
    audit: AuditSink | None,
    enqueue_callback: CallbackEnqueuer | None,
    source: ImageSource | None = None,
) -> RedisReviewQueue:
    """Mount the reviewers' pages on ``app``; final decisions update the job (result, callback,
    audit) through :meth:`Outcomes.record_human_decision`."""
    from moderation.web import build_review_router

    assert settings.redis_url is not None  # checked by open_review_queue
    queue = open_review_queue(settings)
    users = RedisReviewerStore(connect(settings.redis_url), prefix=settings.review.key_prefix)
    outcomes = Outcomes(store, audit=audit, enqueue_callback=enqueue_callback)
    if source is None:
        from moderation.adapters.fetch import ImageFetcher

        source = ImageFetcher(settings)
    fetcher = source

    def load_image(ref_or_job_id: str) -> bytes:
        if ref_or_job_id.startswith(REMOTE_SCHEMES):
            return fetcher.fetch(ref_or_job_id)
        data = store.inline_bytes(ref_or_job_id)
        if data is None:
            raise ImageFetchError(f"the inline image of job {ref_or_job_id} has expired")
        return data

    def on_final(final: FinalReviewDecision) -> None:
        outcomes.record_human_decision(
            final.job_id, decision=final.decision.value, reason_code=final.reason_code,
            reviewers=final.reviewers, review_id=final.review_id,
        )

    app.include_router(build_review_router(
        settings, queue, users, on_final=on_final, image_loader=load_image,
    ))
    return queue
