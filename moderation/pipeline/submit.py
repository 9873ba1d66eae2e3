"""Submitting jobs: the use case behind ``POST /v1/jobs`` and ``/v1/jobs:batch``.

Every request of a submission is validated before anything is stored (unknown policy, missing or
oversize image, unsupported scheme, bad callback URL: :class:`~moderation.exceptions.JobRejected`
with an HTTP status and a stable code). Then each job is created with set-if-absent semantics
(the id is an idempotency key) and its message published; if the broker refuses the message the
job record is rolled back, so nothing is half-enqueued. A crash between the two is repaired by the
lost-message sweep (the job stays in the pending index).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from moderation.core.image_ref import ImageRef
from moderation.core.jobs import Job, JobStatus, new_job_id
from moderation.exceptions import ImageFetchError, JobRejected, ModerationError, PolicyError
from moderation.metrics import metrics
from moderation.pipeline.sources import ImageSources
from moderation.ports import JobStore, TaskPublisher
from moderation.settings import QueueSettings

__all__ = ["Accepted", "PolicyCatalog", "SubmitRequest", "Submitter"]

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


@dataclass(frozen=True, slots=True)
class Accepted:
    id: str
    status: JobStatus
    duplicate: bool


class PolicyCatalog:
    """Policy ids a request may name: those the live workers serve (from their heartbeats), else
    those in the policy files (re-read at most every ``ttl_s`` seconds)."""

    def __init__(
        self, store: JobStore, load_ids: Callable[[], set[str]], *, ttl_s: float = 10.0
    ) -> None:
        self.store = store
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
        from_workers = self.store.known_policies()
        return set(from_workers) if from_workers else self._from_files()


def _reject(status: int, code: str, message: str) -> JobRejected:
    return JobRejected(message, status=status, code=code)


class Submitter:
    """Validates and enqueues jobs. Thread-safe."""

    def __init__(
        self,
        *,
        store: JobStore,
        publisher: TaskPublisher,
        sources: ImageSources,
        catalog: PolicyCatalog,
        settings: QueueSettings,
        check_callback_url: Callable[[str], None],
    ) -> None:
        self.store = store
        self.publisher = publisher
        self.sources = sources
        self.catalog = catalog
        self.settings = settings
        self.check_callback_url = check_callback_url

    def validate(self, request: SubmitRequest, known: set[str]) -> tuple[Job, bytes | None]:
        """The job a request describes, and its inline bytes.

        Raises:
            JobRejected: the request is invalid (status 400 or 413, stable code).
        """
        job_id = request.id or new_job_id()
        inline = request.image_bytes
        if (request.image_url is None) == (inline is None):
            raise _reject(400, "missing_image", "give exactly one of image_url and image_base64")
        if inline is not None:
            if not inline:
                raise _reject(400, "empty_image", "the image is empty")
            if len(inline) > self.settings.max_inline_bytes:
                raise _reject(
                    413,
                    "inline_too_large",
                    f"inline image is {len(inline)} bytes; the limit is "
                    f"{self.settings.max_inline_bytes}: upload it and send image_url",
                )
            image = ImageRef.for_inline(job_id)
        else:
            uri = (request.image_url or "").strip()
            if not uri:
                raise _reject(400, "missing_image", "image_url is empty")
            if len(uri) > 4096:
                raise _reject(400, "bad_reference", "image_url is longer than 4096 characters")
            image = ImageRef(uri=uri)
            try:
                self.sources.check(image)
            except ImageFetchError as exc:
                raise _reject(400, exc.code, str(exc)) from exc
        if request.policies is not None:
            if not request.policies:
                raise _reject(
                    400, "no_policies", "policies is empty; omit it to apply every active policy"
                )
            unknown = sorted(set(request.policies) - known)
            if unknown:
                raise _reject(
                    400,
                    "policy_unknown",
                    f"unknown policy {', '.join(unknown)}; known: "
                    f"{', '.join(sorted(known)) or 'none'}",
                )
        if request.callback_url is not None:
            try:
                self.check_callback_url(request.callback_url)
            except ImageFetchError as exc:
                raise _reject(400, "bad_callback_url", f"callback_url: {exc}") from exc
        job = Job(
            id=job_id,
            image=image,
            policies=request.policies,
            metadata=request.metadata,
            callback_url=request.callback_url,
        )
        return job, inline

    def submit(self, requests: Sequence[SubmitRequest]) -> list[Accepted]:
        """Validate every request, then enqueue each job (idempotent by id).

        Raises:
            JobRejected: a request is invalid (``index`` names it in a batch); nothing was
                enqueued.
            QueueUnavailable: Redis or the broker is down.
        """
        if len(requests) > self.settings.max_batch_jobs:
            raise _reject(
                413,
                "batch_too_large",
                f"{len(requests)} jobs; at most {self.settings.max_batch_jobs}",
            )
        known = self.catalog.known()
        validated = []
        for index, request in enumerate(requests):
            try:
                validated.append(self.validate(request, known))
            except JobRejected as exc:
                if len(requests) > 1:
                    exc.message = f"jobs[{index}]: {exc.message}"
                    exc.args = (exc.message,)
                    exc.index = index
                raise
        return self._enqueue(validated)

    def _enqueue(self, validated: list[tuple[Job, bytes | None]]) -> list[Accepted]:
        """Create the jobs (one store round trip), publish the new ones (one message per
        ``jobs_per_message``), roll them back if the broker refuses."""
        stored = self.store.create_many(validated)
        created = [job.id for job, won in stored if won]
        if created:
            try:
                self.publisher.publish(created)
            except ModerationError:
                for job_id in created:
                    self.store.delete(job_id)
                raise
            metrics().submitted.inc(len(created))
        duplicates = [job.id for job, won in stored if not won]
        existing = dict(zip(duplicates, self.store.get_results(duplicates), strict=True))
        out = []
        for job, won in stored:
            if won:
                out.append(Accepted(id=job.id, status=JobStatus.QUEUED, duplicate=False))
            else:
                result = existing.get(job.id)
                out.append(
                    Accepted(
                        id=job.id,
                        duplicate=True,
                        status=result.status if result else JobStatus.QUEUED,
                    )
                )
        return out
