"""In-memory twins of the ports, for fast unit tests of the use cases (no servers).

Each twin keeps the contract of its port that the use cases rely on (a final result is written
once, review submission is idempotent, a lease is exclusive, ...) with plain dicts under a lock.
They are not for production: nothing survives the process.
"""

from __future__ import annotations

import dataclasses
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from moderation.core.admission import Admission, Bucket, Tenant, take
from moderation.core.audit import AuditRecord, Retention, key_bounds
from moderation.core.banks import (
    BankEntry,
    BankInfo,
    BankManifest,
    EntryData,
    Segment,
    is_bank_name,
)
from moderation.core.blobs import check_key, check_prefix
from moderation.core.embeddings import StoredEmbedding
from moderation.core.image_ref import ImageRef
from moderation.core.jobs import Job, JobResult, keeps_inline
from moderation.core.policy import Policy, PolicyMode, PolicySet
from moderation.core.review import (
    FirstDecision,
    HumanDecision,
    Lease,
    ReviewDecision,
    ReviewItem,
    ReviewOutcome,
    apply_decision,
    export_row,
    rank_key,
)
from moderation.core.reviewers import ReviewerAccount, ReviewerSession, session_alive
from moderation.exceptions import (
    AuditError,
    AuditSinkUnavailable,
    BankBusy,
    BankExists,
    BankNotFound,
    BlobNotFound,
    BlobStoreUnavailable,
    ImageFetchError,
    QueueFull,
    ReviewAlreadyDecided,
    ReviewError,
    ReviewLeaseExpired,
    ReviewNotFound,
    ReviewNotLeaseHolder,
)
from moderation.ports import (
    BankRequest,
    Claim,
    DeadLetter,
    DecideResult,
    ReviewStats,
    SingleJobOps,
)

__all__ = [
    "MemoryAuditSink",
    "MemoryBankStore",
    "MemoryBlobStore",
    "MemoryCallbacks",
    "MemoryEmbeddingStore",
    "MemoryJobStore",
    "MemoryLoginThrottle",
    "MemoryPolicyFiles",
    "MemoryPublisher",
    "MemoryRateLimiter",
    "MemoryReviewQueue",
    "MemoryReviewerSessions",
    "MemoryReviewerStore",
    "MemorySegmentStore",
    "MemorySource",
]


class MemorySource:
    """``mem://<name>``: images registered with :meth:`put`."""

    schemes = ("mem",)
    public = True

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.fetched: list[str] = []

    def put(self, name: str, data: bytes) -> ImageRef:
        self.objects[name] = data
        return ImageRef(uri=f"mem://{name}")

    def check(self, ref: ImageRef) -> None:
        if not ref.uri.startswith("mem://") or len(ref.uri) == len("mem://"):
            raise ImageFetchError(f"bad reference {ref.uri!r}", code="bad_reference")

    def fetch(self, ref: ImageRef) -> bytes:
        self.fetched.append(ref.uri)
        data = self.objects.get(ref.uri.removeprefix("mem://"))
        if data is None:
            raise ImageFetchError(f"{ref.uri}: not found", code="not_found")
        return data


