"""Ports: every outside concern the use cases talk to, as a Protocol, in one place.

Each port has a real adapter (:mod:`moderation.adapters`) and a small in-memory twin (the
:mod:`moderation.adapters.memory` package, one twin per module) for fast unit tests of the use
cases::

    port             real adapter                              in-memory twin
    ImageSource      http_source (http, https), s3_source (s3) MemorySource (mem)
                     pipeline.sources.InlineSource (inline)
    ImageDecoder     images.SafeDecoder                        (itself: pure Pillow, no I/O)
    Encoder          clip.ClipEncoder                          the bundled test model
    Signal           signals.prompts.PromptSignal,             (pure)
                     signals.hash_bank.HashBankSignal
    JobStore         redis_jobs.RedisJobStore                  MemoryJobStore
    DeliveryLog      redis_deliveries.RedisDeliveryLog         MemoryDeliveryLog
    WorkerRegistry   redis_workers.RedisWorkerRegistry         MemoryWorkerRegistry
    RateLimiter      redis_limits.RedisRateLimiter             MemoryRateLimiter
    ReviewQueue      postgres.review.PostgresReviewQueue,      MemoryReviewQueue
                     redis_review.RedisReviewQueue
    AppealStore      postgres.appeals.PostgresAppealStore      MemoryAppealStore
    StrikeStore      postgres.strikes.PostgresStrikeStore      MemoryStrikeStore
    ImageHistory     postgres.image_history.PostgresImageHistory  MemoryImageHistory
    ReviewerStore    postgres.reviewers.PostgresReviewerStore, MemoryReviewerStore
                     redis_reviewers.RedisReviewerStore
    ReviewerSessions redis_sessions.RedisReviewerSessions      MemoryReviewerSessions
    LoginThrottle    redis_sessions.RedisLoginThrottle         MemoryLoginThrottle
    AuditSink        audit_log.AuditLog                        MemoryAuditSink
    SegmentStore     s3_audit.S3SegmentStore, local_audit      MemorySegmentStore
    CompileCache     compile_cache.CompileCache                (a folder under tmp_path)
    BlobStore        s3_blobs.S3BlobStore, local_blobs         MemoryBlobStore
    TaskPublisher    celery_queue.CeleryQueue                  MemoryPublisher
    CallbackSender   redis_callbacks.RedisCallbackOutbox       MemoryCallbacks
    CallbackOutbox   redis_callbacks.RedisCallbackOutbox       MemoryCallbackOutbox
    BankStore        postgres.banks.PostgresBankStore,         MemoryBankStore
                     redis_banks.RedisBankStore
    HistoryFormat    parquet_history.ParquetHistory            MemoryHistoryFormat
    BacktestRunner   celery_queue.CeleryBacktests              pipeline.backtest.LocalBacktests
    PolicyFiles      policy_files.PolicyFolder,                MemoryPolicyFiles
                     policy_files.StoredPolicyFolder
    PolicyStore      postgres.policies.PostgresPolicyStore     MemoryPolicyStore
    NoticeStore      postgres.notices.PostgresNoticeStore      MemoryNoticeStore
    EntryGuardStore  postgres.bank_guard.PostgresEntryGuard    MemoryEntryGuard
    ExchangeFeed     exchanges.LibraryExchangeFeed             MemoryExchangeFeed
    ExchangeSyncStore postgres.exchange_sync.PostgresExchangeSync MemoryExchangeSync

Adapters translate their library's errors into :mod:`moderation.exceptions` (transient vs
permanent) at the boundary; nothing outside an adapter sees a redis, boto3, httpx or kombu error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict

from moderation.core.admission import Admission, Tenant
from moderation.core.appeals import Appeal
from moderation.core.audit import AuditRecord, Retention
from moderation.core.backtest import BacktestPartial, BacktestTask
from moderation.core.bank_guard import EntryRate, EntryStatus, FloodRule
from moderation.core.banks import BankEntry, BankInfo, BankManifest, EntryData, Segment
from moderation.core.callbacks import PendingCallback
from moderation.core.compiled import CompiledPolicy, ModelIdentity
from moderation.core.decision import Timeline
from moderation.core.embeddings import HistoryBatch
from moderation.core.fairness import TenantBacklog
from moderation.core.image_history import EarlierDecision
from moderation.core.image_ref import ImageRef
from moderation.core.jobs import Job, JobResult
from moderation.core.legacy_state import LegacyBankEntry, LegacyReviewRecord
from moderation.core.notices import Notice
from moderation.core.payload import Payload
from moderation.core.policy import Policy, PolicySet
from moderation.core.review import (
    FirstDecision,
    HumanDecision,
    Lease,
    ReviewDecision,
    ReviewItem,
    ReviewOutcome,
)
from moderation.core.reviewers import LoginPolicy, ReviewerAccount, ReviewerSession
from moderation.core.scoring import CategorySlot, SignalScorer
from moderation.core.strikes import EnforcementAction, Strike
from moderation.core.wellbeing import ReviewerDay, WellbeingSettings

__all__ = [
    "AppealStore",
    "AuditSink",
    "BacklogReader",
    "BacktestRunner",
    "BankRequest",
    "BankStore",
    "BlobStore",
    "BlobUpload",
    "CallbackOutbox",
    "CallbackSender",
    "Claim",
    "CompileCache",
    "DeadLetter",
    "DecideResult",
    "DecodedMedia",
    "DeliveryLog",
    "Encoder",
    "HistoryFormat",
    "ImageDecoder",
    "ImageHistory",
    "ImageSource",
    "JobStore",
    "JobTransients",
    "LegacyBankSource",
    "LegacyReviewSource",
    "LoginThrottle",
    "PendingIndex",
    "PolicyDocument",
    "PolicyFiles",
    "PolicyStore",
    "RateLimiter",
    "ReviewQueue",
    "ReviewStats",
    "ReviewerSessions",
    "ReviewerStore",
    "SegmentStore",
    "Signal",
    "SingleDeliveryOps",
    "SingleJobOps",
    "StateImportTarget",
    "StreamingImageSource",
    "StrikeStore",
    "TaskPublisher",
    "WellbeingStore",
    "WorkerRegistry",
]


# --- images ------------------------------------------------------------------------------------


class ImageSource(Protocol):
    """Reads image bytes for the references of its schemes, on behalf of a tenant.

    ``tenant`` is whose job the reference belongs to: a source that reads with the service's own
    identity (S3) reads only inside that tenant's grants. ``None`` is the operator's own tools
    (the CLI's ``eval``, ``calibrate``), honoured only by sources built for them.

    Raises (both methods): ``ImageFetchError`` and subclasses (permanent: bad reference, refused
    URL, not allowed for this tenant, not found, too large) or ``ImageFetchTransient``
    (timeouts, 5xx, throttling).
    """

    #: The URI schemes this source reads (``("http", "https")``).
    schemes: tuple[str, ...]
    #: Whether upstream callers may name references of these schemes (``inline`` may not).
    public: bool

    def check(self, ref: ImageRef, *, tenant: str | None) -> None:
        """Refuse a malformed or not-allowed reference at submit time, without network access."""
        ...

    def fetch(self, ref: ImageRef, *, tenant: str | None) -> bytes: ...


@runtime_checkable
class StreamingImageSource(ImageSource, Protocol):
    """A source whose downloads may be large (a video): it streams them into a temporary file
    past ``video.stream_above_bytes`` instead of holding them in memory."""

    def fetch_media(self, ref: ImageRef, *, tenant: str | None) -> Payload:
        """:meth:`fetch`, or the temporary file the bytes were streamed into (the caller
        removes an ``owned`` one when done)."""
        ...


@dataclass(frozen=True, slots=True)
class DecodedMedia:
    """Decoded frames (Pillow images) and, for a video or an animation, when each was shown."""

    frames: list[Any]
    timeline: Timeline | None = None


class ImageDecoder(Protocol):
    """Untrusted bytes -> decoded RGB frames (Pillow images), with bomb and size limits: one
    for a still image, the sampled frames of an animation or a video.

    Raises: ``ImageError`` subclasses (corrupt, too large, unsupported format).
    """

    def decode(self, data: bytes, *, min_side: int | None = None) -> list[Any]: ...

    def decode_media(self, data: Payload, *, min_side: int | None = None) -> DecodedMedia:
        """:meth:`decode` with the timeline of a video's or an animation's samples; a video in
        a file is decoded from the file (never read whole into memory)."""
        ...


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

    def prepare_encoded(self, data: bytes) -> Any | None:
        """An input decoded on the device instead (a JPEG's checked header on a GPU), or None
        to decode the file on the CPU."""
        ...

    @property
    def device_decode(self) -> bool:
        """Whether :meth:`prepare_encoded` hands JPEGs to the device."""
        ...

    def preprocessor(self) -> Callable[[Any], Any] | None:
        """:meth:`prepare` as a picklable function (for prepare processes), or None when the
        preprocessing cannot leave this process."""
        ...

    def encode_prepared(self, batch: Sequence[Any]) -> NDArray[np.float32]: ...

    def encode_texts(self, texts: Sequence[str]) -> NDArray[np.float32]: ...


class Signal(Protocol):
    """One way of turning images into per-category scores (see :mod:`moderation.signals`)."""

    #: What a policy category writes in ``signal:`` to use this signal.
    name: str
    #: Whether :meth:`features` must run on each decoded image (False: embedding only).
    needs_image: bool
    #: Decoded frames keep at least this short side (when the image has it) for :meth:`features`.
    min_side: int
    #: Relative cost per image: signals run cheapest first, and one of cost at least
    #: :data:`moderation.core.scoring.SKIP_COST` (a model run) is skipped on images whose
    #: decision is already settled (prompts 0, hash banks 1, a classifier 10).
    cost: float

    def features(self, image: Any) -> Any:
        """What this signal needs from one decoded RGB frame (runs on the decode threads)."""
        ...

    def fingerprint(self, feature: Any) -> dict[str, Any]:
        """Content identifiers in one frame's feature, kept with the job result and audit
        record (``{"pdq": ..., "pdq_quality": ...}``); ``{}`` for none."""
        ...

    def scorer(self, slots: Sequence[CategorySlot]) -> SignalScorer:
        """A scorer for these categories (all of this signal), built once per policy set."""
        ...


class ImageClassifierModel(Protocol):
    """A trained image classifier (an ONNX graph): preprocessed inputs in, class probabilities
    out. Loads its weights once per process, on first use.

    Raises (``predict``): ``ModelUnavailableError`` when the model cannot be loaded or run.
    """

    def predict(self, inputs: NDArray[np.float32]) -> NDArray[np.float32]:
        """(N, L) probabilities, one row per input, columns in label order."""
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
    """Job records, their inline bytes and their results: what an upstream service submitted and
    what it reads back. A final result is written once. The hot path reads and writes whole
    batches (``*_many``, one round trip each); the single-job forms come from
    :class:`SingleJobOps`.

    Creating a job also puts it in the pending index of the :class:`DeliveryLog` and counts its
    bytes as queued; ending it takes it out of both (one atomic step in each store).

    Raises (every method): ``QueueUnavailable`` when the store cannot be reached.
    """

    def create_many(
        self, jobs: Sequence[tuple[Job, bytes | None]], *, tenant_cap: int | None = None
    ) -> list[tuple[Job, bool]]:
        """Store new jobs (and inline bytes) unless their ids exist: (stored job, created).

        The bytes of a new job (inline image + record) count towards the queued bytes, the
        store's and its tenant's, until it ends; new jobs that would take their tenant's over
        ``tenant_cap`` raise ``TenantQueueFull``, the store's over its cap ``QueueFull`` (and
        none of them is stored).
        """
        ...

    def queued_bytes(self, tenant: str | None = None) -> int:
        """Bytes of jobs that have not ended (inline images + records), of one tenant or all."""
        ...

    def create(self, job: Job, inline: bytes | None = None) -> tuple[Job, bool]: ...

    def delete(self, job_id: str) -> None:
        """Remove every trace of a job (rollback when it could not be published)."""
        ...

    def get_jobs(self, job_ids: Sequence[str]) -> list[Job | None]: ...

    def get_job(self, job_id: str) -> Job | None: ...

    def inline_bytes_many(self, keys: Sequence[str]) -> list[bytes | None]: ...

    def inline_bytes(self, key: str) -> bytes | None: ...

    def keep_inline(self, key: str, ttl_s: int) -> None: ...

    def get_results(self, job_ids: Sequence[str]) -> list[JobResult | None]: ...

    def get_result(self, job_id: str) -> JobResult | None: ...

    def result_json(self, job_ids: Sequence[str]) -> list[bytes | None]:
        """The stored results as JSON bytes, for answering readers without re-serializing."""
        ...

    def finish_many(self, results: Sequence[JobResult]) -> list[bool]:
        """Write final results unless one exists; True where this call ended the job."""
        ...

    def finish(self, result: JobResult) -> bool: ...

    def set_human(self, job_id: str, human: HumanDecision) -> JobResult | None:
        """Attach a human decision to a job's result; None for an unknown job."""
        ...

    def outcomes(self, count: int = 100_000) -> list[tuple[str, str]]:
        """(job id, status) per ended job, oldest first: one entry per job."""
        ...

    def ping(self) -> bool: ...


class JobTransients(Protocol):
    """What a job keeps in the transient store (Redis) while it runs, beside its durable record
    in PostgreSQL: its inline image bytes, its share of the queued-bytes cap and its entry in
    the pending index of the :class:`DeliveryLog`. All of it may be lost; the record may not.

    Raises (every method): ``QueueUnavailable`` when the store cannot be reached.
    """

    def hold_many(
        self, jobs: Sequence[tuple[Job, bytes | None]], *, tenant_cap: int | None = None
    ) -> None:
        """Take in new jobs: inline bytes, pending entry, queued bytes (record + image), the
        store's and their tenant's, and their tenant's backlog.

        Raises:
            TenantQueueFull: a tenant's queued bytes would go over ``tenant_cap``.
            QueueFull: the store's would go over its cap (none is held either way).
        """
        ...

    def release_many(self, ended: Sequence[tuple[str, bool]]) -> None:
        """Jobs that ended, each with whether its inline bytes may go: out of the pending
        index and the queued bytes. Idempotent."""
        ...

    def drop(self, job_id: str, inline_key: str | None = None) -> None:
        """Forget a job entirely (rollback of a create)."""
        ...

    def queued_bytes(self, tenant: str | None = None) -> int: ...

    def backlog(self, tenants: Sequence[str]) -> dict[str, TenantBacklog]: ...

    def inline_bytes_many(self, keys: Sequence[str]) -> list[bytes | None]: ...

    def keep_inline(self, key: str, ttl_s: int) -> None: ...

    def ping(self) -> bool: ...


class PendingIndex(Protocol):
    """Jobs published and not ended, by when they were (last) published: what the lost-message
    sweep reads. In Redis beside the broker by default; in PostgreSQL (the job records
    themselves) when a database is configured, so that a Redis that lost everything still
    knows which jobs to publish again.

    Raises (every method): ``QueueUnavailable`` or ``DatabaseUnavailable`` when the store
    cannot be reached.
    """

    def stale_pending(self, older_than_s: float, limit: int = 1000) -> list[str]: ...

    def oldest_pending_age(self) -> float | None: ...

    def mark_republished(self, job_id: str) -> None: ...

    def forget_pending(self, job_id: str) -> None: ...


class DeliveryLog(Protocol):
    """What happened to each job's deliveries: start counts (poison-message detection), whether
    its side effects ran, the pending index (jobs published and not ended, for the lost-message
    sweep) and the dead letters set aside for an operator.

    Raises (every method): ``QueueUnavailable`` when the store cannot be reached.
    """

    def count_deliveries(self, job_ids: Sequence[str]) -> list[int]:
        """Count one more start of each job; returns the counts."""
        ...

    def count_delivery(self, job_id: str) -> int: ...

    def uncount_deliveries(self, job_ids: Sequence[str]) -> None:
        """Take back one counted start of each job: a redelivered batch split into one message
        per job, whose next start is the same recovery, not one more crash."""
        ...

    def effects_done_many(self, job_ids: Sequence[str]) -> list[bool]: ...

    def effects_done(self, job_id: str) -> bool: ...

    def mark_effects_done_many(self, job_ids: Sequence[str]) -> None: ...

    def mark_effects_done(self, job_id: str) -> None: ...

    def forget_ended(self, job_ids: Sequence[str]) -> None:
        """The message that ended these jobs has done its work: their start counts go, and
        their side-effect marks expire ``queue.ended_grace_s`` later, so the store holds what
        jobs in flight need plus a short window, not every job that ended (a duplicate
        delivery within the window finds the effects done; one later runs them again: review
        submission is idempotent by job id, and callbacks carry the job id for receivers to
        drop a duplicate)."""
        ...

    def stale_pending(self, older_than_s: float, limit: int = 1000) -> list[str]:
        """Jobs published more than ``older_than_s`` ago that have not ended."""
        ...

    def oldest_pending_age(self) -> float | None:
        """Seconds since the oldest job that has not ended was (last) published; None: none."""
        ...

    def mark_republished(self, job_id: str) -> None: ...

    def forget_pending(self, job_id: str) -> None: ...

    def dead_letter(self, job_id: str, *, reason: str, deliveries: int) -> None: ...

    def dead_letters(self) -> list[DeadLetter]: ...

    def take_dead_letter(self, job_id: str) -> Job | None:
        """Take a job off the dead-letter list and make it runnable again (its result back to
        queued, its delivery count reset)."""
        ...

    def purge_dead_letters(self) -> int: ...

    def dead_letter_count(self) -> int:
        """Jobs on the dead-letter list."""
        ...


class WorkerRegistry(Protocol):
    """Live workers (heartbeats with what they serve) and short named locks between them.

    Raises (every method): ``QueueUnavailable`` when the store cannot be reached.
    """

    def heartbeat(self, name: str, info: dict[str, Any], ttl_s: int = 30) -> None: ...

    def workers(self) -> list[dict[str, Any]]:
        """The heartbeats of the workers alive now."""
        ...

    def known_policies(self) -> dict[str, int]:
        """Policy id -> version, as loaded by the live workers."""
        ...

    def try_lock(self, name: str, ttl_s: float) -> bool:
        """Take a named lock for ``ttl_s`` seconds unless someone holds it."""
        ...


@runtime_checkable
class BacklogReader(Protocol):
    """Per-tenant backlog of the job store: jobs that have not ended, and the oldest one's
    creation time (what the per-tenant backlog metrics show).

    Raises: ``QueueUnavailable`` when the store cannot be reached.
    """

    def backlog(self, tenants: Sequence[str]) -> dict[str, TenantBacklog]: ...


class RateLimiter(Protocol):
    """Per-tenant admission of new jobs (:mod:`moderation.core.admission`), shared by every API
    process.

    Raises: ``QueueUnavailable`` when the store cannot be reached.
    """

    def admit(self, tenant: Tenant, n: int) -> Admission:
        """Admit ``n`` new jobs of ``tenant`` (all or none)."""
        ...


class SingleJobOps:
    """The single-job forms of a job store's batch operations (mixin)."""

    def create_many(
        self, jobs: Sequence[tuple[Job, bytes | None]], *, tenant_cap: int | None = None
    ) -> list[tuple[Job, bool]]:
        raise NotImplementedError

    def get_jobs(self, job_ids: Sequence[str]) -> list[Job | None]:
        raise NotImplementedError

    def inline_bytes_many(self, keys: Sequence[str]) -> list[bytes | None]:
        raise NotImplementedError

    def get_results(self, job_ids: Sequence[str]) -> list[JobResult | None]:
        raise NotImplementedError

    def finish_many(self, results: Sequence[JobResult]) -> list[bool]:
        raise NotImplementedError

    def create(self, job: Job, inline: bytes | None = None) -> tuple[Job, bool]:
        return self.create_many([(job, inline)])[0]

    def get_job(self, job_id: str) -> Job | None:
        return self.get_jobs([job_id])[0]

    def inline_bytes(self, key: str) -> bytes | None:
        return self.inline_bytes_many([key])[0]

    def get_result(self, job_id: str) -> JobResult | None:
        return self.get_results([job_id])[0]

    def finish(self, result: JobResult) -> bool:
        return self.finish_many([result])[0]


class SingleDeliveryOps:
    """The single-job forms of a delivery log's batch operations (mixin)."""

    def effects_done_many(self, job_ids: Sequence[str]) -> list[bool]:
        raise NotImplementedError

    def mark_effects_done_many(self, job_ids: Sequence[str]) -> None:
        raise NotImplementedError

    def count_deliveries(self, job_ids: Sequence[str]) -> list[int]:
        raise NotImplementedError

    def uncount_deliveries(self, job_ids: Sequence[str]) -> None:
        raise NotImplementedError

    def effects_done(self, job_id: str) -> bool:
        return self.effects_done_many([job_id])[0]

    def mark_effects_done(self, job_id: str) -> None:
        self.mark_effects_done_many([job_id])

    def count_delivery(self, job_id: str) -> int:
        return self.count_deliveries([job_id])[0]


class TaskPublisher(Protocol):
    """Publishes the messages that make workers process jobs: one message per batch of job
    ids (at most ``queue.jobs_per_message`` each), so a submitted batch is one forward pass.

    Raises: ``QueueUnavailable`` when the broker refuses a message.
    """

    def publish(
        self,
        job_ids: Sequence[str],
        *,
        retries: int = 0,
        countdown: float = 0.0,
        high: bool = False,
        video: bool = False,
    ) -> None:
        """Publish ``job_ids`` (split into messages of at most ``jobs_per_message``) on their
        tenants' lanes (:mod:`moderation.core.fairness`); ``retries``: transient-error retries
        they already had; ``countdown``: run them no sooner than this many seconds from now;
        ``high``: on the priority lanes; ``video``: on the video lanes."""
        ...

    def in_flight(self, max_scan: int = 20_000) -> set[str] | None:
        """Ids of job messages waiting in the queue or delivered and unacknowledged; None when
        the queue is too long to scan this time."""
        ...

    def queue_depth(self) -> int: ...


class CallbackSender(Protocol):
    """Schedules the delivery of a signed callback (retried, at least once)."""

    def send(self, job_id: str, url: str, body: bytes, *, tenant: str = "default") -> None:
        """Schedule ``body`` for ``url`` (``job_id``: the tenant's own id).

        Raises: QueueUnavailable when it cannot be scheduled now (transient)."""
        ...


class CallbackOutbox(CallbackSender, Protocol):
    """Callbacks waiting for delivery, per tenant, each due at a time. A claimed callback is
    leased: unless it is :meth:`done` or put back with :meth:`retry_at` before ``lease_s``
    passes (its deliverer died), it is due again (delivery is at least once).

    Raises (every method): ``QueueUnavailable`` when the outbox cannot be reached.
    """

    def tenants(self) -> list[str]:
        """The tenants that have (or recently had) callbacks waiting."""
        ...

    def claim(self, tenant: str, limit: int, *, lease_s: float) -> list[PendingCallback]:
        """At most ``limit`` of ``tenant``'s due callbacks, oldest due first, leased."""
        ...

    def done(self, callback: PendingCallback) -> None:
        """Forget a delivered (or failed for good) callback."""
        ...

    def retry_at(self, callback: PendingCallback, at: float) -> None:
        """Put a claimed callback back, one more attempt counted, due at ``at`` (unix s)."""
        ...

    def waiting(self) -> int:
        """Callbacks in the outbox, all tenants (due, later and claimed)."""
        ...


# --- human review ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Claim:
    """A leased item as the reviewer sees it; ``first`` is set on a second review."""

    item: ReviewItem
    lease: Lease
    first: FirstDecision | None
    now: float
    #: The queue the item is in now.
    queue: str = "review"


@dataclass(frozen=True, slots=True)
class DecideResult:
    outcome: ReviewOutcome
    #: True when this exact decision had already been recorded (a retried submit).
    replay: bool
    #: Seconds from claim to this decision (None on a replay).
    handling_s: float | None = None


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """A final decision waiting in the review outbox to be handed on."""

    decision: HumanDecision
    #: Failed deliveries so far.
    attempts: int
    #: When the decision was made (queue clock, unix seconds).
    decided_at: float


@dataclass(frozen=True, slots=True)
class ReviewStats:
    policy_id: str
    waiting: int
    in_review: int
    #: The oldest open item's age (since it was submitted: the job's wait), the SLA signal.
    oldest_age_s: float | None
    queue: str = "review"


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

    def submit_many(self, items: Sequence[ReviewItem]) -> None:
        """:meth:`submit` for a batch's items at once (one statement or round trip)."""
        ...

    def claim(
        self,
        reviewer: str,
        *,
        policies: list[str] | None = None,
        queues: Sequence[str] = ("review",),
    ) -> Claim | None:
        """Lease the highest-priority item of ``queues`` (and ``policies``, if given) that
        ``reviewer`` may take (never one it is barred from: an appeal of its own decision), or
        return the lease it already holds (whatever its queue)."""
        ...

    def move(self, review_id: str, *, reviewer: str, token: str, queue: str) -> bool:
        """The lease holder sends the item to another ``queue`` (an escalation): its lease is
        consumed and the item waits there, with its rank. Returns True when this exact move was
        already made (a retried submit).

        Raises:
            ReviewInvalidDecision: the item is in ``queue`` already.
            ReviewLeaseExpired, ReviewTakenBack, ReviewNotLeaseHolder, ReviewNotFound,
            ReviewAlreadyDecided: as for ``decide``.
        """
        ...

    def holds(self, reviewer: str, review_id: str) -> bool: ...

    def item(self, review_id: str) -> ReviewItem: ...

    def reveal(self, review_id: str, *, reviewer: str) -> None:
        """Record that ``reviewer`` looked at ``review_id``'s image unblurred (at least once:
        a critical item needs it before "allow" or "remove")."""
        ...

    def revealed(self, review_id: str, *, reviewer: str) -> bool:
        """Whether ``reviewer`` ever looked at ``review_id``'s image unblurred."""
        ...

    def decide(
        self,
        review_id: str,
        *,
        reviewer: str,
        token: str,
        decision: ReviewDecision,
        reason_code: str | None,
        seen_sha256: str | None = None,
    ) -> DecideResult:
        """Record a decision (``seen_sha256``: the hash of the bytes the reviewer was shown,
        kept with the final decision)."""
        ...

    def release(self, review_id: str, *, reviewer: str | None = None, away_s: float = 0.0) -> bool:
        """Give a leased item back to the queue (``reviewer``: only if it holds it; None: an
        admin's requeue). ``away_s`` > 0 with a ``reviewer`` (a skip): the item is not offered
        to that reviewer again for ``away_s`` seconds (others get it at once)."""
        ...

    def leases(self) -> list[Lease]:
        """Every unexpired lease now (who holds which item, until when), soonest to expire
        first: what an admin looks at to take items back or reassign them."""
        ...

    def assign(self, review_id: str, *, reviewer: str, queues: Sequence[str]) -> Lease:
        """An admin leases ``review_id`` to ``reviewer`` (a new lease of ``lease_s``), taking
        it back from whoever held it (that holder is told an admin took it back). ``queues``:
        the queues ``reviewer`` may work (the item must be in one). Idempotent: the reviewer's
        unexpired lease on it is returned as it is.

        Raises:
            ReviewNotFound: no such item.
            ReviewAlreadyDecided: the item is final.
            ReviewError: ``reviewer`` may not take it (not its queue, an appeal of its own
                decision, or it made the first decision of a second review: code
                ``review_assign_refused``) or holds
                another item now (code ``review_assign_busy``).
        """
        ...

    def extend(self, review_id: str, *, reviewer: str, token: str) -> Lease:
        """Renew ``reviewer``'s unexpired lease ``token`` on ``review_id`` for another
        ``lease_s`` from now (same token).

        Raises:
            ReviewNotFound: no such item.
            ReviewLeaseExpired: the lease ran out (or was taken back) first.
            ReviewNotLeaseHolder: the caller never held this lease.
        """
        ...

    def undo(self, review_id: str, *, reviewer: str, token: str, within_s: float) -> Claim:
        """Take back ``reviewer``'s decision made under lease ``token`` at most ``within_s``
        seconds ago, while it is not handed on (final) or not taken by a second reviewer
        (pending): the decision is forgotten and the item leased to ``reviewer`` again (a new
        lease; the reviewer must hold no other lease).

        Raises:
            ReviewNotFound: no such item.
            ReviewUndoTooLate: no such decision of the caller's, or it can no longer be undone.
        """
        ...

    def delivered(self, review_id: str) -> None:
        """The final decision of ``review_id`` was handed on: drop it from the outbox."""
        ...

    def undelivered(self, *, older_than_s: float = 0.0) -> list[HumanDecision]: ...

    def due(self, *, limit: int = 100, hold_s: float = 60.0) -> list[OutboxEntry]:
        """Outbox entries whose next delivery attempt is due, oldest first. Each is held back
        from other callers for ``hold_s`` (while this one tries it)."""
        ...

    def retry_later(self, review_id: str, *, delay_s: float, error: str) -> int:
        """A delivery of ``review_id`` failed: due again in ``delay_s``. Returns the failed
        attempts so far."""
        ...

    def stats(self) -> list[ReviewStats]: ...

    def decisions_on(self, day: str | None = None) -> dict[str, int]: ...

    def export(self) -> Iterator[dict[str, Any]]:
        """Reviewed items as labelled rows, labels corrected by their appeals
        (:func:`moderation.core.appeals.corrected_row`)."""
        ...


class ImageHistory(Protocol):
    """Earlier jobs of one tenant on the same image (the reviewer's context panel).

    Raises (every method): ``DatabaseUnavailable`` when the records cannot be read.
    """

    def earlier(
        self,
        tenant: str,
        *,
        content_sha256: str | None,
        content_pdq: str | None,
        exclude_job: str,
        limit: int = 10,
    ) -> list[EarlierDecision]:
        """``tenant``'s jobs (never another tenant's) whose scored bytes had ``content_sha256``
        or whose PDQ hash was ``content_pdq``, newest first, without ``exclude_job`` (a
        scoped id), at most ``limit``."""
        ...


class AppealStore(Protocol):
    """Appeals (:mod:`moderation.core.appeals`), filed together with their review items.

    Raises (every method): ``DatabaseUnavailable`` (transient).
    """

    def file(self, appeal: Appeal, item: ReviewItem) -> Appeal:
        """Store ``appeal`` and queue its review ``item`` at once. The same appeal again (a
        retried filing) returns the stored one.

        Raises:
            AppealRefused: another appeal took its number first (``appeal_limit_reached``).
        """
        ...

    def count(self, job_id: str) -> int:
        """Appeals filed against the (scoped) job."""
        ...

    def get(self, appeal_id: str) -> Appeal | None: ...

    def for_job(self, job_id: str) -> list[Appeal]:
        """The job's appeals, oldest first."""
        ...

    def decide(self, appeal_id: str, *, decision: HumanDecision) -> Appeal:
        """Record the outcome (idempotent: the same outcome again changes nothing).

        Raises:
            AppealNotFound: no such appeal.
        """
        ...

    def decided(self, *, since: float | None = None) -> list[Appeal]:
        """Decided appeals (decided at or after ``since``, unix seconds), oldest first."""
        ...

    def backlog(self) -> tuple[int, float | None]:
        """Open appeals and the oldest one's age in seconds (None: none open)."""
        ...


class StrikeStore(Protocol):
    """Uploader strikes and the action each uploader is under (:mod:`moderation.core.strikes`).
    Every key starts with the tenant: uploaders of two tenants never meet.

    Raises (every method): ``DatabaseUnavailable`` (transient).
    """

    def add(self, strike: Strike) -> bool:
        """Record a job's strike (replacing the job's earlier one, unless an overturn removed
        it). Returns whether anything changed."""
        ...

    def remove(self, tenant: str, job_id: str, *, at: datetime) -> Strike | None:
        """Remove a job's strike (an overturn); the strike, or None when there was none."""
        ...

    def strikes(self, tenant: str, uploader_id: str, *, limit: int = 200) -> list[Strike]:
        """The uploader's strikes, removed ones included, newest first."""
        ...

    def action(self, tenant: str, uploader_id: str) -> tuple[EnforcementAction, bool]:
        """The uploader's current action and whether it was ever warned."""
        ...

    def set_action(
        self,
        tenant: str,
        uploader_id: str,
        *,
        expected: EnforcementAction,
        action: EnforcementAction,
        at: datetime,
    ) -> bool:
        """Change the uploader's action from ``expected`` to ``action`` (compare and set);
        False when it was no longer ``expected``."""
        ...


class ReviewerStore(Protocol):
    """Reviewer accounts."""

    def create(self, account: ReviewerAccount) -> None: ...

    def get(self, username: str) -> ReviewerAccount | None: ...

    def all(self) -> list[ReviewerAccount]: ...

    def set_disabled(self, username: str, disabled: bool) -> None: ...

    def set_queues(self, username: str, queues: Sequence[str]) -> None:
        """Grant ``username`` these review queues on top of its role's (replacing earlier
        grants).

        Raises:
            ReviewError: no such reviewer (code ``review_unknown_user``).
        """
        ...


class ReviewerSessions(Protocol):
    """Server-side reviewer sessions, by :func:`~moderation.core.reviewers.session_key`. A
    session unused for ``idle_s`` or older than ``max_s`` is gone.

    Raises (every method): ``QueueUnavailable`` when the store cannot be reached.
    """

    def create(self, key: str, session: ReviewerSession) -> None: ...

    def touch(self, key: str, now: float) -> ReviewerSession | None:
        """The live session under ``key``, its ``last_seen`` moved to ``now``; None when it
        does not exist, was ended, or timed out (then it is removed)."""
        ...

    def end(self, key: str) -> bool:
        """End one session; True when it existed."""
        ...

    def end_all(self, username: str) -> int:
        """End every session of ``username``; returns how many there were."""
        ...

    def count(self, username: str) -> int:
        """Live sessions of ``username``."""
        ...


class WellbeingStore(Protocol):
    """Per-reviewer wellbeing (:mod:`moderation.core.wellbeing`): display settings, and each
    day's exposure (items shown, critical ones, unblurred ones) and break answers. Reviewers are
    known by their pseudonyms.

    Raises (every method): ``QueueUnavailable`` or ``DatabaseUnavailable`` when the store
    cannot be reached.
    """

    def settings(self, reviewer: str) -> WellbeingSettings | None:
        """The reviewer's saved settings (None: never saved; the defaults apply)."""
        ...

    def save(self, reviewer: str, settings: WellbeingSettings) -> None: ...

    def record(
        self, reviewer: str, *, day: str, review_id: str, critical: bool, revealed: bool, at: float
    ) -> None:
        """The reviewer was shown ``review_id`` (``revealed``: and unblurred it) at ``at``. Each
        item counts once per reviewer and day, from when it was first shown; a later
        ``revealed=True`` marks it unblurred."""
        ...

    def answer_break(self, reviewer: str, *, day: str, taken: bool, at: float) -> None:
        """The reviewer answered a break prompt (took the break or dismissed it): counted, and
        the count towards the next prompt starts again at ``at``."""
        ...

    def day(self, reviewer: str, day: str) -> ReviewerDay:
        """The reviewer's exposure on ``day`` (zeros when nothing was recorded)."""
        ...

    def days(self, day: str) -> list[ReviewerDay]:
        """Every reviewer's exposure on ``day`` (those with anything recorded)."""
        ...


class LoginThrottle(Protocol):
    """Failed sign-ins per key (``account:<name>``, ``address:<ip>``) and the time until which
    a key may not sign in (:class:`~moderation.core.reviewers.LoginPolicy` decides).

    Raises (every method): ``QueueUnavailable`` when the store cannot be reached.
    """

    def blocked_for(self, keys: Sequence[str], now: float) -> float:
        """Seconds until every key may try again (0: now)."""
        ...

    def fail(self, key: str, now: float, *, window_s: float) -> int:
        """Count one failure of ``key``; returns the failures within the window."""
        ...

    def block(self, key: str, until: float) -> None:
        """Refuse ``key`` until ``until`` (unix time); never shortens an existing block."""
        ...

    def clear(self, key: str) -> None:
        """Forget the failures of ``key`` (after a successful sign-in)."""
        ...

    def reserve(
        self, keys: Sequence[tuple[str, LoginPolicy]], now: float
    ) -> tuple[float, tuple[int, ...]]:
        """One atomic step before a password is checked: when any key is blocked, (seconds
        until every key may try again, ``()``) and nothing is counted; else every key counts
        this attempt as a failure and is blocked as its policy says after that many failures,
        and the answer is ``(0.0, failures of each key)``. Concurrent attempts therefore see
        each other's reservations."""
        ...

    def refund(self, key: str) -> None:
        """Give back one reserved failure of ``key`` (the attempt succeeded or was never
        checked); a block already set stays."""
        ...


# --- audit -------------------------------------------------------------------------------------


class AuditSink(Protocol):
    """The append-only audit log of this process. ``write`` returns once the record is durable.

    Raises: ``AuditSinkUnavailable`` (transient) when the record cannot be made durable.
    """

    def write(self, record: AuditRecord) -> None: ...

    def write_many(self, records: list[AuditRecord]) -> None:
        """Append several records in order, durable together (one fsync)."""
        ...

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


# --- bytes ---------------------------------------------------------------------------------------


class BlobUpload(Protocol):
    """One object being written chunk by chunk (:meth:`BlobStore.upload`). Not thread-safe.

    Raises (every method): as :class:`BlobStore`.
    """

    def write(self, chunk: bytes) -> None: ...

    def commit(self) -> None:
        """Make the object readable under its key (atomic: all of it or nothing)."""
        ...

    def abort(self) -> None:
        """Drop what was written (idempotent; nothing stays behind, not even parts)."""
        ...


class BlobStore(Protocol):
    """The object store for bytes: review evidence (the exact bytes a job was scored on),
    large uploads, frames, history shards. An S3 bucket under a prefix, or a local folder.

    Keys are relative paths of plain segments (:func:`moderation.core.blobs.check_key`); a
    ``put`` is atomic (a reader sees the old object, the new one, or none, never part of one)
    and durable when it returns.

    Raises (every method): ``BlobKeyInvalid`` for a malformed key or prefix;
    ``BlobStoreUnavailable`` (transient) when the store cannot be reached; ``BlobError`` for any
    other refusal (no bucket, access denied).
    """

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``, replacing what was there."""
        ...

    def get(self, key: str) -> bytes:
        """The bytes under ``key``.

        Raises: BlobNotFound when there is no object under ``key``.
        """
        ...

    def exists(self, key: str) -> bool: ...

    def get_media(self, key: str, *, memory_bytes: int) -> Payload:
        """The bytes under ``key``, or, when there are more than ``memory_bytes``, a local file
        holding them (streamed; the caller removes an ``owned`` one).

        Raises: BlobNotFound when there is no object under ``key``.
        """
        ...

    def put_file(self, key: str, path: Path) -> None:
        """Store the content of the local file ``path`` under ``key`` (streamed, atomic)."""
        ...

    def upload(self, key: str) -> BlobUpload:
        """An upload to ``key`` fed chunk by chunk: nothing is readable under ``key`` until
        :meth:`BlobUpload.commit`, and :meth:`BlobUpload.abort` leaves nothing behind."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object under ``key`` (nothing there: nothing to do)."""
        ...

    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys that start with ``prefix``, in key order, read lazily."""
        ...

    def describe(self) -> str:
        """Where this store is, for messages (no credentials)."""
        ...


# --- hash banks ----------------------------------------------------------------------------------


class BankRequest(BaseModel):
    """A reviewer's request to add a reviewed image to a bank once its removal is final."""

    model_config = ConfigDict(frozen=True)

    review_id: str
    bank: str
    reviewer: str  # pseudonymous id
    at: datetime


class BankStore(Protocol):
    """Hash banks: named sets of PDQ hashes with their metadata (:mod:`moderation.core.banks`).

    Entries live in *segments* (runs of consecutive ids, hashes packed 32 bytes each), so a worker
    loads a bank of millions of hashes in a few large reads and, after a change, reads only what
    was appended. Additions are atomic: readers see all of an import or none of it. Removed ids
    are kept in a set (tombstones). Every change moves the bank's version and the store's
    :meth:`version`, which workers poll.

    Raises (every method): ``QueueUnavailable`` when the store cannot be reached;
    ``BankNotFound`` for an unknown bank.
    """

    def create(self, name: str, *, description: str = "") -> BankInfo:
        """Raises: BankExists."""
        ...

    def delete(self, name: str) -> bool: ...

    def info(self, name: str) -> BankInfo: ...

    def banks(self) -> list[BankInfo]: ...

    def version(self) -> int:
        """Moves whenever any bank changes (cheap enough to poll every second)."""
        ...

    def manifest(self, name: str) -> BankManifest: ...

    def read_hashes(self, name: str, segment: Segment, start: int = 0) -> bytes:
        """The packed hashes of rows ``start ..`` of a committed segment (32 bytes each)."""
        ...

    def writing(self, name: str) -> AbstractContextManager[None]:
        """Hold the bank's write lock (one writer at a time; imports check for duplicates
        under it).

        Raises: BankBusy when another writer holds it.
        """
        ...

    def append(
        self,
        name: str,
        entries: Sequence[EntryData],
        *,
        progress: Callable[[int], object] | None = None,
    ) -> list[int]:
        """Add entries (all or none become visible, atomically); returns their ids in order.
        Call under :meth:`writing`."""
        ...

    def remove(self, name: str, ids: Iterable[int]) -> int:
        """Tombstone live entries; returns how many were live."""
        ...

    def entries(self, name: str, ids: Sequence[int]) -> dict[int, BankEntry]:
        """Metadata of the live entries among ``ids``."""
        ...

    def scan(self, name: str) -> Iterator[BankEntry]:
        """Every live entry, in id order."""
        ...

    def request_addition(self, request: BankRequest, ttl_s: int) -> None: ...

    def addition_request(self, review_id: str) -> BankRequest | None: ...


# --- importing a Redis-only release's state -----------------------------------------------------


class LegacyReviewSource(Protocol):
    """The review queue of a Redis-only release, read whole (``moderation db import-redis``).

    Raises (every method): ``QueueUnavailable`` when the store cannot be reached.
    """

    def count_records(self) -> int:
        """How many items :meth:`records` will yield (for a progress bar)."""
        ...

    def records(self, *, batch: int = 500) -> Iterator[list[LegacyReviewRecord]]:
        """Every item (waiting, leased or final) with its whole state, in batches."""
        ...


class LegacyBankSource(Protocol):
    """The hash banks of a Redis-only release, read whole, tombstones included.

    Raises (every method): ``QueueUnavailable`` when the store cannot be reached;
    ``BankNotFound`` for an unknown bank.
    """

    def banks(self) -> list[BankInfo]: ...

    def manifest(self, name: str) -> BankManifest: ...

    def segment_entries(self, name: str, segment: Segment) -> list[LegacyBankEntry]:
        """Every entry of a committed segment in id order, removed ones flagged."""
        ...

    def addition_request(self, review_id: str) -> BankRequest | None: ...


class StateImportTarget(Protocol):
    """The system of record the legacy state is imported into. Every write is idempotent:
    a record already there (same review id, username or bank name) is left as it is, so a
    re-run or a resumed run imports nothing twice. With ``dry_run`` nothing is written; the
    counts are what a real run would import.

    Raises (every method): ``DatabaseUnavailable`` when the database cannot be reached.
    """

    def import_reviewers(
        self, accounts: Sequence[ReviewerAccount], *, dry_run: bool = False
    ) -> int:
        """Create the accounts that are not there; returns how many (would be) created."""
        ...

    def import_review(
        self, records: Sequence[LegacyReviewRecord], *, lease_s: float, dry_run: bool = False
    ) -> int:
        """Write one batch of items (with their leases, decisions and outbox entries) in one
        transaction; returns how many items (would be) new."""
        ...

    def import_bank_requests(
        self, requests: Sequence[BankRequest], *, ttl_s: int, dry_run: bool = False
    ) -> int:
        """Keep reviewers' pending "add to bank" requests (``ttl_s`` from now); returns how many
        (would be) new."""
        ...

    def has_bank(self, name: str) -> bool: ...

    def import_bank(
        self,
        info: BankInfo,
        manifest: BankManifest,
        entries: Iterable[list[LegacyBankEntry]],
        *,
        progress: Callable[[int], object] | None = None,
    ) -> bool:
        """Write a bank with its entries (same ids, same tombstones) and segments in one
        transaction; False (nothing read from ``entries``) when a bank of that name exists."""
        ...


# --- embedding history ---------------------------------------------------------------------


class HistoryFormat(Protocol):
    """The byte layout of an embedding-history shard (a columnar file format): one
    :class:`~moderation.core.embeddings.HistoryBatch` in, the same columns out.

    Shards live in the :class:`BlobStore` under :mod:`moderation.core.history_keys`.
    """

    #: The key suffix of its shards (``.parquet``).
    suffix: str

    def encode(self, batch: HistoryBatch) -> bytes: ...

    def decode(self, data: bytes, *, tenant: str | None = None) -> HistoryBatch:
        """The rows of a shard (only ``tenant``'s when given).

        Raises:
            HistoryShardUnreadable: not a readable shard (truncated, corrupt, foreign).
        """
        ...


class BacktestRunner(Protocol):
    """Where a backtest's shard groups are scored: in this process, or fanned out to the
    workers as tasks. Each group's counts come back as they are ready (any order).

    Raises (from the iterator): ``BacktestMismatch`` (a worker serves other policies),
    ``BacktestWorkersUnavailable`` (no counts in time), ``HistoryShardUnreadable``,
    ``BlobStoreUnavailable``, ``QualityError``.
    """

    #: ``local`` or ``workers`` (for the report).
    where: str

    def run(
        self, task: BacktestTask, groups: Sequence[Sequence[str]]
    ) -> Iterator[tuple[int, BacktestPartial]]:
        """Yield ``(group index, its counts)`` for every group of shard keys."""
        ...


# --- compiled policies -------------------------------------------------------------------------


class CompileCache(Protocol):
    """Compiled policies kept between runs, by policy content hash and model identity (writes
    atomic: concurrent processes never see a torn entry)."""

    def path_for(self, policy: Policy, model: ModelIdentity) -> Path:
        """Where the compiled ``policy`` for ``model`` is (or would be) kept."""
        ...

    def load(self, policy: Policy, model: ModelIdentity) -> CompiledPolicy | None:
        """The kept compiled policy; None when there is none (or it cannot be read)."""
        ...

    def save(self, compiled: CompiledPolicy) -> Path: ...


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


# --- the policy store ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PolicyDocument:
    """One stored version of one policy document.

    ``slot``: ``live`` (acted on), ``shadow`` (evaluated beside it) or ``retired`` (kept, not
    served). ``exemplars``: each exemplar image's path as the YAML writes it -> its sha256 (the
    bytes are in the object store under that digest).
    """

    id: int
    policy_id: str
    version: int
    slot: str
    body: str
    exemplars: dict[str, str]
    added_by: str


class PolicyStore(Protocol):
    """Versioned policy documents in a shared store (``policy_source: database``): what
    ``moderation policy publish`` writes, ``moderation policy promote`` changes and every worker
    follows by polling :meth:`version`.

    Raises (every method): ``DatabaseUnavailable`` (transient) when the store cannot be reached.
    """

    def version(self) -> int:
        """A number that moves on every change of the served documents (cheap: polled)."""
        ...

    def serving(self) -> list[PolicyDocument]:
        """The live and shadow documents, read at one moment."""
        ...

    def document(self, document_id: int) -> PolicyDocument:
        """One document, whatever its slot.

        Raises: PolicyError (code ``policy_document_unknown``) when there is none.
        """
        ...

    def publish(
        self,
        *,
        policy_id: str,
        version: int,
        slot: str,
        body: str,
        exemplars: dict[str, str],
        actor: str,
    ) -> PolicyDocument:
        """Serve ``body`` in ``slot`` (``live`` or ``shadow``), retiring the document it
        replaces there; publishing the same version and body again changes nothing."""
        ...

    def promote(self, shadow_id: int, *, body: str, actor: str) -> PolicyDocument:
        """In one transaction: the live document of the shadow's policy is retired, the shadow
        document is retired, and ``body`` (the shadow's text with ``mode: live``) is live.

        Raises: PolicyError (code ``policy_document_unknown``) when ``shadow_id`` is not a
        serving shadow document (promoted already, or never one).
        """
        ...


class NoticeStore(Protocol):
    """Notices from outside (users' and trusted flaggers' reports), per tenant.

    Raises (every method): ``DatabaseUnavailable`` when the store cannot be reached.
    """

    def add(self, notice: Notice) -> tuple[Notice, bool]:
        """Keep ``notice``; if one with its id exists, count one more report on it instead.
        Returns the stored notice and whether it is new."""
        ...

    def get(self, tenant: str, notice_id: str) -> Notice | None:
        """The tenant's notice (None: no such notice, or another tenant's)."""
        ...

    def set_review(self, notice_id: str, review_id: str) -> None:
        """Record the review the notice put its item into."""
        ...

    def open_for_job(self, job_id: str) -> list[Notice]:
        """The open notices on a (scoped) job, oldest first."""
        ...

    def answer(
        self, notice_id: str, *, outcome: str, reason: str | None, at: datetime
    ) -> Notice | None:
        """Mark an open notice answered; the answered notice, or None if it was not open (a
        repeated answer does nothing)."""
        ...

    def for_tenant(self, tenant: str, *, limit: int = 100) -> list[Notice]:
        """The tenant's notices, newest first."""
        ...


class EntryGuardStore(Protocol):
    """Bank entries' states (quarantined, confirmed, disabled) and match rates.

    Raises (every method): ``DatabaseUnavailable`` when the store cannot be reached.
    """

    def statuses(self, bank: str | None = None) -> list[EntryStatus]:
        """Every entry that is not simply active (of one bank, or all), by bank and id."""
        ...

    def status(self, bank: str, entry_id: int) -> EntryStatus | None: ...

    def set_status(self, status: EntryStatus) -> None:
        """Keep an entry's state (``active``: forget it)."""
        ...

    def count(
        self, bank: str, matches: Mapping[int, int], *, rule: FloodRule, now: float
    ) -> dict[int, EntryRate]:
        """Add matches to the entries' rates (atomically per entry; ``rule.observe``);
        the new rates."""
        ...


# --- hash exchanges ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExchangeDelta:
    """One batch of a hash exchange's updates, in upstream order.

    ``additions``: per upstream record key, the PDQ hashes it carries now (replacing what the key
    carried before); ``removals``: keys deleted upstream (or no longer carrying a PDQ hash);
    ``ignored``: records of other signal types; ``checkpoint``: where the next fetch resumes once
    this batch is applied (opaque).
    """

    additions: dict[str, list[str]]
    removals: list[str]
    ignored: int
    checkpoint: bytes


@dataclass(frozen=True)
class ExchangeHealth:
    """How one synced bank's syncs go (the API's ``/metrics`` reads it at scrape time).

    ``last_success_age_s``: seconds since its last successful sync (None: never);
    ``failures``: failed syncs since then; ``errors_total``: failed syncs ever;
    ``last_error_code``: the last failure's error code (``exchange_unavailable``, ...).
    """

    source: str
    last_success_age_s: float | None
    failures: int = 0
    errors_total: int = 0
    last_error_code: str | None = None


class ExchangeFeed(Protocol):
    """One exchange collaboration (NCMEC, a ThreatExchange privacy group, StopNCII).

    Raises (while iterating): ``ExchangeAuthError`` (credentials refused), ``ExchangeUnavailable``
    (transient), ``ExchangeError``.
    """

    def fetch(self, checkpoint: bytes | None) -> Iterator[ExchangeDelta]:
        """The updates since ``checkpoint`` (None: everything), batch by batch."""
        ...


class ExchangeSyncStore(Protocol):
    """Synced banks' checkpoints and the hashes each upstream record put into the bank.

    Raises (every method): ``DatabaseUnavailable`` when the store cannot be reached.
    """

    def lock(self, source: str) -> AbstractContextManager[None]:
        """Hold the one-syncer-per-source lock.

        Raises:
            ExchangeBusy: another process holds it.
        """
        ...

    def checkpoint(self, source: str) -> bytes | None: ...

    def records(self, source: str, keys: Iterable[str]) -> dict[str, list[str]]:
        """The hashes that ``keys`` (those known) put into the bank."""
        ...

    def save(
        self,
        source: str,
        *,
        checkpoint: bytes,
        records: Mapping[str, list[str] | None],
        applied: int,
    ) -> None:
        """Keep the records (None: forget the key) and the new checkpoint, together."""
        ...

    def fetched(self, source: str) -> int:
        """Records applied so far (0: never synced)."""
        ...

    def held(self, source: str, hashes: Iterable[str], *, besides: Iterable[str]) -> set[str]:
        """Those of ``hashes`` that a record other than the keys ``besides`` still carries."""
        ...

    def record_outcome(self, source: str, *, error_code: str | None) -> None:
        """A sync of ``source`` ended: successfully (``error_code`` None: the failures since
        the last success go back to 0) or with that error."""
        ...

    def health(self, sources: Iterable[str]) -> list[ExchangeHealth]:
        """The health of each of ``sources`` (one that never tried: never succeeded, no
        failures), in the order given."""
        ...
