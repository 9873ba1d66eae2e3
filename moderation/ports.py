"""Ports: every outside concern the use cases talk to, as a Protocol, in one place.

Each port has a real adapter (:mod:`moderation.adapters`) and a small in-memory twin
(:mod:`moderation.adapters.memory`) for fast unit tests of the use cases::

    port             real adapter                              in-memory twin
    ImageSource      http_source (http, https), s3_source (s3) MemorySource (mem)
                     pipeline.sources.InlineSource (inline)
    ImageDecoder     images.SafeDecoder                        (itself: pure Pillow, no I/O)
    Encoder          clip.ClipEncoder                          the bundled test model
    Signal           signals.prompts.PromptSignal, ...         (pure)
    JobStore         redis_jobs.RedisJobStore                  MemoryJobStore
    ReviewQueue      redis_review.RedisReviewQueue             MemoryReviewQueue
    ReviewerStore    redis_review.RedisReviewerStore           MemoryReviewerStore
    AuditSink        audit_log.AuditLog                        MemoryAuditSink
    SegmentStore     s3_audit.S3SegmentStore, local_audit      MemorySegmentStore
    TaskPublisher    celery_queue.CeleryQueue                  MemoryPublisher
    CallbackSender   celery_queue.CeleryQueue                  MemoryCallbacks
    EmbeddingStore   redis_embeddings.RedisEmbeddingStore      MemoryEmbeddingStore
    PolicyFiles      policy_files.PolicyFolder                 MemoryPolicyFiles

Adapters translate their library's errors into :mod:`moderation.exceptions` (transient vs
permanent) at the boundary; nothing outside an adapter sees a redis, boto3, httpx or kombu error.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict

from moderation.core.audit import AuditRecord, Retention
from moderation.core.compiled import ModelIdentity
from moderation.core.embeddings import StoredEmbedding
from moderation.core.image_ref import ImageRef
from moderation.core.jobs import Job, JobResult
from moderation.core.policy import PolicySet
from moderation.core.review import (
    FirstDecision,
    HumanDecision,
    Lease,
    ReviewDecision,
    ReviewItem,
    ReviewOutcome,
)
from moderation.core.reviewers import ReviewerAccount
from moderation.core.scoring import CategorySlot, SignalScorer

__all__ = [
    "AuditSink",
    "CallbackSender",
    "Claim",
    "DeadLetter",
    "DecideResult",
    "EmbeddingStore",
    "Encoder",
    "ImageDecoder",
    "ImageSource",
    "JobStore",
    "PolicyFiles",
    "ReviewQueue",
    "ReviewStats",
    "ReviewerStore",
    "SegmentStore",
    "Signal",
    "TaskPublisher",
]


# --- images ------------------------------------------------------------------------------------


class ImageSource(Protocol):
    """Reads image bytes for the references of its schemes.

    Raises (both methods): ``ImageFetchError`` and subclasses (permanent: bad reference, refused
    URL, not found, too large) or ``ImageFetchTransient`` (timeouts, 5xx, throttling).
    """

    #: The URI schemes this source reads (``("http", "https")``).
    schemes: tuple[str, ...]
    #: Whether upstream callers may name references of these schemes (``inline`` may not).
    public: bool

    def check(self, ref: ImageRef) -> None:
        """Refuse a malformed reference at submit time, without any network access."""
        ...

    def fetch(self, ref: ImageRef) -> bytes: ...


class ImageDecoder(Protocol):
    """Untrusted bytes -> decoded RGB frames (Pillow images), with bomb and size limits.

    Raises: ``ImageError`` subclasses (corrupt, too large, unsupported format).
    """

    def decode(self, data: bytes, *, min_side: int | None = None) -> list[Any]: ...


class Encoder(Protocol):
    """Image and text towers of one model; every embedding is L2-normalized.

    ``prepare`` runs on CPU threads (the decode side); ``encode_prepared`` runs one forward pass
    on a batch of prepared inputs.
    """

    @property
    def identity(self) -> ModelIdentity: ...

    @property
    def logit_scale(self) -> float: ...

    @property
    def image_size(self) -> int: ...

    def prepare(self, image: Any) -> Any: ...

    def encode_prepared(self, batch: Sequence[Any]) -> NDArray[np.float32]: ...

    def encode_texts(self, texts: Sequence[str]) -> NDArray[np.float32]: ...


class Signal(Protocol):
    """One way of turning images into per-category scores (see :mod:`moderation.signals`)."""

    #: What a policy category writes in ``signal:`` to use this signal.
    name: str
    #: Whether :meth:`features` must run on each decoded image (False: embedding only).
    needs_image: bool

    def features(self, image: Any) -> Any:
        """What this signal needs from one decoded RGB frame (runs on the decode threads)."""
        ...

    def scorer(self, slots: Sequence[CategorySlot]) -> SignalScorer:
        """A scorer for these categories (all of this signal), built once per policy set."""
        ...


# --- jobs --------------------------------------------------------------------------------------


class DeadLetter(BaseModel):
    """A job whose deliveries kept killing the worker, set aside for an operator."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    reason: str
    deliveries: int
    at: datetime


