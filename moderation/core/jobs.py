"""Jobs of the queue pipeline: what an upstream service asked for, and how it ended. Pure: no I/O.

A job ends exactly once, as a verdict (``done``) or an error result (``error``); a human decision
on a reviewed job may later be attached to its result (``human``) without changing that.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from moderation.core.decision import Decision, Verdict
from moderation.core.image_ref import ImageRef
from moderation.core.review import HumanDecision, ReviewDecision

__all__ = [
    "JOB_ID_PATTERN",
    "Job",
    "JobError",
    "JobResult",
    "JobStatus",
    "final_decision",
    "new_job_id",
]

#: Caller-chosen job ids (idempotency keys): short, printable, safe in Redis keys and URLs.
JOB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"


def new_job_id() -> str:
    return uuid.uuid4().hex


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
    """One image to moderate."""

    model_config = ConfigDict(frozen=True)

    id: str
    image: ImageRef
    policies: list[str] | None = None  # None: every active policy at scoring time
    metadata: dict[str, Any] = Field(default_factory=dict)
    callback_url: str | None = None
    created_at: datetime = Field(default_factory=_now)


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

    @property
    def decision(self) -> Decision | None:
        return final_decision(self)

    @classmethod
    def queued(cls, job: Job) -> JobResult:
        return cls(
            job_id=job.id, status=JobStatus.QUEUED, metadata=job.metadata, created_at=job.created_at
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
        )


_HUMAN = {
    ReviewDecision.ALLOW: Decision.ALLOW,
    ReviewDecision.REMOVE: Decision.BLOCK,
    ReviewDecision.ESCALATE: Decision.REVIEW,
}


def final_decision(result: JobResult) -> Decision | None:
    """The decision that stands: a human's when there is one, else the automated verdict's."""
    if result.human is not None:
        return _HUMAN[result.human.decision]
    return result.verdict.decision if result.verdict is not None else None
