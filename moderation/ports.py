"""Ports: every outside concern the use cases talk to, as a Protocol, in one place.

Each port has a real adapter (:mod:`moderation.adapters`) and a small in-memory twin
(:mod:`moderation.adapters.memory`) for fast unit tests of the use cases::

    port             real adapter                              in-memory twin
    ImageSource      http_source (http, https), s3_source (s3) MemorySource (mem)
                     pipeline.sources.InlineSource (inline)
    ImageDecoder     images.SafeDecoder                        (itself: pure Pillow, no I/O)
    Encoder          clip.ClipEncoder                          the bundled test model
    Signal           signals.prompts.PromptSignal,             (pure)
                     signals.hash_bank.HashBankSignal
    JobStore         redis_jobs.RedisJobStore                  MemoryJobStore
    ReviewQueue      redis_review.RedisReviewQueue             MemoryReviewQueue
    ReviewerStore    redis_review.RedisReviewerStore           MemoryReviewerStore
    AuditSink        audit_log.AuditLog                        MemoryAuditSink
    SegmentStore     s3_audit.S3SegmentStore, local_audit      MemorySegmentStore
    TaskPublisher    celery_queue.CeleryQueue                  MemoryPublisher
    CallbackSender   celery_queue.CeleryQueue                  MemoryCallbacks
    BankStore        redis_banks.RedisBankStore                MemoryBankStore

Adapters translate their library's errors into :mod:`moderation.exceptions` (transient vs
permanent) at the boundary; nothing outside an adapter sees a redis, boto3, httpx or kombu error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict

from moderation.core.audit import AuditRecord, Retention
from moderation.core.banks import BankEntry, BankInfo, BankManifest, EntryData, Segment
from moderation.core.compiled import ModelIdentity
from moderation.core.image_ref import ImageRef
from moderation.core.jobs import Job, JobResult
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
    "BankRequest",
    "BankStore",
    "CallbackSender",
    "Claim",
    "DeadLetter",
    "DecideResult",
    "Encoder",
    "ImageDecoder",
    "ImageSource",
    "JobStore",
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
    #: Decoded frames keep at least this short side (when the image has it) for :meth:`features`.
    min_side: int

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
