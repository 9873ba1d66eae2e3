"""Processing one delivery of a job: the use case a worker's task calls.

::

    job id ─► job record ─► already ended? ─► side effects only (a redelivery)
                       └─► count the delivery ─► dead-letter a poison message
                       └─► fetch (image source by scheme) ─► prepare (decode, preprocess, signal
                           features) ─► micro-batcher (one forward pass for many jobs) ─► decide
                           ─► shadow policy versions (same frames; recorded, never acted on)
                           ─► outcomes (audit, result, review, callback)
                           ─► embedding history (``embeddings.store``; best effort)

Transient errors (fetch timeouts, 5xx, Redis or S3 hiccups) raise :class:`RetryLater` while
retries are left, then end the job as an error result; permanent ones (corrupt image, 404, refused
URL, unknown policy) end it at once. A job whose deliveries keep killing the worker is
dead-lettered after ``queue.max_deliveries``. Every ending is audited.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np
from numpy.typing import NDArray

from moderation.core.decision import Verdict
from moderation.core.jobs import Job, JobError
from moderation.core.shadow import ShadowVerdict
from moderation.exceptions import PermanentError, TransientError
from moderation.metrics import metrics
from moderation.pipeline.batching import MicroBatcher
from moderation.pipeline.history import EmbeddingHistory
from moderation.pipeline.moderator import Moderator
from moderation.pipeline.outcomes import Outcomes
from moderation.pipeline.sources import ImageSources
from moderation.ports import JobStore
from moderation.settings import QueueSettings

__all__ = ["Processed", "Processor", "RetryLater"]

log = logging.getLogger(__name__)
T = TypeVar("T")

Outcome = Literal["verdict", "error", "duplicate", "missing", "dead_letter"]


class RetryLater(Exception):
    """Raised by :meth:`Processor.process` when the delivery should be retried after
    ``countdown`` seconds (a transient error with retries left)."""

    def __init__(self, error: TransientError, countdown: float) -> None:
        super().__init__(str(error))
        self.error = error
        self.countdown = countdown


@dataclass(frozen=True, slots=True)
class Processed:
    job_id: str
    outcome: Outcome


@dataclass(frozen=True, slots=True)
class _Decided:
    verdict: Verdict
    content_sha256: str
    embeddings: NDArray[np.float32]
    shadows: list[ShadowVerdict]


class Processor:
    """Processes job deliveries. Thread-safe: many task threads call :meth:`process` at once
    and meet in the micro-batcher.
    """

    def __init__(
        self,
        *,
        store: JobStore,
        sources: ImageSources,
        moderator: Moderator,
        batcher: MicroBatcher[Any, NDArray[np.float32]],
        outcomes: Outcomes,
        settings: QueueSettings,
        history: EmbeddingHistory | None = None,
    ) -> None:
        self.store = store
        self.sources = sources
        self.moderator = moderator
        self.batcher = batcher
        self.outcomes = outcomes
        self.settings = settings
        self.history = history

    def backoff(self, retries: int) -> float:
        q = self.settings
        return float(min(q.retry_backoff_max_s, q.retry_backoff_s * (2**retries)))

    def process(self, job_id: str, *, retries: int = 0) -> Processed:
        """Process one delivery of job ``job_id``.

        Args:
            job_id: the job (and message) id.
            retries: how many transient-error retries preceded this delivery.

        Returns:
            What happened; a finished job's second delivery is a no-op ("duplicate").

        Raises:
            RetryLater: a transient error with retries left.
            QueueUnavailable, AuditSinkUnavailable: the job cannot even be ended now (the
                message stays unacknowledged and comes back).
        """
        job = self.store.get_job(job_id)
        if job is None:
            log.warning("job %s has no record (expired or never created); dropping", job_id)
            self.store.forget_pending(job_id)
            return Processed(job_id, "missing")
        current = self.store.get_result(job_id)
        if current is not None and current.status.final:
            self.outcomes.complete_effects(job)
            return Processed(job_id, "duplicate")
        deliveries = self.store.count_delivery(job_id)
        crashes = deliveries - 1 - retries
        if crashes >= self.settings.max_deliveries:
            reason = (
                f"dead-lettered: {deliveries} deliveries, {crashes} without a result "
                "(the worker died processing it)"
            )
            self.store.dead_letter(job_id, reason=reason, deliveries=deliveries)
            self.outcomes.finish_error(
                job, JobError(code="poison_message", message=reason, attempts=deliveries)
            )
            return Processed(job_id, "dead_letter")
        m = metrics()
        m.latency.labels("queue_wait").observe(max(0.0, time.time() - job.created_at.timestamp()))
        try:
            decided = self._decide(job)
        except TransientError as exc:
            m.errors.labels(exc.code).inc()
            if retries < self.settings.max_retries:
                m.retries.labels(exc.code).inc()
                raise RetryLater(exc, self.backoff(retries)) from exc
            self.outcomes.finish_error(
                job,
                JobError(
                    code=exc.code,
                    transient=True,
                    attempts=retries + 1,
                    message=f"{exc} (gave up after {retries + 1} attempts)",
                ),
            )
            return Processed(job_id, "error")
        except PermanentError as exc:
            self.outcomes.finish_error(
                job, JobError(code=exc.code, message=str(exc), attempts=retries + 1)
            )
            return Processed(job_id, "error")
        except Exception as exc:  # a bug must not make the job vanish: end it, loudly
            log.exception("job %s: unexpected error", job_id)
            m.errors.labels("internal_error").inc()
            self.outcomes.finish_error(
                job,
                JobError(
                    code="internal_error",
                    message=f"internal error: {type(exc).__name__}: {exc}",
                    attempts=retries + 1,
                ),
            )
            return Processed(job_id, "error")
        # Errors from here on (Redis, the audit log, the broker) are not the job's: they
        # propagate, the delivery is retried and the job ends as decided, exactly once.
        won = self.outcomes.finish_verdict(
            job,
            decided.verdict,
            content_sha256=decided.content_sha256,
            shadows=decided.shadows,
        )
        if won and self.history is not None:
            self.history.record(
                job, decided.verdict, decided.embeddings, content_sha256=decided.content_sha256
            )
        return Processed(job_id, "verdict" if won else "duplicate")

    @staticmethod
    def _timed(stage: str, fn: Callable[[], T]) -> T:
        started = time.perf_counter()
        try:
            return fn()
        finally:
            metrics().latency.labels(stage).observe(time.perf_counter() - started)

    def _decide(self, job: Job) -> _Decided:
        """The job's verdict, content hash, frame embeddings and shadow verdicts (fetch,
        prepare, one batched forward pass, decide, shadow)."""
        compiled = self.moderator.policies.current  # one policy set for the whole job
        compiled.ids_for(job.policies)  # unknown policy: permanent error before any work
        data = self._timed("fetch", lambda: self.sources.fetch(job.image))
        image = self._timed("decode", lambda: self.moderator.prepare(data))
        futures = [self.batcher.submit(x) for x in image.inputs]
        embeddings = np.stack([f.result() for f in futures])
        verdict = self.moderator.decide([image], embeddings, job.policies, compiled=compiled)[0]
        shadows = self.moderator.shadow(
            [image], embeddings, [verdict], job.policies, compiled=compiled
        )[0]
        return _Decided(verdict, image.content_sha256, embeddings, shadows)