@dataclass
class MemoryJobStore(SingleJobOps):
    """The :class:`~moderation.ports.JobStore` twin."""

    jobs: dict[str, Job] = field(default_factory=dict)
    inline: dict[str, bytes] = field(default_factory=dict)
    results: dict[str, JobResult] = field(default_factory=dict)
    deliveries: dict[str, int] = field(default_factory=dict)
    effects: set[str] = field(default_factory=set)
    ended: list[tuple[str, str]] = field(default_factory=list)
    dlq: dict[str, DeadLetter] = field(default_factory=dict)
    pending: dict[str, float] = field(default_factory=dict)
    locks: dict[str, float] = field(default_factory=dict)
    beats: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Bytes of each job that has not ended, and the cap on their sum (QueueFull over it).
    queued: dict[str, int] = field(default_factory=dict)
    max_queued_bytes: int = 1 << 62
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def create_many(self, jobs: Sequence[tuple[Job, bytes | None]]) -> list[tuple[Job, bool]]:
        out = []
        with self._lock:
            sizes = {
                job.id: len(job.model_dump_json()) + (len(inline) if inline else 0)
                for job, inline in jobs
                if job.id not in self.jobs
            }
            if sum(self.queued.values()) + sum(sizes.values()) > self.max_queued_bytes:
                raise QueueFull(f"queued bytes would exceed {self.max_queued_bytes}")
            for job, inline in jobs:
                if job.id in self.jobs:
                    out.append((self.jobs[job.id], False))
                    continue
                self.jobs[job.id] = job
                self.results[job.id] = JobResult.queued(job)
                if inline is not None:
                    self.inline[job.image.inline_key] = inline
                self.pending[job.id] = time.time()
                self.queued[job.id] = sizes[job.id]
                out.append((job, True))
        return out

    def delete(self, job_id: str) -> None:
        with self._lock:
            for table in (
                self.jobs,
                self.inline,
                self.results,
                self.deliveries,
                self.pending,
                self.queued,
            ):
                table.pop(job_id, None)
            self.effects.discard(job_id)

    def get_jobs(self, job_ids: Sequence[str]) -> list[Job | None]:
        return [self.jobs.get(job_id) for job_id in job_ids]

    def queued_bytes(self) -> int:
        return sum(self.queued.values())

    def inline_bytes_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return [self.inline.get(key) for key in keys]

    def keep_inline(self, key: str, ttl_s: int) -> None:
        pass  # nothing expires here

    def get_results(self, job_ids: Sequence[str]) -> list[JobResult | None]:
        return [self.results.get(job_id) for job_id in job_ids]

    def result_json(self, job_ids: Sequence[str]) -> list[bytes | None]:
        return [
            r.model_dump_json().encode() if r is not None else None
            for r in self.get_results(job_ids)
        ]

    def finish_many(self, results: Sequence[JobResult]) -> list[bool]:
        out = []
        with self._lock:
            for result in results:
                current = self.results.get(result.job_id)
                if current is not None and current.status.final:
                    out.append(False)
                    continue
                self.results[result.job_id] = result
                self.ended.append((result.job_id, result.status.value))
                self.pending.pop(result.job_id, None)
                self.queued.pop(result.job_id, None)
                if not keeps_inline(result):
                    self.inline.pop(result.job_id, None)
                out.append(True)
        return out

    def set_human(self, job_id: str, human: HumanDecision) -> JobResult | None:
        with self._lock:
            current = self.results.get(job_id)
            if current is None:
                return None
            updated = current.model_copy(update={"human": human})
            self.results[job_id] = updated
            return updated

    def effects_done_many(self, job_ids: Sequence[str]) -> list[bool]:
        return [job_id in self.effects for job_id in job_ids]

    def mark_effects_done_many(self, job_ids: Sequence[str]) -> None:
        self.effects.update(job_ids)

    def count_deliveries(self, job_ids: Sequence[str]) -> list[int]:
        with self._lock:
            for job_id in job_ids:
                self.deliveries[job_id] = self.deliveries.get(job_id, 0) + 1
            return [self.deliveries[job_id] for job_id in job_ids]

    def outcomes(self, count: int = 100_000) -> list[tuple[str, str]]:
        return list(self.ended[:count])

    def dead_letter(self, job_id: str, *, reason: str, deliveries: int) -> None:
        self.dlq[job_id] = DeadLetter(
            job_id=job_id, reason=reason, deliveries=deliveries, at=datetime.now(UTC)
        )

    def dead_letters(self) -> list[DeadLetter]:
        return sorted(self.dlq.values(), key=lambda d: d.at)

    def take_dead_letter(self, job_id: str) -> Job | None:
        with self._lock:
            if self.dlq.pop(job_id, None) is None or job_id not in self.jobs:
                return None
            job = self.jobs[job_id]
            self.results[job_id] = JobResult.queued(job)
            self.deliveries.pop(job_id, None)
            self.effects.discard(job_id)
            self.pending[job_id] = time.time()
            return job

    def purge_dead_letters(self) -> int:
        n = len(self.dlq)
        self.dlq.clear()
        return n

    def stale_pending(self, older_than_s: float, limit: int = 1000) -> list[str]:
        cutoff = time.time() - older_than_s
        return [j for j, at in sorted(self.pending.items(), key=lambda x: x[1]) if at <= cutoff][
            :limit
        ]

    def oldest_pending_age(self) -> float | None:
        return time.time() - min(self.pending.values()) if self.pending else None

    def dead_letter_count(self) -> int:
        return len(self.dlq)

    def mark_republished(self, job_id: str) -> None:
        if job_id in self.pending:
            self.pending[job_id] = time.time()

    def forget_pending(self, job_id: str) -> None:
        self.pending.pop(job_id, None)

    def try_lock(self, name: str, ttl_s: float) -> bool:
        with self._lock:
            now = time.monotonic()
            if self.locks.get(name, 0.0) > now:
                return False
            self.locks[name] = now + ttl_s
            return True

    def heartbeat(self, name: str, info: dict[str, Any], ttl_s: int = 30) -> None:
        self.beats[name] = {**info, "at": time.time()}

    def workers(self) -> list[dict[str, Any]]:
        return list(self.beats.values())

    def known_policies(self) -> dict[str, int]:
        known: dict[str, int] = {}
        for worker in self.beats.values():
            known.update({str(k): int(v) for k, v in worker.get("policies", {}).items()})
        return known

    def ping(self) -> bool:
        return True


