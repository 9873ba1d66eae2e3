"""Request and response bodies of the HTTP API (also the OpenAPI schema).

The schema is the contract: a request it allows is accepted, except for what only the server can
know (a policy withdrawn since the document was read, a tenant's policy set, an id already used
for a different request, rate limits and quotas, metadata size and depth). Hence the patterns
below: ``image_url`` is ``s3://bucket/key`` or an http(s) URL with a host *name*, ``image_base64``
is canonical non-empty base64, and an explicit ``null`` is refused like any other wrong type.
The server is more lenient than the URL and base64 patterns (an IP-literal host is accepted when
the SSRF guard allows it; malformed references get a 400 with a ``code``), never stricter.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from moderation.core.appeals import MAX_STATEMENT_CHARS
from moderation.core.jobs import JOB_ID_PATTERN, JobResult, JobStatus
from moderation.core.strikes import UPLOADER_ID_PATTERN

__all__ = [
    "BASE64_PATTERN",
    "IMAGE_URL_PATTERN",
    "POLICY_ID_PATTERN",
    "URL_PATTERN",
    "AppealRequest",
    "BatchAccepted",
    "BatchRequest",
    "Health",
    "JobAccepted",
    "JobOptions",
    "JobRequest",
    "LookupAnswer",
    "LookupRequest",
    "NoticeAnswer",
    "NoticeRequest",
    "PublicReadiness",
    "Readiness",
]

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
#: A DNS host name whose last label starts with a letter (so never an IPv4 spelling).
_HOST = rf"(?:{_LABEL}\.)*[A-Za-z](?:[A-Za-z0-9-]{{0,61}}[A-Za-z0-9])?"
#: An http(s) URL with a host name (not an IP literal), an optional port and any path.
URL_PATTERN = rf"^https?://{_HOST}(?::[1-9][0-9]{{0,3}})?(?:[/?#][!-~]*)?$"
#: ``s3://bucket/key`` or :data:`URL_PATTERN`.
IMAGE_URL_PATTERN = (
    r"^(?:s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/[!-~]+"
    rf"|https?://{_HOST}(?::[1-9][0-9]{{0,3}})?(?:[/?#][!-~]*)?)$"
)
#: Canonical, non-empty base64.
BASE64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{4}|[A-Za-z0-9+/]{3}=|[A-Za-z0-9+/]{2}==)$"
POLICY_ID_PATTERN = r"^[a-z][a-z0-9_-]{0,63}$"

PolicyId = Annotated[str, StringConstraints(pattern=POLICY_ID_PATTERN)]
# Constraints sit on the inner type so the schema keeps them (minItems, pattern) when the
# ``null`` of ``X | None`` is dropped from it (an omitted field, never an explicit null).
_Url = Annotated[str, Field(max_length=4096)]
_Policies = Annotated[list[PolicyId], Field(min_length=1, max_length=64)]
_JobId = Annotated[str, StringConstraints(pattern=JOB_ID_PATTERN)]


def _drop_null_defaults(schema: dict[str, Any]) -> None:
    """Optional fields are absent, never ``null`` (a validator refuses an explicit null): drop
    ``null`` from their types and their ``null`` defaults from the schema. (They are typed
    ``X | None`` so that a refused value is reported at the field, not per union member.)"""
    for name, prop in schema.get("properties", {}).items():
        if prop.get("default", 0) is None:
            del prop["default"]
        members = prop.get("anyOf")
        if members and {"type": "null"} in members and len(members) == 2:
            (kept,) = (m for m in members if m != {"type": "null"})
            rest = {k: v for k, v in prop.items() if k != "anyOf"}
            schema["properties"][name] = {**kept, **rest}


def _no_defaults(schema: dict[str, Any]) -> None:
    """:func:`_drop_null_defaults`, and require exactly one of the two image fields."""
    _drop_null_defaults(schema)
    schema["oneOf"] = [{"required": ["image_url"]}, {"required": ["image_base64"]}]


class JobOptions(BaseModel):
    """What a job asks for besides its image: the fields of a JobRequest other than the image,
    and each entry of the `jobs` field of a multipart upload (one model, so one id pattern and
    one set of limits for every way to submit)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra=lambda schema, _: _drop_null_defaults(schema),
    )

    policies: _Policies | None = Field(
        None,
        description="Policy ids to apply (at least one); omit it for every active policy (or "
        "the tenant's policy set).",
    )
    id: _JobId | None = Field(
        None,
        description="Caller job id (idempotency key, per tenant): the same request with the same "
        "id is processed once (200, duplicate); a different request with it is a 409.",
        examples=["upload-8812"],
    )
    metadata: dict[str, Any] = Field(
        default_factory=dict,
        description="Opaque (at most queue.max_metadata_bytes as compact JSON, "
        "queue.max_metadata_depth levels); echoed in the result and callback.",
    )
    callback_url: _Url | None = Field(
        None,
        json_schema_extra={"pattern": URL_PATTERN},
        description="POSTed the HMAC-signed result when the job ends.",
    )
    uploader_id: Annotated[str, StringConstraints(pattern=UPLOADER_ID_PATTERN)] | None = Field(
        None,
        description="Your pseudonymous id of who posted the content (never an e-mail or a "
        "name): decisions against it accrue strikes, and reviewers see the uploader's earlier "
        "decisions (your tenant's only).",
        examples=["u-5f2c"],
    )
    priority: Literal["normal", "high"] = Field(
        "normal",
        description='"high": the tenant\'s priority lane, served before every normal lane, '
        "within the tenant's rate_limits.high_priority_per_minute (over it: 429 "
        "priority_quota_exceeded).",
    )

    @field_validator("policies", "id", "callback_url", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("omit the field instead of sending null")
        return value


class AppealRequest(BaseModel):
    """An appeal against a decision: the user's own words."""

    model_config = ConfigDict(extra="forbid")

    statement: str = Field(
        min_length=1,
        max_length=MAX_STATEMENT_CHARS,
        pattern=r"\S",
        description="Why the user thinks the decision is wrong (shown to the reviewer).",
    )


class JobRequest(JobOptions):
    """One image to moderate: exactly one of ``image_url`` and ``image_base64``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra=lambda schema, _: _no_defaults(schema),
    )

    image_url: _Url | None = Field(
        None,
        json_schema_extra={"pattern": IMAGE_URL_PATTERN},
        description="s3://bucket/key or http(s):// URL of the image.",
        examples=["s3://uploads/2024/06/cat.jpg"],
    )
    image_base64: str | None = Field(
        None,
        json_schema_extra={"pattern": BASE64_PATTERN},
        description="The image bytes, base64 (at most queue.max_inline_bytes decoded).",
    )

    @field_validator("image_url", "image_base64", mode="before")
    @classmethod
    def _image_not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("omit the field instead of sending null")
        return value

    @model_validator(mode="after")
    def _one_image(self) -> JobRequest:
        if (self.image_url is None) == (self.image_base64 is None):
            raise ValueError("give exactly one of image_url and image_base64")
        return self


class JobAccepted(BaseModel):
    id: str = Field(description="The job id (yours, or the one generated for you).")
    status: JobStatus
    duplicate: bool = Field(description="True when a job with this id already existed.")
    url: str


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    jobs: list[JobRequest] = Field(min_length=1, description="At most queue.max_batch_jobs.")


class BatchAccepted(BaseModel):
    jobs: list[JobAccepted]


class Health(BaseModel):
    status: Literal["ok"]


class WorkerInfo(BaseModel):
    name: str | None = None
    model: str | None = None
    policies: dict[str, int] | None = None
    #: Per hash bank: loaded version, live entries and resident index bytes.
    banks: dict[str, dict[str, int]] | None = None


class Readiness(BaseModel):
    """Whether this API process can take jobs: its own dependencies (Redis) answer. Workers are
    reported, not required: jobs wait in the queue while workers restart."""

    status: Literal["ready", "not ready"]
    redis: bool
    workers: list[WorkerInfo]


class PublicReadiness(BaseModel):
    """Readiness as the public port answers it in production: the status only (the details are
    on the operations port)."""

    status: Literal["ready", "not ready"]


class LookupRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[_JobId] = Field(min_length=1, max_length=1000)


class LookupAnswer(BaseModel):
    jobs: list[JobResult | None] = Field(
        description="The result of each id asked for, in order; null for an unknown id."
    )


_Reason = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^\S(?:.*\S)?$")]
_Reporter = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[!-~]+$")]


class NoticeRequest(BaseModel):
    """A report against one of your jobs (EU DSA Art. 16 notice; Art. 22 trusted flagger)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra=lambda schema, _: _drop_null_defaults(schema),
    )

    reporter_type: Literal["user", "trusted_flagger"] = Field(
        description="Who reports: one of your users, or a trusted flagger (reviewed first)."
    )
    reporter: _Reporter = Field(
        description="The reporter's id as you know them (opaque; the same report from the "
        "same reporter for the same reason collapses into one notice)."
    )
    reason: _Reason = Field(
        description="A category of the job's policy (`nudity`, `policy/nudity`) or a short reason.",
        examples=["nudity"],
    )
    text: str = Field(
        "", max_length=5000, description="The reporter's explanation (at most 5000 characters)."
    )
    callback_url: _Url | None = Field(
        None,
        json_schema_extra={"pattern": URL_PATTERN},
        description="POSTed the signed `notice.outcome` once a reviewer decided (else the "
        "job's callback_url).",
    )

    @field_validator("callback_url", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("omit the field instead of sending null")
        return value


class NoticeAnswer(BaseModel):
    """A notice as it stands."""

    notice_id: str
    job_id: str = Field(description="Your job id.")
    reporter_type: Literal["user", "trusted_flagger"]
    reason: str
    state: Literal["open", "answered"]
    reports: int = Field(description="How many times this same report arrived.")
    duplicate: bool = Field(False, description="True when this report collapsed into it.")
    review_id: str | None = None
    outcome: Literal["allow", "remove", "escalate", "not_reviewable"] | None = Field(
        None,
        description="The reviewer's decision, once answered; not_reviewable: the job ended "
        "without a verdict and scoring it again for the notice failed again (outcome_reason: "
        "the error's code).",
    )
    outcome_reason: str | None = None
    created_at: str
    answered_at: str | None = None
