"""One error shape for every HTTP answer: RFC 9457 problem details (``application/problem+json``).

::

    {"type": "/problems/policy_unknown", "title": "Unknown policy", "status": 400,
     "detail": "unknown policy nudity2; known: drugs, nudity", "code": "policy_unknown",
     "index": 3}

``type`` is stable per error ``code`` (the codes of :mod:`moderation.exceptions`) and resolves to
a page describing it (``GET /problems/{code}``); ``code`` repeats it for clients that switch on
it; ``index`` names the refused job of a batch; ``errors`` lists the fields of a request that did
not validate; ``job_id`` names the existing job of a 409 id conflict; ``retry_after_s`` repeats
the ``Retry-After`` header of a 429 or 503. The API (``/v1``), the reviewers' pages (``/review``),
request-validation errors, 404/405, oversize bodies (413), rate limits (429) and unexpected
errors (500) all answer in this shape; a 401 carries ``WWW-Authenticate``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from moderation.exceptions import (
    BankBusy,
    BankEntryNotFound,
    BankExists,
    BankNotFound,
    ImageError,
    JobConflict,
    JobNotFoundError,
    JobRejected,
    LoginThrottled,
    ModerationError,
    QueueFull,
    RateLimited,
    ReviewAlreadyDecided,
    ReviewAuthError,
    ReviewError,
    ReviewEvidenceUnavailable,
    ReviewLeaseExpired,
    ReviewNotFound,
    ReviewNotLeaseHolder,
)

__all__ = [
    "API_REALM",
    "PROBLEM_JSON",
    "FieldError",
    "Problem",
    "handle_unexpected_error",
    "problem_for",
    "problem_response",
    "status_for",
]

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
#: ``WWW-Authenticate`` of a 401 from the job API.
API_REALM = 'Bearer realm="moderation"'


class FieldError(BaseModel):
    """One field of a request that did not validate."""

    field: str
    message: str


class Problem(BaseModel):
    """RFC 9457 problem details."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="Stable URI reference per error code: /problems/<code>.")
    title: str
    status: int
    detail: str
    code: str = Field(description="The stable error code (also the last part of type).")
    index: int | None = Field(
        default=None, description="Position of the refused job in a batch request."
    )
    errors: list[FieldError] | None = None
    job_id: str | None = Field(
        default=None, description="409 id_conflict: the id of the job that holds this id."
    )
    retry_after_s: float | None = Field(
        default=None, description="429 / 503: seconds to wait (also the Retry-After header)."
    )


def status_for(exc: ModerationError) -> int:
    """The HTTP status of an error of the exception tree."""
    if isinstance(exc, JobRejected):
        return exc.status
    if isinstance(exc, JobNotFoundError | ReviewNotFound | BankNotFound | BankEntryNotFound):
        return 404
    if isinstance(exc, LoginThrottled):
        return 429
    if isinstance(exc, BankBusy | BankExists):
        return 409
    if isinstance(exc, ReviewAuthError):
        return 403 if exc.code in {"review_csrf", "review_forbidden"} else 401
    if isinstance(exc, ReviewLeaseExpired | ReviewNotLeaseHolder | ReviewAlreadyDecided):
        return 409
    if isinstance(exc, ReviewEvidenceUnavailable):
        return 410
    if isinstance(exc, ReviewError):
        return 400
    if isinstance(exc, ImageError):
        return 422
    if exc.transient:
        return 503
    return 400


def _title(code: str) -> str:
    return code.replace("_", " ").capitalize()


def problem_for(status: int, code: str, detail: str, **extra: Any) -> Problem:
    return Problem(
        type=f"/problems/{code}",
        title=_title(code),
        status=status,
        detail=detail,
        code=code,
        **{k: v for k, v in extra.items() if v is not None},
    )


def problem_response(problem: Problem, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        problem.model_dump(exclude_none=True),
        status_code=problem.status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


def _retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


def moderation_problem(exc: ModerationError, *, realm: str = API_REALM) -> JSONResponse:
    """The problem answer of an error of the exception tree (``realm``: the
    ``WWW-Authenticate`` value of a 401)."""
    status = status_for(exc)
    extra: dict[str, Any] = {"index": exc.index if isinstance(exc, JobRejected) else None}
    headers: dict[str, str] = {}
    if isinstance(exc, JobConflict):
        extra["job_id"] = exc.existing_id
    if isinstance(exc, RateLimited | QueueFull | LoginThrottled):
        extra["retry_after_s"] = round(exc.retry_after_s, 3)
        headers["Retry-After"] = _retry_after(exc.retry_after_s)
    elif status == 503:
        headers["Retry-After"] = "5"
    if status == 401:
        headers["WWW-Authenticate"] = realm
    return problem_response(problem_for(status, exc.code, str(exc), **extra), headers=headers)


def validation_problem(errors: Sequence[Any]) -> JSONResponse:
    fields = []
    for error in errors:
        loc = [str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path")]
        message = str(error.get("msg", "invalid"))
        message = message.removeprefix("Value error, ")
        fields.append(FieldError(field=".".join(loc) or "body", message=message))
    detail = "; ".join(f"{f.field}: {f.message}" for f in fields) or "invalid request"
    return problem_response(problem_for(422, "invalid_request", detail, errors=fields))


def http_problem(exc: HTTPException) -> JSONResponse:
    status = exc.status_code
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    code = phrase.lower().replace(" ", "_").replace("-", "_")
    detail = str(exc.detail) if exc.detail else phrase
    headers = dict(exc.headers or {})
    if status == 401:
        headers.setdefault("WWW-Authenticate", API_REALM)
    return problem_response(problem_for(status, code, detail), headers=headers)


async def handle_moderation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ModerationError)
    return moderation_problem(exc)


async def handle_validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return validation_problem(exc.errors())


async def handle_http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return http_problem(exc)


async def handle_unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    """A bug: 500 as problem details (logged with its traceback; nothing internal is shown)."""
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(
        problem_for(500, "internal_error", "internal error; the operators have the details")
    )