@dataclass
class MemoryPublisher:
    """The :class:`~moderation.ports.TaskPublisher` twin: records the messages published (job
    ids, retries, countdown). ``fail`` makes it refuse (a broker that is down)."""

    messages: list[tuple[list[str], int, float]] = field(default_factory=list)
    fail: Exception | None = None

    @property
    def published(self) -> list[str]:
        """Every job id published, in order."""
        return [job_id for ids, _, _ in self.messages for job_id in ids]

    def publish(self, job_ids: Sequence[str], *, retries: int = 0, countdown: float = 0.0) -> None:
        if self.fail is not None:
            raise self.fail
        self.messages.append((list(job_ids), retries, countdown))

    def in_flight(self, max_scan: int = 20_000) -> set[str] | None:
        return set(self.published)

    def queue_depth(self) -> int:
        return len(self.published)


@dataclass
class MemoryRateLimiter:
    """The :class:`~moderation.ports.RateLimiter` twin: :func:`moderation.core.admission.take`
    on a dict, on ``clock`` (a fake clock in tests)."""

    clock: Callable[[], float] = time.time
    buckets: dict[str, Bucket] = field(default_factory=dict)

    def admit(self, tenant: Tenant, n: int) -> Admission:
        admission, bucket = take(self.buckets.get(tenant.name), n, self.clock(), tenant)
        self.buckets[tenant.name] = bucket
        return admission


@dataclass
class MemoryCallbacks:
    """The :class:`~moderation.ports.CallbackSender` twin: records scheduled callbacks."""

    sent: list[tuple[str, str, bytes]] = field(default_factory=list)

    def send(self, job_id: str, url: str, body: bytes) -> None:
        self.sent.append((job_id, url, body))


@dataclass
class MemoryAuditSink:
    """The :class:`~moderation.ports.AuditSink` twin: records in write order. ``fail`` makes
    ``write`` raise (S3 and the spool both down)."""

    records: list[AuditRecord] = field(default_factory=list)
    fail: Exception | None = None
    closed: bool = False

    def write(self, record: AuditRecord) -> None:
        self.write_many([record])

    def write_many(self, records: list[AuditRecord]) -> None:
        if self.fail is not None:
            raise self.fail
        if self.closed:
            raise AuditError("audit log is closed", code="audit_closed")
        self.records.extend(records)

    def close(self, timeout: float = 10.0) -> bool:
        self.closed = True
        return True


