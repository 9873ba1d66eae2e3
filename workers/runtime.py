"""Per-process worker state and the job-processing logic the Celery tasks call.

One :class:`WorkerRuntime` per worker process, built on first use: the model and compiled
policies (from the compile cache), one :class:`~moderation.batching.MicroBatcher` running the
image encoder on batches, the image fetcher, the job store and the outcome dispatcher. Task
threads (``--pool threads``) fetch, decode and preprocess in parallel and meet in the batcher, so
decoding of the next images overlaps with the forward pass of the current batch.

A background thread publishes a heartbeat (model, loaded policy versions) to the job store and
hot-reloads policies: every ``queue.policy_reload_s`` it hashes the policy files, and on a change
loads + compiles (through the cache) the new set and swaps the Moderator atomically. Verdicts
name the policy versions they used (``Verdict.policies``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from moderation.adapters.compile_cache import CompileCache
from moderation.adapters.images import decode_image
from moderation.adapters.job_store import JobStore
from moderation.batching import BatchStats, MicroBatcher
from moderation.bootstrap import Runtime, build_runtime, compile_all, policy_paths_for
from moderation.exceptions import ModerationError, PermanentError, TransientError
from moderation.jobs import Job, JobError
from moderation.metrics import metrics
from moderation.outcomes import CallbackEnqueuer, Outcomes
from moderation.policy_files import find_policy_files, load_policies
from moderation.ports import AuditSink, ImageSource, ReviewSink
from moderation.service import Moderator, most_severe
from moderation.settings import Settings

__all__ = ["Processed", "RetryLater", "WorkerRuntime", "policy_files_hash"]

log = logging.getLogger(__name__)


def policy_files_hash(paths: Sequence[Path]) -> str:
    """Content hash of every policy file under ``paths`` (names and bytes)."""
    digest = hashlib.sha256()
    for file in sorted(find_policy_files(paths)):
        digest.update(str(file).encode() + b"\0")
        try:
            digest.update(file.read_bytes())
        except OSError:
            digest.update(b"<unreadable>")
    return digest.hexdigest()


class RetryLater(Exception):
    """Raised by :meth:`WorkerRuntime.process` when the task should retry after ``countdown``."""

    def __init__(self, error: TransientError, countdown: float) -> None:
        super().__init__(str(error))
        self.error = error
        self.countdown = countdown


@dataclass(frozen=True)
class Processed:
    job_id: str
    outcome: str  # verdict / error / duplicate / missing / dead_letter


class WorkerRuntime:
    """Everything a worker process needs to process jobs. Thread-safe."""

    def __init__(
        self,
        settings: Settings,
        *,
        enqueue_callback: CallbackEnqueuer | None = None,
        audit: AuditSink | None = None,
        review: ReviewSink | None = None,
        source: ImageSource | None = None,
        runtime: Runtime | None = None,
        name: str | None = None,
        republish: Callable[[str], None] | None = None,
    ) -> None:
        if not settings.redis_url:
            raise ValueError("WorkerRuntime needs settings.redis_url")
        self.settings = settings
        self.republish = republish
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.store = JobStore.from_url(settings.redis_url, settings.queue)
        self.runtime = runtime or build_runtime(settings)
        self.encoder = self.runtime.model.encoder
        self._moderator = self.runtime.moderator
        self._policy_paths = list(policy_paths_for(settings, self.runtime.model))
        self._policy_hash = policy_files_hash(self._policy_paths)
        if source is None:
            from moderation.adapters.fetch import ImageFetcher

            source = ImageFetcher(settings)
        self.source = source
        self.outcomes = Outcomes(
            self.store, audit=audit, review=review, enqueue_callback=enqueue_callback,
            weights_sha256=self.encoder.identity.weights_sha256,
        )
        self._metrics = metrics()
        self.batcher: MicroBatcher[Any, NDArray[np.float32]] = MicroBatcher(
            self._embed, max_batch=settings.queue.batch_size,
            max_wait_s=settings.queue.batch_wait_ms / 1000.0, on_batch=self._on_batch,
        )
        self._stop = threading.Event()
        self._background = threading.Thread(target=self._loop, name="heartbeat", daemon=True)
        self._background.start()
        if self.runtime.model.note:
            log.warning("%s", self.runtime.model.note)

    # --- batching ----------------------------------------------------------------------------

    def _embed(self, prepared: list[Any]) -> list[NDArray[np.float32]]:
        return list(self.encoder.encode_prepared(prepared))

    def _on_batch(self, stats: BatchStats) -> None:
        self._metrics.batch_size.observe(stats.size)
        self._metrics.latency.labels("inference").observe(stats.run_s)

    # --- policies and heartbeat --------------------------------------------------------------

    @property
    def moderator(self) -> Moderator:
        return self._moderator

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.encoder.identity.id,
            "model_note": self.runtime.model.note,
            "policies": self._moderator.policy_versions,
            "policy_hash": self._policy_hash,
        }

    def reload_policies(self, *, force: bool = False) -> bool:
        """Swap in the current policy files if they changed. Returns whether it swapped.

        A broken policy edit is logged and ignored: the previous set stays in service.
        """
        current = policy_files_hash(self._policy_paths)
        if current == self._policy_hash and not force:
            return False
        try:
            policies = load_policies(self._policy_paths)
            compiled, _ = compile_all(policies, self.encoder, CompileCache(self.settings.cache_dir))
            moderator = Moderator(encoder=self.encoder, compiled=compiled)
        except ModerationError as exc:
            log.error("policy reload failed, keeping the loaded set: %s", exc)
            self._policy_hash = current
            return False
        self._moderator = moderator  # one reference assignment: atomic for readers
        self._policy_hash = current
        self._metrics.policy_reloads.inc()
        log.info("policies reloaded: %s", moderator.policy_versions)
        return True

    def sweep_lost(self) -> list[str]:
        """Publish again the jobs whose broker message was lost (see JobStore.lost_jobs)."""
        if self.republish is None:
            return []
        q = self.settings.queue
        lost = self.store.lost_jobs(
            older_than_s=q.lost_after_s if q.lost_after_s is not None
            else 2.0 * q.visibility_timeout_s
        )
        for job_id in lost:
            if self.store.get_job(job_id) is None:  # expired record: nothing to run
                self.store.forget_pending(job_id)
                continue
            log.warning("job %s: its message was lost (worker died mid-delivery?); "
                        "publishing it again", job_id)
            self.republish(job_id)
            self.store.mark_republished(job_id)
            self._metrics.retries.labels("lost_message").inc()
        return lost

    def _loop(self) -> None:
        q = self.settings.queue
        periodic: list[tuple[float, Callable[[], object], str]] = [
            (q.sweep_interval_s, self.sweep_lost, "lost-message sweep"),
            (q.policy_reload_s, self.reload_policies, "policy reload check"),
        ]
        last = [time.monotonic()] * len(periodic)
        while not self._stop.is_set():
            try:
                self.store.heartbeat(self.name, self.info())
            except ModerationError as exc:
                log.warning("heartbeat failed: %s", exc)
            for i, (every, task, what) in enumerate(periodic):
                if every > 0 and time.monotonic() - last[i] >= every:
                    last[i] = time.monotonic()
                    try:
                        task()
                    except Exception:  # the heartbeat thread must survive anything
                        log.exception("%s failed", what)
            self._stop.wait(min([5.0] + [every for every, _, _ in periodic if every > 0]))

    def close(self) -> None:
        self._stop.set()
        self.batcher.close()

    # --- jobs --------------------------------------------------------------------------------

    def backoff(self, retries: int) -> float:
        q = self.settings.queue
        return float(min(q.retry_backoff_max_s, q.retry_backoff_s * (2**retries)))

    def process(self, job_id: str, *, retries: int = 0) -> Processed:
        """Process one delivery of job ``job_id``.

        Args:
            job_id: the job (and task) id.
            retries: how many transient-error retries preceded this delivery.

        Returns:
            What happened; a finished job's second delivery is a no-op ("duplicate").

        Raises:
            RetryLater: a transient error with retries left; the task retries after
                ``countdown`` seconds.
            QueueUnavailable: Redis is unreachable (the message stays unacked and comes back).
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
        if crashes >= self.settings.queue.max_deliveries:
            reason = (f"dead-lettered: {deliveries} deliveries, {crashes} without a result "
                      "(the worker died processing it)")
            self.store.dead_letter(job_id, reason=reason, deliveries=deliveries)
            self.outcomes.finish_error(job, JobError(code="poison_message", message=reason,
                                                     attempts=deliveries))
            return Processed(job_id, "dead_letter")
        m = self._metrics
        m.latency.labels("queue_wait").observe(
            max(0.0, time.time() - job.created_at.timestamp()))
        try:
            return self._run(job)
        except TransientError as exc:
            m.errors.labels(exc.code).inc()
            if retries < self.settings.queue.max_retries:
                m.retries.labels(exc.code).inc()
                raise RetryLater(exc, self.backoff(retries)) from exc
            self.outcomes.finish_error(job, JobError(
                code=exc.code, transient=True, attempts=retries + 1,
                message=f"{exc} (gave up after {retries + 1} attempts)",
            ))
            return Processed(job_id, "error")
        except PermanentError as exc:
            self.outcomes.finish_error(job, JobError(code=exc.code, message=str(exc),
                                                     attempts=retries + 1))
            return Processed(job_id, "error")
        except Exception as exc:  # a bug must not make the job vanish: end it, loudly
            log.exception("job %s: unexpected error", job_id)
            m.errors.labels("internal_error").inc()
            self.outcomes.finish_error(job, JobError(
                code="internal_error", message=f"internal error: {type(exc).__name__}: {exc}",
                attempts=retries + 1))
            return Processed(job_id, "error")

    def _timed(self, stage: str, fn: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        try:
            return fn()
        finally:
            self._metrics.latency.labels(stage).observe(time.perf_counter() - started)

    def _run(self, job: Job) -> Processed:
        if job.inline:
            data = self.store.inline_bytes(job.id)
            if data is None:
                raise PermanentError("inline image bytes expired before the job ran",
                                     code="inline_expired")
        else:
            data = self._timed("fetch", lambda: self.source.fetch(job.image_ref))
        digest = hashlib.sha256(data).hexdigest()

        def decode() -> list[Any]:
            frames = decode_image(data, self.settings.images, min_side=self.encoder.image_size)
            return [self.encoder.prepare(frame) for frame in frames]

        prepared = self._timed("decode", decode)
        moderator = self._moderator  # one policy set for the whole job
        moderator.scorer(job.policies)  # unknown policy: permanent error before inference
        futures = [self.batcher.submit(p) for p in prepared]
        embeddings = np.stack([f.result() for f in futures])
        verdict = most_severe(moderator.verdicts_for_embeddings(embeddings, job.policies))
        won = self.outcomes.finish_verdict(job, verdict, content_sha256=digest)
        return Processed(job.id, "verdict" if won else "duplicate")