class JobStore(Protocol):
    """Job records, inline bytes, results (a final result is written once), delivery counters,
    the outcome log, dead letters, the pending index and worker heartbeats.

    Raises (every method): ``QueueUnavailable`` when the store cannot be reached.
    """

    def create(self, job: Job, inline: bytes | None = None) -> tuple[Job, bool]:
        """Store a new job (and its inline bytes) unless the id exists: (stored job, created)."""
        ...

    def delete(self, job_id: str) -> None:
        """Remove every trace of a job (rollback when it could not be published)."""
        ...

    def get_job(self, job_id: str) -> Job | None: ...

    def inline_bytes(self, key: str) -> bytes | None: ...

    def keep_inline(self, key: str, ttl_s: int) -> None: ...

    def get_result(self, job_id: str) -> JobResult | None: ...

    def finish(self, result: JobResult) -> bool:
        """Write a final result unless one exists; True when this call ended the job."""
        ...

    def set_human(self, job_id: str, human: HumanDecision) -> JobResult | None:
        """Attach a human decision to a job's result; None for an unknown job."""
        ...

    def effects_done(self, job_id: str) -> bool: ...

    def mark_effects_done(self, job_id: str) -> None: ...

    def count_delivery(self, job_id: str) -> int:
        """Count one more start of this job; returns the count."""
        ...

    def outcomes(self, count: int = 100_000) -> list[tuple[str, str]]:
        """(job id, status) per ended job, oldest first: one entry per job."""
        ...

    def dead_letter(self, job_id: str, *, reason: str, deliveries: int) -> None: ...

    def dead_letters(self) -> list[DeadLetter]: ...

    def take_dead_letter(self, job_id: str) -> Job | None:
        """Take a job off the dead-letter list and make it runnable again."""
        ...

    def purge_dead_letters(self) -> int: ...

    def stale_pending(self, older_than_s: float, limit: int = 1000) -> list[str]:
        """Jobs published more than ``older_than_s`` ago that have not ended."""
        ...

    def mark_republished(self, job_id: str) -> None: ...

    def forget_pending(self, job_id: str) -> None: ...

    def try_lock(self, name: str, ttl_s: float) -> bool:
        """Take a named lock for ``ttl_s`` seconds unless someone holds it."""
        ...

    def heartbeat(self, name: str, info: dict[str, Any], ttl_s: int = 30) -> None: ...

    def workers(self) -> list[dict[str, Any]]: ...

    def known_policies(self) -> dict[str, int]:
        """Policy id -> version, as loaded by the live workers."""
        ...

    def ping(self) -> bool: ...


class TaskPublisher(Protocol):
    """Publishes the message that makes a worker process a job (message id = job id).

    Raises: ``QueueUnavailable`` when the broker refuses the message.
    """

    def publish(self, job_id: str) -> None: ...

    def in_flight(self, max_scan: int = 20_000) -> set[str] | None:
        """Ids of job messages waiting in the queue or delivered and unacknowledged; None when
        the queue is too long to scan this time."""
        ...

    def queue_depth(self) -> int: ...


class CallbackSender(Protocol):
    """Schedules the delivery of a signed callback (retried, at least once)."""

    def send(self, job_id: str, url: str, body: bytes) -> None: ...


# --- human review ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Claim:
    """A leased item as the reviewer sees it; ``first`` is set on a second review."""

    item: ReviewItem
    lease: Lease
    first: FirstDecision | None
    now: float


@dataclass(frozen=True, slots=True)
class DecideResult:
    outcome: ReviewOutcome
    #: True when this exact decision had already been recorded (a retried submit).
    replay: bool
    #: Seconds from claim to this decision (None on a replay).
    handling_s: float | None = None


@dataclass(frozen=True, slots=True)
class ReviewStats:
    policy_id: str
    waiting: int
    in_review: int
    oldest_age_s: float | None


