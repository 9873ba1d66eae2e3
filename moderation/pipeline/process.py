"""Processing one delivery of a batch of jobs: the use case a worker's task calls.

::

    job ids ─► job records + results (one round trip) ─► already ended? side effects only
                      └─► count the deliveries ─► dead-letter poison messages
                      └─► fetch (inline bytes in one round trip, remote images concurrently)
                          ─► prepare on the decode threads (safe decode, crop, signal features)
                          ─► micro-batcher (one forward pass, shared with other messages)
                          ─► decide all at once ─► shadow policy versions (same frames;
                             recorded, never acted on)
                          ─► outcomes for all at once (audit records in one fsync, results in
                             one round trip, review, callbacks)
                          ─► embedding history (``embeddings.store``; best effort, one round trip)

Per-job guarantees hold inside a batch: each job ends exactly once (compare-and-set results), a
job's errors are its own (a corrupt image fails that job, not its neighbours), and transient
errors are retried per job (:attr:`Processed.retry_in`: the task republishes those ids with a
countdown). A redelivered batch whose jobs were started before (the worker died) is split into
one message per job, so a poison image can only take itself down; it is dead-lettered after
``queue.max_deliveries`` such crashes. Crashes are counted, not messages: the start of a batch
that is split is taken back, so one crash shows as two deliveries of a job, never three. Every
ending is audited.

A worker that consumes only photo lanes (``videos_elsewhere``) hands a job whose download turns
out to be a video to the video lanes (outcome ``video``: the task publishes it there) instead of
decoding it, so that the photos behind it do not wait; that start is taken back like a split's.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np
from numpy.typing import NDArray

from moderation.core.decision import Decision
from moderation.core.fetch_errors import FETCH_FAILED, tenant_fetch_error
from moderation.core.jobs import Job, JobError, tenant_of
from moderation.core.media import VIDEO, media_of
from moderation.core.payload import MediaFile, Payload
from moderation.exceptions import (
    ImageFetchError,
    ImageFetchTransient,
    ModerationError,
    PermanentError,
    TransientError,
)
from moderation.metrics import metrics
from moderation.pipeline.batching import MicroBatcher
from moderation.pipeline.history import EmbeddingHistory
from moderation.pipeline.moderator import Moderator, Preparation, PreparedImage
from moderation.pipeline.outcomes import Decided, Outcomes
from moderation.pipeline.sources import ImageSources, payload_head, release
from moderation.pipeline.tenant_gate import TenantGate
from moderation.ports import DeliveryLog, JobStore
from moderation.settings import QueueSettings

__all__ = ["Processed", "Processor", "RetryLater"]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Prepares many images at once elsewhere (the worker's prepare processes): results in order, an
#: image's error as its result.
PrepareMany = Callable[[Preparation, Sequence[Payload]], Sequence[PreparedImage | Exception]]

Outcome = Literal[
    "verdict", "error", "duplicate", "missing", "dead_letter", "retry", "split", "video"
]
#: Outcomes after which a job needs nothing more from the delivery log.
_ENDED: frozenset[Outcome] = frozenset({"verdict", "error", "duplicate", "dead_letter"})


class RetryLater(Exception):
    """Raised by :meth:`Processor.process` when the job should be retried after ``countdown``
    seconds (a transient error with retries left)."""

    def __init__(self, error: TransientError, countdown: float) -> None:
        super().__init__(str(error))
        self.error = error
        self.countdown = countdown


@dataclass(frozen=True, slots=True)
class Processed:
    job_id: str
    outcome: Outcome
    #: For ``retry``: publish the job again after this many seconds.
    retry_in: float | None = None
    error: TransientError | None = None
    #: Publish it again (``retry``, ``split``, ``video``) on the video lanes.
    video: bool = False


class Processor:
    """Processes job deliveries. Thread-safe: several messages are processed at once and meet in
    the micro-batcher."""

    def __init__(
        self,
        *,
        store: JobStore,
        deliveries: DeliveryLog,
        sources: ImageSources,
        moderator: Moderator,
        batcher: MicroBatcher[Any, Any],
        outcomes: Outcomes,
        settings: QueueSettings,
        pool: Executor | None = None,
        history: EmbeddingHistory | None = None,
        prepare_many: PrepareMany | None = None,
        gate: TenantGate | None = None,
        videos_elsewhere: bool = False,
    ) -> None:
        self.store = store
        self.deliveries = deliveries
        self.sources = sources
        self.moderator = moderator
        self.batcher = batcher
        self.outcomes = outcomes
        self.settings = settings
        self.pool = pool
        self.history = history
        self.prepare_many = prepare_many
        #: Caps one tenant's messages in process at once (fairness inside the worker).
        self.gate = gate
        #: This worker consumes photo lanes only: videos go to the video lanes.
        self.videos_elsewhere = videos_elsewhere

    def _keeps_bytes(self, decision: Decision) -> bool:
        """Whether a verdict's scored bytes go on to the outcomes: a REVIEW verdict's (its
        reviewer sees them), a BLOCK's where they are kept for an appeal's reviewer."""
        return decision is Decision.REVIEW or (
            decision is Decision.BLOCK and self.outcomes.keep_block_evidence
        )

    def backoff(self, retries: int) -> float:
        q = self.settings
        return float(min(q.retry_backoff_max_s, q.retry_backoff_s * (2**retries)))

    def process(self, job_id: str, *, retries: int = 0) -> Processed:
        """Process one delivery of one job (see :meth:`process_many`).

        Raises:
            RetryLater: a transient error with retries left.
        """
        done = self.process_many([job_id], retries=retries)[0]
        if done.outcome == "retry":
            assert done.error is not None and done.retry_in is not None
            raise RetryLater(done.error, done.retry_in)
        return done

    def process_many(self, job_ids: Sequence[str], *, retries: int = 0) -> list[Processed]:
        """Process one delivery of a message carrying ``job_ids`` (see :meth:`_process_many`),
        after waiting for a slot of its tenant's (:class:`TenantGate`, when there is one).
        Then the delivery log forgets the jobs this message ended
        (:meth:`~moderation.ports.DeliveryLog.forget_ended`), just before the task returns and
        the broker's message is acknowledged."""
        if self.gate is None or not job_ids:
            done = self._process_many(job_ids, retries=retries)
        else:
            with self.gate.hold(tenant_of(job_ids[0])):
                done = self._process_many(job_ids, retries=retries)
        self.deliveries.forget_ended([d.job_id for d in done if d.outcome in _ENDED])
        return done

    def _process_many(self, job_ids: Sequence[str], *, retries: int = 0) -> list[Processed]:
        """Process one delivery of a message carrying ``job_ids``.

        Args:
            job_ids: the jobs of the message.
            retries: how many transient-error retries preceded this delivery.

        Returns:
            What happened to each job, in order. ``retry``: publish it again after
            ``retry_in`` seconds; ``split``: publish each of these jobs in its own message (a
            redelivered batch); ``video``: publish it on the video lanes (its download is a
            video); ``duplicate``: it had already ended (side effects completed).

        Raises:
            QueueUnavailable, AuditSinkUnavailable: the jobs cannot even be ended now (the
                message stays unacknowledged and comes back; every step is idempotent).
        """
        out: dict[str, Processed] = {}
        jobs = self.store.get_jobs(job_ids)
        results = self.store.get_results(job_ids)
        live: list[Job] = []
        ended: list[Job] = []
        for job_id, job, result in zip(job_ids, jobs, results, strict=True):
            if job is None:
                log.warning("job %s has no record (expired or never created); dropping", job_id)
                self.deliveries.forget_pending(job_id)
                out[job_id] = Processed(job_id, "missing")
            elif result is not None and result.status.final:
                ended.append(job)
                out[job_id] = Processed(job_id, "duplicate")
            else:
                live.append(job)
        if ended:
            self.outcomes.complete_effects_many(ended)
        deliveries = self.deliveries.count_deliveries([job.id for job in live])
        runnable: list[Job] = []
        poisoned: list[tuple[Job, JobError, str | None]] = []
        crashed = False
        for job, count in zip(live, deliveries, strict=True):
            crashes = count - 1 - retries
            if crashes >= self.settings.max_deliveries:
                reason = (
                    f"dead-lettered: {count} deliveries, {crashes} without a result "
                    "(the worker died processing it)"
                )
                self.deliveries.dead_letter(job.id, reason=reason, deliveries=count)
                poisoned.append(
                    (job, JobError(code="poison_message", message=reason, attempts=count), None)
                )
                out[job.id] = Processed(job.id, "dead_letter")
            else:
                runnable.append(job)
                crashed = crashed or crashes > 0
        self.outcomes.finish_errors(poisoned)
        if crashed and len(job_ids) > 1:
            # A worker died on this message before: run its jobs one per message, so that a
            # poison image takes down only itself. This start of the batch is not run: taken
            # back, so the single message's start counts the crash once (not twice).
            self.deliveries.uncount_deliveries([job.id for job in runnable])
            for job in runnable:
                out[job.id] = Processed(job.id, "split", video=job.media == VIDEO)
            return [out[job_id] for job_id in job_ids]
        if runnable:
            metrics().latency.labels("queue_wait").observe(
                max(0.0, time.time() - min(job.created_at.timestamp() for job in runnable))
            )
            out.update(self._run(runnable, retries))
        return [out[job_id] for job_id in job_ids]

    @staticmethod
    def _timed(stage: str, fn: Callable[[], T]) -> T:
        started = time.perf_counter()
        try:
            return fn()
        finally:
            metrics().latency.labels(stage).observe(time.perf_counter() - started)

    def _run(self, jobs: list[Job], retries: int) -> dict[str, Processed]:
        """Decide ``jobs`` and end each one: verdict, error, or a retry for transient errors."""
        fetched: list[object] = []  # the temporary files of large downloads, removed at the end
        try:
            return self._run_fetched(jobs, retries, fetched)
        finally:
            release(fetched)

    def _run_fetched(
        self, jobs: list[Job], retries: int, fetched: list[object]
    ) -> dict[str, Processed]:
        decided, embeddings, failed, videos = self._decide(jobs, fetched)
        errors: list[tuple[Job, JobError, str | None]] = []
        out: dict[str, Processed] = {}
        if videos:
            # Not this worker's to decode: to the video lanes, and this start is taken back.
            self.deliveries.uncount_deliveries([job.id for job in videos])
            for job in videos:
                out[job.id] = Processed(job.id, "video", video=True)
        m = metrics()
        for job, exc, digest in failed:
            m.errors.labels(getattr(exc, "code", "internal_error")).inc()
            if isinstance(exc, TransientError) and retries < self.settings.max_retries:
                m.retries.labels(exc.code).inc()
                out[job.id] = Processed(
                    job.id, "retry", self.backoff(retries), exc, video=job.media == VIDEO
                )
                continue
            if isinstance(exc, ImageFetchError | ImageFetchTransient):
                error = _fetch_error(job, exc, attempts=retries + 1)
            elif isinstance(exc, TransientError):
                error = JobError(
                    code=exc.code,
                    transient=True,
                    attempts=retries + 1,
                    message=f"{exc} (gave up after {retries + 1} attempts)",
                )
            elif isinstance(exc, PermanentError):
                error = JobError(code=exc.code, message=str(exc), attempts=retries + 1)
            else:
                error = JobError(
                    code="internal_error",
                    attempts=retries + 1,
                    message=f"internal error: {type(exc).__name__}: {exc}",
                )
            errors.append((job, error, digest))
            out[job.id] = Processed(job.id, "error")
        # Errors from here on (Redis, the audit log) are not the jobs': they propagate, the
        # message is delivered again and the jobs end as decided, exactly once.
        won = self.outcomes.finish_many(decided)
        for d, ended in zip(decided, won, strict=True):
            out[d.job.id] = Processed(d.job.id, "verdict" if ended else "duplicate")
        self.outcomes.finish_errors(errors)
        if self.history is not None:
            self.history.record_many(
                [
                    (d.job, d.verdict, embeddings[d.job.id], d.content_sha256)
                    for d, ended in zip(decided, won, strict=True)
                    if ended
                ]
            )
        return out

    def _decide(
        self, jobs: list[Job], kept: list[object]
    ) -> tuple[
        list[Decided],
        dict[str, NDArray[np.float32]],
        list[tuple[Job, Exception, str | None]],
        list[Job],
    ]:
        """Verdicts of ``jobs`` (one policy set for all, with the shadow versions' verdicts),
        their frame embeddings by job id, the jobs that failed with why, and the jobs whose
        download is a video that belongs on the video lanes (``videos_elsewhere``). What was
        fetched goes into ``kept`` (its temporary files are removed once the jobs have ended)."""
        compiled = self.moderator.policies.current
        failed: list[tuple[Job, Exception, str | None]] = []
        wanted: list[Job] = []
        for job in jobs:
            try:
                compiled.ids_for(job.policies)  # unknown policy: fail before any work
                wanted.append(job)
            except ModerationError as exc:
                failed.append((job, exc, None))
        fetched = self._timed(
            "fetch",
            lambda: self.sources.fetch_many(
                [job.image for job in wanted],
                tenants=[job.tenant for job in wanted],
                pool=self.pool,
            ),
        )
        kept.extend(fetched)
        videos: list[Job] = []
        if self.videos_elsewhere:
            is_video = [
                not isinstance(d, Exception) and media_of(payload_head(d)) == VIDEO for d in fetched
            ]
            videos = [job for job, v in zip(wanted, is_video, strict=True) if v]
            wanted = [job for job, v in zip(wanted, is_video, strict=True) if not v]
            fetched = [data for data, v in zip(fetched, is_video, strict=True) if not v]
        # The scored bytes, for the reviewer of a REVIEW verdict (and of a BLOCK's appeal).
        scored = {
            job.id: data
            for job, data in zip(wanted, fetched, strict=True)
            if isinstance(data, bytes | MediaFile)
        }

        def prepare(data: Payload | ModerationError) -> PreparedImage | Exception:
            if isinstance(data, Exception):
                return data
            try:
                return self.moderator.prepare(data, compiled=compiled)
            except Exception as exc:  # corrupt, too large, or a bug: that job's error only
                if not isinstance(exc, ModerationError):
                    log.exception("preparing an image failed unexpectedly")
                return exc

        started = time.perf_counter()
        preparation = (
            self.moderator.preparation(compiled) if self.prepare_many is not None else None
        )
        if preparation is not None and self.prepare_many is not None:
            payloads = [data for data in fetched if not isinstance(data, Exception)]
            done = iter(self.prepare_many(preparation, payloads))
            prepared = [data if isinstance(data, Exception) else next(done) for data in fetched]
        else:
            prepared = list(
                self.pool.map(prepare, fetched)
                if self.pool is not None and len(fetched) > 1
                else map(prepare, fetched)
            )
        metrics().latency.labels("decode").observe(
            (time.perf_counter() - started) / max(1, len(fetched))
        )
        ready: list[tuple[Job, PreparedImage, list[Future[Any]]]] = []
        for job, image in zip(wanted, prepared, strict=True):
            if isinstance(image, Exception):
                failed.append((job, image, None))
            else:
                ready.append((job, image, []))
        # Every frame of the message in one go: they share forward passes (up to the batch size).
        pending = iter(self.batcher.submit_many([x for _, image, _ in ready for x in image.inputs]))
        ready = [(job, image, [next(pending) for _ in image.inputs]) for job, image, _ in ready]
        groups: dict[tuple[str, ...] | None, list[tuple[Job, PreparedImage, NDArray[Any]]]] = (
            defaultdict(list)
        )
        for job, image, futures in ready:
            try:
                embeddings = np.stack([f.result() for f in futures])
            except Exception as exc:  # a frame the device could not decode, or a forward error
                failed.append((job, exc, image.content_sha256))
                continue
            key = tuple(sorted(job.policies)) if job.policies else None
            groups[key].append((job, image, embeddings))
        decided: list[Decided] = []
        for policy_ids, members in groups.items():
            images = [image for _, image, _ in members]
            stacked = np.concatenate([e for _, _, e in members])
            verdicts = self.moderator.decide(images, stacked, policy_ids, compiled=compiled)
            shadows = self.moderator.shadow(
                images, stacked, verdicts, policy_ids, compiled=compiled
            )
            decided += [
                Decided(
                    job,
                    verdict,
                    image.content_sha256,
                    image.fingerprints,
                    tuple(shadow),
                    scored.get(job.id) if self._keeps_bytes(verdict.decision) else None,
                    image.stills if verdict.decision is Decision.REVIEW else (),
                    image.timeline.timestamps
                    if verdict.decision is Decision.REVIEW and image.timeline is not None
                    else (),
                )
                for (job, image, _), verdict, shadow in zip(members, verdicts, shadows, strict=True)
            ]
        by_job = {job.id: e for members in groups.values() for job, _, e in members}
        return decided, by_job, failed, videos


def _fetch_error(job: Job, exc: ModerationError, *, attempts: int) -> JobError:
    """The tenant's view of a fetch error (a generic code and message: the detail would map the
    service's network); the detail goes to the log, escaped."""
    code, message = tenant_fetch_error(exc.code)
    log.warning(
        "job %r (tenant %r): fetching %r failed after %d attempt(s): %s: %r",
        job.id,
        job.tenant,
        job.image.uri[:300],
        attempts,
        exc.code,
        str(exc)[:1000],
    )
    if exc.transient and code != FETCH_FAILED:  # one message for every unreachable host
        message = f"{message} (gave up after {attempts} attempts)"
    return JobError(code=code, message=message, transient=exc.transient, attempts=attempts)
