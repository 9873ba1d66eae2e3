"""Jobs of the queue pipeline: what an upstream service asked for, and how it ended. Pure: no I/O.

A job ends exactly once, as a verdict (``done``) or an error result (``error``); a human decision
on a reviewed job may later be attached to its result (``human``) without changing that.

Tenants. Every job belongs to the tenant whose API key submitted it. Job ids are namespaced per
tenant: the id a tenant chooses (``upload-8812``) is stored as ``<tenant>/<id>`` (the *scoped*
id: Redis keys, broker message, audit records, review items), so two tenants may use the same id
and neither can read, squat or overwrite the other's job. Tenant ``default`` (the single tenant
of a deployment without named tenants, and of every job stored before tenants existed) keeps
bare ids, so an upgrade changes no key. The namespaces cannot meet: a job id never contains
``/`` (:data:`JOB_ID_PATTERN`, enforced by :func:`scoped_id` for every entry point), so
``default``'s bare ids and every other tenant's ``<tenant>/<id>`` are disjoint whatever key
format named the tenant. Callers only ever see their own ids (:meth:`JobResult.for_caller`).
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from moderation.core.decision import Decision, Verdict
from moderation.core.image_ref import ImageRef
from moderation.core.media import IMAGE, Media
from moderation.core.review import HumanDecision, ReviewDecision
from moderation.core.sources import DecisionSource

__all__ = [
    "DEFAULT_TENANT",
    "JOB_ID_PATTERN",
    "TENANT_PATTERN",
    "Job",
    "JobError",
    "JobResult",
    "JobStatus",
    "final_decision",
    "is_job_id",
    "keeps_inline",
    "new_job_id",
    "public_id",
    "request_fingerprint",
    "scoped_id",
    "tenant_of",
]

#: Caller-chosen job ids (idempotency keys): short, printable, safe in Redis keys and URLs.
#: No ``/``: it separates the tenant in a scoped id.
JOB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
_JOB_ID = re.compile(JOB_ID_PATTERN)
#: Tenant names come from configuration (a bounded set: also a metric label).
TENANT_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,31}$"
#: The tenant of a deployment without named tenants (and of jobs stored before tenants).
DEFAULT_TENANT = "default"


def new_job_id() -> str:
    return uuid.uuid4().hex


def is_job_id(job_id: str) -> bool:
    """Whether ``job_id`` matches :data:`JOB_ID_PATTERN` (the whole string: no trailing
    newline slips past ``$``)."""
    return _JOB_ID.fullmatch(job_id) is not None


def scoped_id(tenant: str, job_id: str) -> str:
    """The store-wide id of a tenant's job id (``acme/upload-1``; bare for ``default``).

    Raises:
        ValueError: ``job_id`` is not a job id (:data:`JOB_ID_PATTERN`): callers validate
            first, this keeps tenants' namespaces apart even if one did not.
    """
    if not is_job_id(job_id):
        raise ValueError("not a job id (see JOB_ID_PATTERN)")
    return job_id if tenant == DEFAULT_TENANT else f"{tenant}/{job_id}"


def public_id(scoped: str) -> str:
    """The id the owning tenant sees for a scoped id."""
    return scoped.rpartition("/")[2]


def tenant_of(scoped: str) -> str:
    """The tenant part of a scoped id."""
    tenant, sep, _ = scoped.rpartition("/")
    return tenant if sep else DEFAULT_TENANT


def request_fingerprint(
    *,
    image: str,
    policies: list[str] | None,
    metadata: dict[str, Any],
    callback_url: str | None,
    uploader_id: str | None = None,
) -> str:
    """A hash of what a request asks for (``image``: the URL, or ``sha256:<hex>`` of inline
    bytes): the same id with a different fingerprint is a conflict, not a duplicate."""
    fields: dict[str, Any] = {
        "image": image,
        "policies": policies,
        "metadata": metadata,
        "callback": callback_url,
    }
    if uploader_id is not None:  # (absent: the fingerprints of earlier requests stand)
        fields["uploader"] = uploader_id
    canonical = json.dumps(
        fields,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=str,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC)


class JobStatus(str, Enum):
    QUEUED = "queued"
    DONE = "done"
    ERROR = "error"

    @property
    def final(self) -> bool:
        return self is not JobStatus.QUEUED


class Job(BaseModel):
    """One image to moderate. ``id`` is the scoped id (see the module docstring)."""

    model_config = ConfigDict(frozen=True)

    id: str
    image: ImageRef
    policies: list[str] | None = None  # None: every active policy at scoring time
    metadata: dict[str, Any] = Field(default_factory=dict)
    callback_url: str | None = None
    created_at: datetime = Field(default_factory=_now)
    tenant: str = DEFAULT_TENANT
    #: ``"high"``: published on the tenant's priority lane (``moderation.core.fairness``).
    priority: Literal["normal", "high"] = "normal"
    #: :func:`request_fingerprint` of the request that created the job (None: stored before
    #: fingerprints existed; any resubmission then counts as a duplicate).
    fingerprint: str | None = None
    #: The tenant's pseudonymous id of who posted the content (``moderation.core.strikes``:
    #: strikes and repeat-offender context, per tenant); None: not given.
    uploader_id: str | None = None
    #: What the content was taken for at submit time (``moderation.core.media``): ``video``
    #: jobs are published on the video lanes.
    media: Media = IMAGE
    #: A notice asked for this job to be scored again (its first run ended without a verdict,
    #: :class:`~moderation.pipeline.notices.NoticeDesk`): whatever the new verdict decides, the
    #: item goes to human review under this source. None: an ordinary job.
    reported: DecisionSource | None = None
    #: How many times a notice had the job scored again: each run's automated audit record
    #: gets an id of its own (a re-run's record would otherwise be deduplicated away as a
    #: retried write of the first run's).
    rescores: int = Field(default=0, ge=0)

    @property
    def public_id(self) -> str:
        """The id the tenant chose (or was given)."""
        return public_id(self.id)


class JobError(BaseModel):
    model_config = ConfigDict(frozen=True)

    code: str  # stable, from the exception tree (bounded)
    message: str
    transient: bool = False
    attempts: int = 1


class JobResult(BaseModel):
    """What ``GET /v1/jobs/{id}`` returns and what the callback receives."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    status: JobStatus
    verdict: Verdict | None = None
    error: JobError | None = None
    human: HumanDecision | None = None
    content_sha256: str | None = None
    #: The image's PDQ perceptual hash (64 hex digits) and PDQ quality (0-100).
    content_pdq: str | None = None
    content_pdq_quality: int | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime | None = None
    finished_at: datetime | None = None
    tenant: str | None = None

    @property
    def decision(self) -> Decision | None:
        return final_decision(self)

    def for_caller(self) -> JobResult:
        """The result as its tenant sees it: ``job_id`` is the tenant's own id."""
        return self.model_copy(
            update={"job_id": public_id(self.job_id), "tenant": self.tenant or DEFAULT_TENANT}
        )

    @classmethod
    def queued(cls, job: Job) -> JobResult:
        return cls(
            job_id=job.id,
            status=JobStatus.QUEUED,
            metadata=job.metadata,
            created_at=job.created_at,
            tenant=job.tenant,
        )

    @classmethod
    def ended(
        cls,
        job: Job,
        *,
        verdict: Verdict | None = None,
        error: JobError | None = None,
        content_sha256: str | None = None,
        content_pdq: str | None = None,
        content_pdq_quality: int | None = None,
    ) -> JobResult:
        """The final result of ``job``: its verdict (``done``) or its error (``error``)."""
        return cls(
            job_id=job.id,
            status=JobStatus.ERROR if error is not None else JobStatus.DONE,
            verdict=verdict,
            error=error,
            content_sha256=content_sha256,
            content_pdq=content_pdq,
            content_pdq_quality=content_pdq_quality,
            metadata=job.metadata,
            created_at=job.created_at,
            finished_at=_now(),
            tenant=job.tenant,
        )


_HUMAN = {
    ReviewDecision.ALLOW: Decision.ALLOW,
    ReviewDecision.REMOVE: Decision.BLOCK,
    ReviewDecision.ESCALATE: Decision.REVIEW,
    ReviewDecision.UPHOLD: Decision.BLOCK,
    ReviewDecision.OVERTURN: Decision.ALLOW,
}


def final_decision(result: JobResult) -> Decision | None:
    """The decision that stands: a human's when there is one, else the automated verdict's."""
    if result.human is not None:
        return _HUMAN[result.human.decision]
    return result.verdict.decision if result.verdict is not None else None


def keeps_inline(result: JobResult) -> bool:
    """Whether an ended job's inline image bytes stay in the store: only for a dead letter
    (``dlq requeue`` runs it again). Every other ending, REVIEW verdicts and errors included,
    drops them at once: a reviewer is shown the scored bytes kept in the object store
    (:mod:`moderation.pipeline.review_evidence`), never the inline bytes, and the transient
    store must not grow with the jobs that ended."""
    return result.error is not None and result.error.code == "poison_message"
