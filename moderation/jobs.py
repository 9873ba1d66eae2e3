"""Jobs of the queue pipeline: what an upstream service asked for, and how it ended. Pure: no I/O.

A job ends exactly once, as a verdict (``done``) or an error result (``error``); a human decision
on a reviewed job may later be attached to its result (``human``) without changing that.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from moderation.decision import Decision, Verdict

__all__ = [
    "JOB_ID_PATTERN",
    "HumanDecision",
    "Job",
    "JobError",
    "JobResult",
    "JobStatus",
    "ReviewRequest",
    "final_decision",
    "new_job_id",
    "valid_job_id",
]

#: Caller-chosen job ids (idempotency keys): short, printable, safe in Redis keys and URLs.
JOB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
_JOB_ID = re.compile(JOB_ID_PATTERN)


def new_job_id() -> str:
    return uuid.uuid4().hex


def valid_job_id(job_id: str) -> bool:
    return bool(_JOB_ID.match(job_id))


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
    """One image to moderate. ``image_ref`` is ``s3://…``/``http(s)://…``, or ``inline:`` when the
    bytes were sent with the request (then they live in the job store under the job id)."""

    model_config = ConfigDict(frozen=True)

    id: str
    image_ref: str
    policies: list[str] | None = None  # None: every active policy at scoring time
    metadata: dict[str, Any] = Field(default_factory=dict)
    callback_url: str | None = None
    created_at: datetime = Field(default_factory=_now)

    @property
    def inline(self) -> bool:
        return self.image_ref == "inline:"


class JobError(BaseModel):
    model_config = ConfigDict(frozen=True)

    code: str  # stable, from the exception tree (bounded)
    message: str
    transient: bool = False
    attempts: int = 1


class HumanDecision(BaseModel):
    model_config = ConfigDict(frozen=True)

    decision: Literal["allow", "remove", "escalate"]
    reason_code: str | None = None
    reviewer: str  # pseudonymous reviewer id(s), comma-separated, first reviewer first
    review_id: str
    at: datetime = Field(default_factory=_now)


class JobResult(BaseModel):
    """What ``GET /v1/jobs/{id}`` returns and what the callback receives."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    status: JobStatus
    verdict: Verdict | None = None
    error: JobError | None = None
    human: HumanDecision | None = None
    content_sha256: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def decision(self) -> Decision | None:
        return final_decision(self)

    @classmethod
    def queued(cls, job: Job) -> JobResult:
        return cls(job_id=job.id, status=JobStatus.QUEUED, metadata=job.metadata,
                   created_at=job.created_at)


class ReviewRequest(BaseModel):
    """What the pipeline hands the human-review queue (``ReviewSink.submit``) for a REVIEW
    verdict. Submitting the same job id twice must be harmless (redelivered tasks)."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    image_ref: str
    content_sha256: str | None
    verdict: Verdict
    metadata: dict[str, Any] = Field(default_factory=dict)


_HUMAN = {"allow": Decision.ALLOW, "remove": Decision.BLOCK, "escalate": Decision.REVIEW}


def final_decision(result: JobResult) -> Decision | None:
    """The decision that stands: a human's when there is one, else the automated verdict's."""
    if result.human is not None:
        return _HUMAN[result.human.decision]
    return result.verdict.decision if result.verdict is not None else None
