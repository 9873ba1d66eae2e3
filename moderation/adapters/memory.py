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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from moderation.core.audit import AuditRecord, Retention, key_bounds
from moderation.core.embeddings import StoredEmbedding
from moderation.core.image_ref import ImageRef
from moderation.core.jobs import Job, JobResult, JobStatus
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
from moderation.core.reviewers import ReviewerAccount
from moderation.exceptions import (
    AuditError,
    AuditSinkUnavailable,
    ImageFetchError,
    ReviewAlreadyDecided,
    ReviewError,
    ReviewLeaseExpired,
    ReviewNotFound,
    ReviewNotLeaseHolder,
)
from moderation.ports import Claim, DeadLetter, DecideResult, ReviewStats

__all__ = [
    "MemoryAuditSink",
    "MemoryCallbacks",
    "MemoryEmbeddingStore",
    "MemoryJobStore",
    "MemoryPolicyFiles",
    "MemoryPublisher",
    "MemoryReviewQueue",
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
class MemoryJobStore:
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
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def create(self, job: Job, inline: bytes | None = None) -> tuple[Job, bool]:
        with self._lock:
            if job.id in self.jobs:
                return self.jobs[job.id], False
            self.jobs[job.id] = job
            self.results[job.id] = JobResult.queued(job)
            if inline is not None:
                self.inline[job.image.inline_key] = inline
            self.pending[job.id] = time.time()
            return job, True

    def delete(self, job_id: str) -> None:
        with self._lock:
            for table in (self.jobs, self.inline, self.results, self.deliveries, self.pending):
                table.pop(job_id, None)
            self.effects.discard(job_id)

    def get_job(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def inline_bytes(self, key: str) -> bytes | None:
        return self.inline.get(key)

    def keep_inline(self, key: str, ttl_s: int) -> None:
        pass  # nothing expires here

    def get_result(self, job_id: str) -> JobResult | None:
        return self.results.get(job_id)

    def finish(self, result: JobResult) -> bool:
        with self._lock:
            current = self.results.get(result.job_id)
            if current is not None and current.status.final:
                return False
            self.results[result.job_id] = result
            self.ended.append((result.job_id, result.status.value))
            self.pending.pop(result.job_id, None)
            review = result.verdict is not None and result.verdict.decision.value == "review"
            if result.status is JobStatus.DONE and not review:
                self.inline.pop(result.job_id, None)
            return True

    def set_human(self, job_id: str, human: HumanDecision) -> JobResult | None:
        with self._lock:
            current = self.results.get(job_id)
            if current is None:
                return None
            updated = current.model_copy(update={"human": human})
            self.results[job_id] = updated
            return updated

    def effects_done(self, job_id: str) -> bool:
        return job_id in self.effects

    def mark_effects_done(self, job_id: str) -> None:
        self.effects.add(job_id)

    def count_delivery(self, job_id: str) -> int:
        with self._lock:
            self.deliveries[job_id] = self.deliveries.get(job_id, 0) + 1
            return self.deliveries[job_id]

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
    """The :class:`~moderation.ports.TaskPublisher` twin: records what was published. ``fail``
    makes it refuse (a broker that is down)."""

    published: list[str] = field(default_factory=list)
    fail: Exception | None = None

    def publish(self, job_id: str) -> None:
        if self.fail is not None:
            raise self.fail
        self.published.append(job_id)

    def in_flight(self, max_scan: int = 20_000) -> set[str] | None:
        return set(self.published)

    def queue_depth(self) -> int:
        return len(self.published)


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
        if self.fail is not None:
            raise self.fail
        if self.closed:
            raise AuditError("audit log is closed", code="audit_closed")
        self.records.append(record)

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
        with self._lock:
            now = self.clock()
            self.items.append(dataclasses.replace(item, at=now))
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