@dataclass
class MemorySegmentStore:
    """The :class:`~moderation.ports.SegmentStore` twin (no Object Lock)."""

    prefix: str = "audit/"
    objects: dict[str, bytes] = field(default_factory=dict)
    down: bool = False

    @property
    def object_lock(self) -> bool:
        return False

    def _check(self) -> None:
        if self.down:
            raise AuditSinkUnavailable("memory store is down")

    def put(self, key: str, data: bytes, *, created: datetime) -> None:
        self._check()
        self.objects[key] = data

    def list_keys(
        self, start: datetime | None = None, end: datetime | None = None
    ) -> Iterator[str]:
        self._check()
        low, high = key_bounds(self.prefix, start, end)
        for key in sorted(self.objects):
            if (low is None or key > low) and (high is None or key <= high):
                yield key

    def get(self, key: str) -> bytes:
        self._check()
        return self.objects[key]

    def retention(self, key: str) -> Retention | None:
        return None

    def describe(self) -> str:
        return "memory"


@dataclass
class MemoryBlobStore:
    """The :class:`~moderation.ports.BlobStore` twin. ``down`` makes every call raise
    ``BlobStoreUnavailable`` (S3 unreachable)."""

    objects: dict[str, bytes] = field(default_factory=dict)
    down: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _check(self, key: str) -> str:
        if self.down:
            raise BlobStoreUnavailable("memory blob store is down")
        return check_key(key)

    def put(self, key: str, data: bytes) -> None:
        with self._lock:
            self.objects[self._check(key)] = bytes(data)

    def get(self, key: str) -> bytes:
        with self._lock:
            try:
                return self.objects[self._check(key)]
            except KeyError:
                raise BlobNotFound(f"no object {key}") from None

    def exists(self, key: str) -> bool:
        with self._lock:
            return self._check(key) in self.objects

    def delete(self, key: str) -> None:
        with self._lock:
            self.objects.pop(self._check(key), None)

    def list(self, prefix: str = "") -> Iterator[str]:
        if self.down:
            raise BlobStoreUnavailable("memory blob store is down")
        check_prefix(prefix)
        with self._lock:
            keys = sorted(k for k in self.objects if k.startswith(prefix))
        yield from keys

    def describe(self) -> str:
        return "memory"


@dataclass
class MemoryReviewerStore:
    """The :class:`~moderation.ports.ReviewerStore` twin."""

    accounts: dict[str, ReviewerAccount] = field(default_factory=dict)

    def create(self, account: ReviewerAccount) -> None:
        if account.username in self.accounts:
            raise ReviewError(f"reviewer {account.username!r} exists", code="review_user_exists")
        self.accounts[account.username] = account

    def get(self, username: str) -> ReviewerAccount | None:
        return self.accounts.get(username)

    def all(self) -> list[ReviewerAccount]:
        return [self.accounts[k] for k in sorted(self.accounts)]

    def set_disabled(self, username: str, disabled: bool) -> None:
        account = self.accounts.get(username)
        if account is None:
            raise ReviewError(f"no reviewer {username!r}", code="review_unknown_user")
        self.accounts[username] = ReviewerAccount(
            username=account.username,
            role=account.role,
            password_hash=account.password_hash,
            disabled=disabled,
            created_at=account.created_at,
        )


@dataclass
class MemoryReviewerSessions:
    """The :class:`~moderation.ports.ReviewerSessions` twin (same timeout rule)."""

    idle_s: float = 1800.0
    max_s: float = 43200.0
    sessions: dict[str, ReviewerSession] = field(default_factory=dict)

    def create(self, key: str, session: ReviewerSession) -> None:
        self.sessions[key] = session

    def touch(self, key: str, now: float) -> ReviewerSession | None:
        session = self.sessions.get(key)
        if session is None:
            return None
        if not session_alive(session, now, idle_s=self.idle_s, max_s=self.max_s):
            del self.sessions[key]
            return None
        touched = ReviewerSession(
            username=session.username,
            created_at=session.created_at,
            last_seen=now,
            nonce=session.nonce,
        )
        self.sessions[key] = touched
        return touched

    def end(self, key: str) -> bool:
        return self.sessions.pop(key, None) is not None

    def end_all(self, username: str) -> int:
        mine = [k for k, s in self.sessions.items() if s.username == username]
        for key in mine:
            del self.sessions[key]
        return len(mine)

    def count(self, username: str) -> int:
        return sum(s.username == username for s in self.sessions.values())


