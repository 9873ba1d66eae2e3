"""Request and response bodies of the HTTP API (also the OpenAPI schema)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from moderation.core.jobs import JOB_ID_PATTERN, JobResult, JobStatus

__all__ = [
    "BatchAccepted",
    "BatchRequest",
    "JobAccepted",
    "JobRequest",
    "LookupAnswer",
    "LookupRequest",
]


class JobRequest(BaseModel):
    """One image to moderate: exactly one of ``image_url`` and ``image_base64``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "image_url": "s3://uploads/2024/06/cat.jpg",
                    "id": "upload-8812",
                    "metadata": {"user": "u_19"},
                    "callback_url": "https://example.com/hooks/moderation",
                }
            ]
        },
    )

    image_url: str | None = Field(
        None, max_length=4096, description="s3://bucket/key or http(s):// URL of the image."
    )
    image_base64: str | None = Field(
        None, description="The image bytes, base64 (at most queue.max_inline_bytes decoded)."
    )
    policies: list[str] | None = Field(
        None, max_length=64, description="Policy ids to apply; default: every active policy."
    )
    id: str | None = Field(
        None,
        pattern=JOB_ID_PATTERN,
        description="Caller job id (idempotency key): the same id is processed once.",
    )
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="Opaque; echoed in the result and callback."
    )
    callback_url: str | None = Field(
        None, max_length=4096, description="POSTed the HMAC-signed result when the job ends."
    )

    @model_validator(mode="after")
    def _one_image(self) -> JobRequest:
        if (self.image_url is None) == (self.image_base64 is None):
            raise ValueError("give exactly one of image_url and image_base64")
        return self


class JobAccepted(BaseModel):
    id: str
    status: JobStatus
    duplicate: bool = Field(description="True when a job with this id already existed.")
    url: str


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    jobs: list[JobRequest] = Field(min_length=1)


class BatchAccepted(BaseModel):
    jobs: list[JobAccepted]


class LookupRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[str] = Field(min_length=1, max_length=1000)


class LookupAnswer(BaseModel):
    jobs: list[JobResult | None] = Field(
        description="The result of each id asked for, in order; null for an unknown id."
    )
