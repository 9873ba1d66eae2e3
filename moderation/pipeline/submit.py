"""Submitting jobs: the use case behind ``POST /v1/jobs`` and ``/v1/jobs:batch``.

Every submission belongs to a tenant (:class:`~moderation.core.admission.Tenant`, resolved at
the HTTP edge from the API key and passed in explicitly). Job ids are namespaced per tenant
(:func:`~moderation.core.jobs.scoped_id`): a tenant reads, squats or collides only with its own
ids.

Every request of a submission is validated before anything is stored (unknown or not-allowed
policy, missing or oversize image, metadata too large or too deep, unsupported scheme, bad
callback URL, the batch's total inline bytes, an id already used for a different request:
:class:`~moderation.exceptions.JobRejected` with an HTTP status and a stable code). Then the
tenant's admission (token bucket and daily quota, :class:`~moderation.ports.RateLimiter`) takes
one token per new job, or refuses the whole submission with ``Retry-After``; the global cap on
queued bytes refuses it with 503 when workers are far behind. Then each job is created with
set-if-absent semantics (the id is an idempotency key: the same request again is a duplicate,
a different request with the same id a 409 conflict) and its message published; if the broker
refuses the message the job record is rolled back, so nothing is half-enqueued. A crash between
the two is repaired by the lost-message sweep (the job stays in the pending index).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from moderation.core.admission import Tenant
from moderation.core.fairness import HIGH, NORMAL
from moderation.core.image_ref import ImageRef, spill_key
from moderation.core.jobs import (
    JOB_ID_PATTERN,
    Job,
    JobResult,
    JobStatus,
    is_job_id,
    new_job_id,
    request_fingerprint,
    scoped_id,
)
from moderation.core.media import VIDEO, media_hint, media_of
from moderation.core.strikes import is_uploader_id
from moderation.exceptions import (
    ImageFetchError,
    JobConflict,
    JobNotFoundError,
    JobRejected,
    ModerationError,
    PolicyError,
    QueueFull,
    RateLimited,
    SourceNotAllowed,
    TenantQueueFull,
)
from moderation.metrics import metrics
from moderation.pipeline.sources import ImageSources
from moderation.pipeline.uploads import StoredUpload, drop_upload
from moderation.ports import BlobStore, JobStore, RateLimiter, TaskPublisher, WorkerRegistry
from moderation.settings import QueueSettings

__all__ = ["Accepted", "PolicyCatalog", "SubmitRequest", "Submitter", "metadata_depth"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SubmitRequest:
    """One image to moderate: a reference or the bytes themselves (exactly one)."""

    image_url: str | None = None
    image_bytes: bytes | None = None
    policies: list[str] | None = None
    id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    callback_url: str | None = None
    #: ``"high"``: the tenant's priority lane, within its ``high_priority_per_minute``.
    priority: str = NORMAL
    #: The tenant's pseudonymous id of who posted it (strikes; ``UPLOADER_ID_PATTERN``).
    uploader_id: str | None = None
    #: A large uploaded part the API already streamed to the object store (instead of
    #: ``image_bytes``; :mod:`moderation.pipeline.uploads`).
    image_upload: StoredUpload | None = None


@dataclass(frozen=True, slots=True)
class Accepted:
    #: The job id as the tenant sees it (its own id, or the one generated for it).
    id: str
    status: JobStatus
    duplicate: bool


class PolicyCatalog:
    """Policy ids a request may name: those the live workers serve (from their heartbeats), else
    those in the policy files (re-read at most every ``ttl_s`` seconds)."""

    def __init__(
        self, registry: WorkerRegistry, load_ids: Callable[[], set[str]], *, ttl_s: float = 10.0
    ) -> None:
        self.registry = registry
        self._load_ids = load_ids
        self._ttl_s = ttl_s
        self._files: tuple[float, set[str]] | None = None

    def _from_files(self) -> set[str]:
        if self._files is not None and time.monotonic() - self._files[0] < self._ttl_s:
            return self._files[1]
        try:
            known = self._load_ids()
        except PolicyError as exc:
            log.warning("cannot read policy files: %s", exc)
            known = set()
        self._files = (time.monotonic(), known)
        return known

    def known(self) -> set[str]:
        from_workers = self.registry.known_policies()
        return set(from_workers) if from_workers else self._from_files()


#: Characters no URL may hold unencoded (C0 controls, DEL, C1 controls).
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f]")


def _reject(status: int, code: str, message: str) -> JobRejected:
    return JobRejected(message, status=status, code=code)


def metadata_depth(value: Any) -> int:
    """Nesting depth of a JSON value (a scalar is 0, ``{}`` and ``[]`` are 1). Iterative."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Sequence[Any] = list(item.values())
        elif isinstance(item, list):
            children = item
        else:
            deepest = max(deepest, depth)
            continue
        deepest = max(deepest, depth + 1)
        stack.extend((child, depth + 1) for child in children)
    return deepest