@dataclass
class MemoryLoginThrottle:
    """The :class:`~moderation.ports.LoginThrottle` twin."""

    failures: dict[str, tuple[int, float]] = field(default_factory=dict)  # key -> (n, expires)
    blocks: dict[str, float] = field(default_factory=dict)

    def blocked_for(self, keys: Sequence[str], now: float) -> float:
        return max([0.0, *(self.blocks.get(k, 0.0) - now for k in keys)])

    def fail(self, key: str, now: float, *, window_s: float) -> int:
        count, expires = self.failures.get(key, (0, 0.0))
        count = count + 1 if expires > now else 1
        self.failures[key] = (count, now + window_s)
        return count

    def block(self, key: str, until: float) -> None:
        self.blocks[key] = max(until, self.blocks.get(key, 0.0))

    def clear(self, key: str) -> None:
        self.failures.pop(key, None)
        self.blocks.pop(key, None)


@dataclass
class _Entry:
    item: ReviewItem
    rank: float
    state: str = "queued"  # queued | leased | final
    lease: Lease | None = None
    first: FirstDecision | None = None
    final: HumanDecision | None = None
    tokens: dict[str, str] = field(default_factory=dict)  # token -> reviewer (every lease)
    submitted: dict[str, tuple[ReviewDecision, str | None]] = field(default_factory=dict)
    delivered: bool = False