class ReviewQueue(Protocol):
    """The human-review queue: priority order, exclusive leases, the second-reviewer rule and an
    outbox of final decisions not yet handed on.

    Raises (every method): ``QueueUnavailable``; ``decide`` and ``release`` also the
    ``ReviewError`` subclasses (not found, lease expired, not the holder, already decided).
    """

    lease_s: float

    def now(self) -> float:
        """The queue's clock (unix seconds): lease times are in it."""
        ...

    def submit(self, item: ReviewItem) -> None:
        """Enqueue an item; the same ``review_id`` again is a no-op."""
        ...

    def claim(self, reviewer: str, *, policies: list[str] | None = None) -> Claim | None: ...

    def holds(self, reviewer: str, review_id: str) -> bool: ...

    def item(self, review_id: str) -> ReviewItem: ...

    def decide(
        self,
        review_id: str,
        *,
        reviewer: str,
        token: str,
        decision: ReviewDecision,
        reason_code: str | None,
    ) -> DecideResult: ...

    def release(self, review_id: str, *, reviewer: str | None = None) -> bool: ...

    def delivered(self, review_id: str) -> None:
        """The final decision of ``review_id`` was handed on: drop it from the outbox."""
        ...

    def undelivered(self, *, older_than_s: float = 0.0) -> list[HumanDecision]: ...

    def stats(self) -> list[ReviewStats]: ...

    def decisions_on(self, day: str | None = None) -> dict[str, int]: ...

    def export(self) -> Iterator[dict[str, Any]]: ...


class ReviewerStore(Protocol):
    """Reviewer accounts."""

    def create(self, account: ReviewerAccount) -> None: ...

    def get(self, username: str) -> ReviewerAccount | None: ...

    def all(self) -> list[ReviewerAccount]: ...

    def set_disabled(self, username: str, disabled: bool) -> None: ...


# --- audit -------------------------------------------------------------------------------------


class AuditSink(Protocol):
    """The append-only audit log of this process. ``write`` returns once the record is durable.

    Raises: ``AuditSinkUnavailable`` (transient) when the record cannot be made durable.
    """

    def write(self, record: AuditRecord) -> None: ...

    def close(self, timeout: float = 10.0) -> bool: ...


class SegmentStore(Protocol):
    """Where audit segments live: an S3 bucket or a folder. Implementations raise
    ``AuditSinkUnavailable`` when the store cannot be reached and ``AuditError`` for permanent
    failures."""

    @property
    def object_lock(self) -> bool:
        """Whether segments are expected to carry Object Lock retention."""
        ...

    def put(self, key: str, data: bytes, *, created: datetime) -> None: ...

    def list_keys(
        self, start: datetime | None = None, end: datetime | None = None
    ) -> Iterator[str]:
        """Segment keys created in ``[start, end]``, in key (time) order."""
        ...

    def get(self, key: str) -> bytes: ...

    def retention(self, key: str) -> Retention | None: ...

    def describe(self) -> str:
        """Where this store is, for messages (no credentials)."""
        ...


# --- stored embeddings -------------------------------------------------------------------------


class EmbeddingStore(Protocol):
    """Processed items' image embeddings, kept for a retention period for policy backtests.

    Append-only; entries older than the retention limit are dropped by the store itself. A job
    may appear more than once (a redelivery); readers keep the last entry of a job.

    Raises (every method): ``QueueUnavailable`` when the store cannot be reached.
    """

    def add(self, item: StoredEmbedding) -> None:
        """Keep ``item`` (its ``at`` is set to the time of writing)."""
        ...

    def scan(
        self, *, since: float, until: float | None = None, page: int = 1000
    ) -> Iterator[list[StoredEmbedding]]:
        """Entries written in ``[since, until]`` (unix seconds), oldest first, in pages."""
        ...

    def count(self) -> int:
        """How many entries the store holds now."""
        ...


# --- policy files ------------------------------------------------------------------------------


class PolicyFiles(Protocol):
    """The policy files a deployment serves (folders in a checkout of the policy repository).

    Raises (every method): ``PolicyError`` subclasses.
    """

    def load(self) -> PolicySet:
        """Every live and shadow policy, validated."""
        ...

    def promotion_plan(self, shadow_source: str, live_source: str | None) -> dict[str, str]:
        """What promoting the shadow file would change: ``live_file`` (where the promoted
        version will be live), ``from_file`` (the shadow file, removed) and ``retired_file``
        (where the old live version is kept, not served; empty when there is none)."""
        ...

    def promote(self, plan: dict[str, str]) -> None:
        """Carry out a plan so that a process reloading at any moment sees a valid set: the old
        live file is copied aside, the promoted text replaces it atomically (the shadow file,
        identical but for its mode, is then ignored), and the shadow file is removed."""
        ...