@dataclass(frozen=True, slots=True)
class _Valid:
    job: Job
    inline: bytes | None
    caller_id: bool  # the caller chose the id (a conflict is possible)


class Submitter:
    """Validates, admits and enqueues jobs. Thread-safe."""

    def __init__(
        self,
        *,
        store: JobStore,
        publisher: TaskPublisher,
        sources: ImageSources,
        catalog: PolicyCatalog,
        settings: QueueSettings,
        check_callback_url: Callable[[str], None],
        limiter: RateLimiter | None = None,
        blobs: BlobStore | None = None,
    ) -> None:
        self.store = store
        #: Where inline images over ``settings.inline_spill_bytes`` go (None: never spilled).
        self.blobs = blobs
        self.publisher = publisher
        self.sources = sources
        self.catalog = catalog
        self.settings = settings
        self.check_callback_url = check_callback_url
        self.limiter = limiter

    # --- validation --------------------------------------------------------------------------

    def _policies(
        self, request: SubmitRequest, known: set[str], tenant: Tenant
    ) -> list[str] | None:
        allowed = set(tenant.policies) if tenant.policies is not None else None
        if request.policies is None:
            if tenant.policies is None:
                return None
            missing = sorted(set(tenant.policies) - known)
            if missing:
                raise _reject(
                    400,
                    "policy_unknown",
                    f"the policy set of tenant {tenant.name} names unknown policies "
                    f"{', '.join(missing)}; known: {', '.join(sorted(known)) or 'none'}",
                )
            return list(tenant.policies)
        if not request.policies:
            raise _reject(
                400, "no_policies", "policies is empty; omit it to apply every active policy"
            )
        unknown = sorted(set(request.policies) - known)
        if unknown:
            raise _reject(
                400,
                "policy_unknown",
                f"unknown policy {', '.join(unknown)}; known: {', '.join(sorted(known)) or 'none'}",
            )
        if allowed is not None:
            refused = sorted(set(request.policies) - allowed)
            if refused:
                raise _reject(
                    400,
                    "policy_not_allowed",
                    f"policy {', '.join(refused)} is not in this tenant's policy set "
                    f"({', '.join(sorted(allowed))})",
                )
        return list(request.policies)

    def _check_metadata(self, metadata: dict[str, Any]) -> None:
        depth = metadata_depth(metadata)
        if depth > self.settings.max_metadata_depth:
            raise _reject(
                400,
                "metadata_too_deep",
                f"metadata is nested {depth} levels deep; at most "
                f"{self.settings.max_metadata_depth}",
            )
        try:
            size = len(json.dumps(metadata, separators=(",", ":"), ensure_ascii=False).encode())
        except UnicodeEncodeError as exc:  # JSON allows "\ud800"; Unicode text does not
            raise _reject(
                400,
                "metadata_invalid",
                "metadata holds a lone UTF-16 surrogate (\\ud800-\\udfff): not Unicode text",
            ) from exc
        if size > self.settings.max_metadata_bytes:
            raise _reject(
                413,
                "metadata_too_large",
                f"metadata is {size} bytes (compact JSON); at most "
                f"{self.settings.max_metadata_bytes}",
            )

    def validate(self, request: SubmitRequest, known: set[str], tenant: Tenant) -> _Valid:
        """The job a request describes (with its scoped id), and its inline bytes.

        Raises:
            JobRejected: the request is invalid (status 400 or 413, stable code).
        """
        if request.id is not None and not is_job_id(request.id):
            raise _reject(
                422,
                "invalid_id",
                f"id must match {JOB_ID_PATTERN}: 1 to 128 letters, digits and . _ : - "
                "(no '/', spaces or control characters)",
            )
        job_id = scoped_id(tenant.name, request.id or new_job_id())
        inline = request.image_bytes
        given = [request.image_url, inline, request.image_upload]
        if sum(x is not None for x in given) != 1:
            raise _reject(400, "missing_image", "give exactly one of image_url and image_base64")
        if request.image_upload is not None:
            # Streamed to the object store by the API, within video.max_upload_bytes.
            image = ImageRef.for_spill(request.image_upload.key)
            what = "sha256:" + request.image_upload.sha256
            media = media_of(request.image_upload.head)
        elif inline is not None:
            if not inline:
                raise _reject(400, "empty_image", "the image is empty")
            if len(inline) > self.settings.max_inline_bytes:
                raise _reject(
                    413,
                    "inline_too_large",
                    f"inline image is {len(inline)} bytes; the limit is "
                    f"{self.settings.max_inline_bytes}: upload it and send image_url",
                )
            spill = self.settings.inline_spill_bytes
            if self.blobs is not None and spill is not None and len(inline) > spill:
                image = ImageRef.for_spill(spill_key(job_id, datetime.now(UTC).date()))
            else:
                image = ImageRef.for_inline(job_id)
            what = "sha256:" + hashlib.sha256(inline).hexdigest()
            media = media_of(inline)
        else:
            uri = (request.image_url or "").strip()
            if not uri:
                raise _reject(400, "missing_image", "image_url is empty")
            if len(uri) > 4096:
                raise _reject(400, "bad_reference", "image_url is longer than 4096 characters")
            if _CONTROLS.search(uri):
                raise _reject(
                    400,
                    "bad_reference",
                    "image_url holds control characters (CR, LF, ...); percent-encode them",
                )
            image = ImageRef(uri=uri)
            try:
                self.sources.check(image, tenant=tenant.name)
            except SourceNotAllowed as exc:
                raise _reject(422, exc.code, str(exc)) from exc
            except ImageFetchError as exc:
                raise _reject(400, exc.code, str(exc)) from exc
            what = uri
            media = media_hint(uri)
        if request.priority not in (NORMAL, HIGH):
            raise _reject(400, "bad_priority", f"priority must be {NORMAL!r} or {HIGH!r}")
        policies = self._policies(request, known, tenant)
        self._check_metadata(request.metadata)
        if request.uploader_id is not None and not is_uploader_id(request.uploader_id):
            raise _reject(
                400,
                "bad_uploader_id",
                "uploader_id must be a pseudonymous id: 1-128 letters, digits, '.', '_', ':' "
                "or '-', starting with a letter or digit",
            )
        if request.callback_url is not None:
            try:
                self.check_callback_url(request.callback_url)
            except ImageFetchError as exc:
                raise _reject(400, "bad_callback_url", f"callback_url: {exc}") from exc
        job = Job(
            id=job_id,
            image=image,
            policies=policies,
            metadata=request.metadata,
            callback_url=request.callback_url,
            tenant=tenant.name,
            priority=request.priority,
            fingerprint=request_fingerprint(
                image=what,
                policies=policies,
                metadata=request.metadata,
                callback_url=request.callback_url,
                uploader_id=request.uploader_id,
            ),
            uploader_id=request.uploader_id,
            media=media,
        )
        return _Valid(job, inline, caller_id=request.id is not None)

    def _conflicts(self, valid: list[_Valid]) -> None:
        """An id used twice in the batch, or already stored, for a different request."""
        first: dict[str, tuple[int, _Valid]] = {}
        for index, v in enumerate(valid):
            seen = first.setdefault(v.job.id, (index, v))
            if seen[1].job.fingerprint != v.job.fingerprint:
                raise JobConflict(
                    f"jobs[{index}]: id {v.job.public_id!r} is also jobs[{seen[0]}], "
                    "with a different request",
                    existing_id=v.job.public_id,
                    index=index,
                )
        if len(valid) == 1:
            return  # nothing else to enqueue first: create() finds a conflict without a read
        chosen = [(i, v) for i, v in enumerate(valid) if v.caller_id]
        stored = self.store.get_jobs([v.job.id for _, v in chosen]) if chosen else []
        for (index, v), existing in zip(chosen, stored, strict=True):
            if existing is not None and _differs(existing, v.job):
                raise JobConflict(
                    f"id {v.job.public_id!r} is taken by a job submitted with a different "
                    "request; resubmit the same request, or use a new id",
                    existing_id=existing.public_id,
                    index=index,
                )

    # --- submission --------------------------------------------------------------------------

    def submit(self, requests: Sequence[SubmitRequest], *, tenant: Tenant) -> list[Accepted]:
        """Validate every request, admit the tenant's new jobs, then enqueue each job
        (idempotent by id).

        Raises:
            JobRejected: a request is invalid (``index`` names it in a batch), JobConflict (409)
                or RateLimited (429); nothing was enqueued.
            TenantQueueFull: the tenant's own jobs hold its share of the queued bytes (429);
                nothing was enqueued.
            QueueFull: too many bytes wait for the workers (503); nothing was enqueued.
            QueueUnavailable: Redis or the broker is down.
        """
        try:
            return self._submit(requests, tenant)
        except JobRejected as exc:
            metrics().rejected.labels(tenant.name, exc.code).inc()
            raise
        except QueueFull as exc:
            metrics().rejected.labels(tenant.name, exc.code).inc()
            raise

    def _submit(self, requests: Sequence[SubmitRequest], tenant: Tenant) -> list[Accepted]:
        """:meth:`_admit_and_enqueue`; the streamed uploads no new job refers to (a refused
        request, a duplicate) are deleted from the object store."""
        uploads = {r.image_upload.key: r.image_upload for r in requests if r.image_upload}
        if not uploads:
            return self._admit_and_enqueue(requests, tenant)
        kept: set[str] = set()
        try:
            accepted = self._admit_and_enqueue(requests, tenant)
            kept = {
                r.image_upload.key
                for r, a in zip(requests, accepted, strict=True)
                if r.image_upload is not None and not a.duplicate
            }
            return accepted
        finally:
            if self.blobs is not None:
                for key, stored in uploads.items():
                    if key not in kept:
                        drop_upload(self.blobs, stored)

    def _admit_and_enqueue(
        self, requests: Sequence[SubmitRequest], tenant: Tenant
    ) -> list[Accepted]:
        q = self.settings
        if len(requests) > q.max_batch_jobs:
            raise _reject(
                413, "batch_too_large", f"{len(requests)} jobs; at most {q.max_batch_jobs}"
            )
        known = self.catalog.known()
        valid: list[_Valid] = []
        for index, request in enumerate(requests):
            try:
                valid.append(self.validate(request, known, tenant))
            except JobRejected as exc:
                if len(requests) > 1:
                    exc.message = f"jobs[{index}]: {exc.message}"
                    exc.args = (exc.message,)
                    exc.index = index
                raise
        inline_total = sum(len(v.inline) for v in valid if v.inline is not None)
        if len(valid) > 1 and inline_total > q.max_batch_bytes:
            raise _reject(
                413,
                "batch_too_large",
                f"the batch carries {inline_total} inline image bytes; at most "
                f"{q.max_batch_bytes} per request",
            )
        self._conflicts(valid)
        # What Redis will hold: spilled images go to the object store.
        inline_total = sum(
            len(v.inline) for v in valid if v.inline is not None and not v.job.image.spilled
        )
        cap = self._tenant_cap(tenant)
        if (
            inline_total
            and cap is not None
            and self.store.queued_bytes(tenant.name) + inline_total > cap
        ):
            raise self._tenant_full(tenant, cap)
        if inline_total and self.store.queued_bytes() + inline_total > q.max_queued_bytes:
            raise QueueFull(
                "too many bytes are waiting for the workers; retry later",
                retry_after_s=q.queue_full_retry_s,
            )
        self._admit_high(tenant, sum(1 for v in valid if v.job.priority == HIGH))
        self._admit(tenant, len(valid))
        return self._enqueue(valid, tenant_cap=cap)

    def _tenant_cap(self, tenant: Tenant) -> int | None:
        """The tenant's own cap on queued bytes, where it is below the global one."""
        own = tenant.max_queued_bytes
        return own if own is not None and own < self.settings.max_queued_bytes else None

    def _tenant_full(self, tenant: Tenant, cap: int) -> TenantQueueFull:
        return TenantQueueFull(
            f"tenant {tenant.name} has {cap} bytes of jobs waiting for the workers, its share "
            "of the queue; retry when some of them have ended",
            retry_after_s=self.settings.queue_full_retry_s,
        )

    def _admit_high(self, tenant: Tenant, n: int) -> None:
        """Take ``n`` jobs from the tenant's priority quota, or refuse the submission."""
        if n == 0:
            return
        lane = tenant.high_lane()
        if lane is None:
            raise _reject(
                403,
                "priority_not_allowed",
                f"tenant {tenant.name} may not send jobs with priority {HIGH!r}",
            )
        if self.limiter is None:
            return
        if n > lane.burst:
            raise _reject(
                413,
                "batch_over_priority_quota",
                f"{n} priority jobs in one request; tenant {tenant.name} may send "
                f"{lane.burst} per minute",
            )
        admission = self.limiter.admit(lane, n)
        if not admission.granted:
            raise RateLimited(
                f"tenant {tenant.name} used its {tenant.high_per_minute} priority jobs per "
                f"minute; send the job with priority {NORMAL!r}, or retry in "
                f"{admission.retry_after_s:.1f} s",
                code="priority_quota_exceeded",
                retry_after_s=admission.retry_after_s,
            )

    def _admit(self, tenant: Tenant, n: int) -> None:
        if self.limiter is None:
            return
        if n > tenant.burst:
            raise _reject(
                413,
                "batch_over_burst",
                f"{n} jobs in one request; tenant {tenant.name} may send at most "
                f"{tenant.burst} at once",
            )
        admission = self.limiter.admit(tenant, n)
        if admission.granted:
            return
        if admission.reason == "quota":
            raise RateLimited(
                f"tenant {tenant.name} used its quota of {tenant.daily_jobs} jobs today (UTC)",
                code="quota_exceeded",
                retry_after_s=admission.retry_after_s,
            )
        raise RateLimited(
            f"tenant {tenant.name} sends more than {tenant.rate_per_s:g} jobs/s "
            f"(bursts of {tenant.burst}); retry in {admission.retry_after_s:.1f} s",
            code="rate_limited",
            retry_after_s=admission.retry_after_s,
        )

    def _enqueue(self, valid: list[_Valid], *, tenant_cap: int | None) -> list[Accepted]:
        """Create the jobs (one store round trip), publish the new ones (one message per
        ``jobs_per_message``, on the tenant's lane: normal or priority) and roll them back if
        the broker refuses. An id already stored for a different request is a conflict (409),
        and then nothing of the batch stays."""
        spilled = [v for v in valid if v.job.image.spilled and v.inline is not None]
        # (a streamed upload is spilled already: its job carries the reference, no bytes)
        if spilled and self.blobs is not None:
            # Written before the job exists, so a worker never meets a reference to nothing.
            for v in spilled:
                self.blobs.put(v.job.image.uri.partition(":")[2], v.inline or b"")
        stored = self.store.create_many(
            [(v.job, None if v.job.image.spilled else v.inline) for v in valid],
            tenant_cap=tenant_cap,
        )
        created = [job.id for job, won in stored if won]
        for index, (v, (existing, won)) in enumerate(zip(valid, stored, strict=True)):
            if not won and _differs(existing, v.job):
                for job_id in created:
                    self.store.delete(job_id)
                raise JobConflict(
                    f"id {v.job.public_id!r} is taken by a job submitted with a different "
                    "request; resubmit the same request, or use a new id",
                    existing_id=existing.public_id,
                    index=index if len(valid) > 1 else None,
                )
        if created:
            # One publication per lane kind: photos or videos, normal or priority.
            kinds: dict[tuple[bool, bool], list[str]] = {}
            for job, won in stored:
                if won:
                    kind = (job.priority == HIGH, job.media == VIDEO)
                    kinds.setdefault(kind, []).append(job.id)
            try:
                for (high, video), ids in kinds.items():
                    self.publisher.publish(ids, high=high, video=video)
            except ModerationError:
                for job_id in created:
                    self.store.delete(job_id)
                raise
            counts: dict[str, int] = {}
            for job, won in stored:
                if won:
                    counts[job.tenant] = counts.get(job.tenant, 0) + 1
            for tenant, n in counts.items():
                metrics().submitted.labels(tenant).inc(n)
        duplicates = [job.id for job, won in stored if not won]
        existing_results = dict(zip(duplicates, self.store.get_results(duplicates), strict=True))
        out = []
        for job, won in stored:
            if won:
                out.append(Accepted(id=job.public_id, status=JobStatus.QUEUED, duplicate=False))
            else:
                result = existing_results.get(job.id)
                out.append(
                    Accepted(
                        id=job.public_id,
                        duplicate=True,
                        status=result.status if result else JobStatus.QUEUED,
                    )
                )
        return out

    # --- reading -----------------------------------------------------------------------------

    def result(self, job_id: str, *, tenant: Tenant) -> JobResult:
        """The result of one of ``tenant``'s jobs, as the tenant sees it.

        Raises:
            JobNotFoundError: no such job of this tenant (another tenant's job is not found
                either), or it expired.
            QueueUnavailable: Redis is down.
        """
        result = (
            self.store.get_result(scoped_id(tenant.name, job_id)) if is_job_id(job_id) else None
        )
        if result is None:
            raise JobNotFoundError(f"no job {job_id!r} (unknown or expired)")
        return result.for_caller()

    def results(self, job_ids: Sequence[str], *, tenant: Tenant) -> list[JobResult | None]:
        """The results of many of ``tenant``'s jobs in one store round trip (None for an
        unknown or expired id, or another tenant's).

        Raises:
            QueueUnavailable: Redis is down.
        """
        valid = [j for j in job_ids if is_job_id(j)]
        found = dict(
            zip(
                valid,
                self.store.get_results([scoped_id(tenant.name, j) for j in valid]),
                strict=True,
            )
        )
        return [r.for_caller() if (r := found.get(j)) is not None else None for j in job_ids]


def _differs(stored: Job, new: Job) -> bool:
    """Whether a stored job was submitted with another request than ``new`` (unknown for jobs
    stored before fingerprints: treated as the same)."""
    return stored.fingerprint is not None and stored.fingerprint != new.fingerprint