class MemoryReviewQueue:
    """The :class:`~moderation.ports.ReviewQueue` twin: the same priority, lease and
    second-reviewer rules as the Redis queue (:mod:`moderation.core.review`), on a dict."""

    def __init__(
        self, *, lease_s: float = 300.0, age_doubling_s: float = 900.0, clock: Any = time.time
    ) -> None:
        self.lease_s = lease_s
        self.age_doubling_s = age_doubling_s
        self.clock = clock
        self.entries: dict[str, _Entry] = {}
        self.days: dict[str, dict[str, int]] = {}
        self._lock = threading.RLock()

    def now(self) -> float:
        return float(self.clock())

    def submit(self, item: ReviewItem) -> None:
        with self._lock:
            if item.review_id not in self.entries:
                rank = rank_key(
                    item.severity, item.score, item.created_at, age_doubling_s=self.age_doubling_s
                )
                self.entries[item.review_id] = _Entry(item=item, rank=rank)

    def _reap(self, now: float) -> None:
        for entry in self.entries.values():
            if entry.state == "leased" and entry.lease and entry.lease.expires_at <= now:
                entry.state, entry.lease = "queued", None

    def claim(self, reviewer: str, *, policies: list[str] | None = None) -> Claim | None:
        with self._lock:
            now = self.clock()
            self._reap(now)
            for entry in self.entries.values():
                if entry.state == "leased" and entry.lease and entry.lease.reviewer == reviewer:
                    return Claim(item=entry.item, lease=entry.lease, first=entry.first, now=now)
            waiting = [
                e
                for e in self.entries.values()
                if e.state == "queued"
                and (not policies or e.item.policy_id in policies)
                and (e.first is None or e.first.reviewer != reviewer)
            ]
            if not waiting:
                return None
            entry = max(waiting, key=lambda e: e.rank)
            token = secrets.token_urlsafe(18)
            entry.state = "leased"
            entry.lease = Lease(
                review_id=entry.item.review_id,
                reviewer=reviewer,
                token=token,
                expires_at=now + self.lease_s,
            )
            entry.tokens[token] = reviewer
            return Claim(item=entry.item, lease=entry.lease, first=entry.first, now=now)

    def holds(self, reviewer: str, review_id: str) -> bool:
        entry = self.entries.get(review_id)
        return bool(
            entry
            and entry.state == "leased"
            and entry.lease
            and entry.lease.reviewer == reviewer
            and entry.lease.expires_at > self.clock()
        )

    def item(self, review_id: str) -> ReviewItem:
        entry = self.entries.get(review_id)
        if entry is None:
            raise ReviewNotFound(f"no review item {review_id}")
        return entry.item

    def decide(
        self,
        review_id: str,
        *,
        reviewer: str,
        token: str,
        decision: ReviewDecision,
        reason_code: str | None,
    ) -> DecideResult:
        with self._lock:
            entry = self.entries.get(review_id)
            if entry is None:
                raise ReviewNotFound(f"no review item {review_id}")
            recorded = entry.submitted.get(token)
            if recorded is not None:
                if recorded != (decision, reason_code):
                    raise ReviewAlreadyDecided("a different decision was already recorded")
                pending = entry.first if entry.final is None else None
                return DecideResult(ReviewOutcome(final=entry.final, pending=pending), replay=True)
            now = self.clock()
            lease = entry.lease
            if lease is None or lease.token != token:
                if entry.tokens.get(token) == reviewer:
                    if entry.state == "final":
                        raise ReviewAlreadyDecided("this item was already decided by someone else")
                    raise ReviewLeaseExpired(
                        "your lease on this item expired and it went back to the queue; "
                        "the decision was not recorded"
                    )
                raise ReviewNotLeaseHolder("you do not hold a lease on this item")
            if lease.reviewer != reviewer:
                raise ReviewNotLeaseHolder("this lease belongs to another reviewer")
            if lease.expires_at <= now:
                raise ReviewLeaseExpired(
                    "your lease on this item expired; the decision was not recorded"
                )
            outcome = apply_decision(
                entry.item,
                entry.first,
                reviewer=reviewer,
                decision=decision,
                reason_code=reason_code,
                token=token,
                now=now,
            )
            entry.submitted[token] = (decision, reason_code)
            entry.lease = None
            day = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")
            counts = self.days.setdefault(day, {})
            counts[reviewer] = counts.get(reviewer, 0) + 1
            if outcome.pending is not None:
                entry.first, entry.state = outcome.pending, "queued"
            else:
                entry.final, entry.state = outcome.final, "final"
            claimed_at = lease.expires_at - self.lease_s
            return DecideResult(outcome, replay=False, handling_s=max(0.0, now - claimed_at))

    def release(self, review_id: str, *, reviewer: str | None = None) -> bool:
        with self._lock:
            entry = self.entries.get(review_id)
            if entry is None:
                raise ReviewNotFound(f"no review item {review_id}")
            if entry.state == "final":
                raise ReviewAlreadyDecided("the item is already decided")
            if entry.lease is None or (reviewer is not None and entry.lease.reviewer != reviewer):
                return False
            entry.state, entry.lease = "queued", None
            return True

    def delivered(self, review_id: str) -> None:
        entry = self.entries.get(review_id)
        if entry is not None:
            entry.delivered = True

    def undelivered(self, *, older_than_s: float = 0.0) -> list[HumanDecision]:
        cutoff = self.clock() - older_than_s
        return [
            e.final
            for e in self.entries.values()
            if e.final is not None and not e.delivered and e.final.decided_at.timestamp() <= cutoff
        ]

    def stats(self) -> list[ReviewStats]:
        now = self.clock()
        out = []
        for policy in sorted({e.item.policy_id for e in self.entries.values()}):
            mine = [e for e in self.entries.values() if e.item.policy_id == policy]
            open_ = [e.item.created_at for e in mine if e.state != "final"]
            out.append(
                ReviewStats(
                    policy_id=policy,
                    waiting=sum(e.state == "queued" for e in mine),
                    in_review=sum(e.state == "leased" for e in mine),
                    oldest_age_s=max(0.0, now - min(open_)) if open_ else None,
                )
            )
        return out

    def decisions_on(self, day: str | None = None) -> dict[str, int]:
        day = day or datetime.fromtimestamp(self.clock(), UTC).strftime("%Y-%m-%d")
        return dict(self.days.get(day, {}))

    def export(self) -> Iterator[dict[str, Any]]:
        decided = [e for e in self.entries.values() if e.final is not None]
        for entry in sorted(decided, key=lambda e: e.final.decided_at if e.final else 0):
            assert entry.final is not None
            yield export_row(entry.item, entry.final)


@dataclass
class _Bank:
    info: BankInfo
    segments: list[Segment] = field(default_factory=list)
    hashes: dict[int, bytearray] = field(default_factory=dict)  # segment number -> hashes
    meta: dict[int, EntryData] = field(default_factory=dict)  # entry id -> data
    removed: set[int] = field(default_factory=set)
    next_id: int = 0
    locked: bool = False


class MemoryBankStore:
    """The :class:`~moderation.ports.BankStore` twin: the same segments, tombstones, versions
    and write lock as the Redis store, in dicts. ``segment_rows`` is small so tests see several
    segments."""

    def __init__(self, *, segment_rows: int = 1000) -> None:
        self.segment_rows = segment_rows
        self._banks: dict[str, _Bank] = {}
        self._version = 0
        self._requests: dict[str, BankRequest] = {}
        self._lock = threading.RLock()

    def _bank(self, name: str) -> _Bank:
        bank = self._banks.get(name)
        if bank is None:
            raise BankNotFound(f"no bank {name!r}")
        return bank

    def _bump(self, bank: _Bank, **changes: int) -> None:
        info = bank.info
        update = {"version": info.version + 1}
        for key, delta in changes.items():
            update[key] = getattr(info, key) + delta
        bank.info = info.model_copy(update=update)
        self._version += 1

    def create(self, name: str, *, description: str = "") -> BankInfo:
        with self._lock:
            if not is_bank_name(name):
                raise BankNotFound(f"{name!r} is not a bank name")
            if name in self._banks:
                raise BankExists(f"bank {name!r} already exists")
            info = BankInfo(
                name=name, description=description, created_at=datetime.now(UTC), version=1
            )
            self._banks[name] = _Bank(info=info)
            self._version += 1
            return info

    def delete(self, name: str) -> bool:
        with self._lock:
            self._version += 1
            return self._banks.pop(name, None) is not None

    def info(self, name: str) -> BankInfo:
        return self._bank(name).info

    def banks(self) -> list[BankInfo]:
        return [self._banks[n].info for n in sorted(self._banks)]

    def version(self) -> int:
        return self._version

    def manifest(self, name: str) -> BankManifest:
        with self._lock:
            bank = self._bank(name)
            return BankManifest(
                name=name,
                epoch=bank.info.created_at.isoformat(),
                version=bank.info.version,
                segments=tuple(bank.segments),
                removed=frozenset(bank.removed),
            )

    def read_hashes(self, name: str, segment: Segment, start: int = 0) -> bytes:
        data = self._bank(name).hashes.get(segment.number, bytearray())
        return bytes(data[start * 32 : segment.count * 32])

    @contextmanager
    def writing(self, name: str) -> Iterator[None]:
        with self._lock:
            bank = self._bank(name)
            if bank.locked:
                raise BankBusy(f"bank {name!r} is being written by another import or edit")
            bank.locked = True
        try:
            yield
        finally:
            bank.locked = False

    def append(
        self,
        name: str,
        entries: Sequence[EntryData],
        *,
        progress: Callable[[int], object] | None = None,
    ) -> list[int]:
        with self._lock:
            bank = self._bank(name)
            ids = list(range(bank.next_id, bank.next_id + len(entries)))
            for entry_id, entry in zip(ids, entries, strict=True):
                tail = bank.segments[-1] if bank.segments else None
                if tail is None or tail.count >= self.segment_rows or tail.end_id != entry_id:
                    number = tail.number + 1 if tail else 0
                    tail = Segment(number=number, first_id=entry_id, count=0)
                    bank.segments.append(tail)
                    bank.hashes[number] = bytearray()
                bank.hashes[tail.number] += bytes.fromhex(entry.pdq)
                bank.segments[-1] = tail.model_copy(update={"count": tail.count + 1})
                bank.meta[entry_id] = entry
            bank.next_id += len(entries)
            if entries:
                self._bump(bank, entries=len(entries))
            if progress is not None:
                progress(len(entries))
            return ids

    def remove(self, name: str, ids: Iterable[int]) -> int:
        with self._lock:
            bank = self._bank(name)
            live = {i for i in ids if i in bank.meta and i not in bank.removed}
            if live:
                bank.removed |= live
                self._bump(bank, entries=-len(live), removed=len(live))
            return len(live)

    def entries(self, name: str, ids: Sequence[int]) -> dict[int, BankEntry]:
        bank = self._bank(name)
        return {
            i: BankEntry.of(name, i, bank.meta[i])
            for i in ids
            if i in bank.meta and i not in bank.removed
        }

    def scan(self, name: str) -> Iterator[BankEntry]:
        bank = self._bank(name)
        for i in sorted(bank.meta):
            if i not in bank.removed:
                yield BankEntry.of(name, i, bank.meta[i])

    def request_addition(self, request: BankRequest, ttl_s: int) -> None:
        self._requests[request.review_id] = request

    def addition_request(self, review_id: str) -> BankRequest | None:
        return self._requests.get(review_id)


class MemoryEmbeddingStore:
    """The :class:`~moderation.ports.EmbeddingStore` twin: a deque in time order, trimmed to
    ``retention_s`` and ``max_items`` on every write."""

    def __init__(
        self,
        *,
        retention_s: float = 30 * 24 * 3600,
        max_items: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.retention_s = retention_s
        self.max_items = max_items
        self.clock = clock
        self.items: deque[StoredEmbedding] = deque()
        self._lock = threading.Lock()

    def add(self, item: StoredEmbedding) -> None:
        self.add_many([item])

    def add_many(self, items: Sequence[StoredEmbedding]) -> None:
        with self._lock:
            now = self.clock()
            self.items.extend(dataclasses.replace(item, at=now) for item in items)
            while self.items and self.items[0].at < now - self.retention_s:
                self.items.popleft()
            while self.max_items is not None and len(self.items) > self.max_items:
                self.items.popleft()

    def scan(
        self, *, since: float, until: float | None = None, page: int = 1000
    ) -> Iterator[list[StoredEmbedding]]:
        since = max(since, self.clock() - self.retention_s)
        with self._lock:
            found = [i for i in self.items if i.at >= since and (until is None or i.at <= until)]
        for start in range(0, len(found), page):
            yield found[start : start + page]

    def count(self) -> int:
        return len(self.items)


class MemoryPolicyFiles:
    """The :class:`~moderation.ports.PolicyFiles` twin: validated policies by source name."""

    def __init__(self, policies: list[tuple[Policy, str]]) -> None:
        self.files: dict[str, Policy] = {source: policy for policy, source in policies}
        self.retired: dict[str, Policy] = {}

    def load(self) -> PolicySet:
        return PolicySet((policy, source) for source, policy in self.files.items())

    def promotion_plan(self, shadow_source: str, live_source: str | None) -> dict[str, str]:
        if live_source is None:
            return {"live_file": shadow_source, "from_file": shadow_source, "retired_file": ""}
        old = self.files[live_source]
        return {
            "live_file": live_source,
            "from_file": shadow_source,
            "retired_file": f"retired/{live_source}.v{old.version}",
        }

    def promote(self, plan: dict[str, str]) -> None:
        shadow = self.files[plan["from_file"]]
        if plan["retired_file"]:
            self.retired[plan["retired_file"]] = self.files[plan["live_file"]]
        self.files[plan["live_file"]] = shadow.model_copy(update={"mode": PolicyMode.LIVE})
        if plan["from_file"] != plan["live_file"]:
            del self.files[plan["from_file"]]
