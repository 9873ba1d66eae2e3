"""The HTTP API: upstream services enqueue images and read results (the reviewers' pages are
mounted beside it by :func:`moderation.app.create_app`).

``POST /v1/jobs`` (202 + job id at once; 200 for a duplicate id; 409 for the same id with a
different request), ``POST /v1/jobs:batch``, ``GET /v1/jobs/{id}``, ``/healthz``, ``/readyz``,
``/metrics``; OpenAPI at ``/openapi.json`` and ``/docs``.

Every ``/v1`` call authenticates with ``Authorization: Bearer <key>``; the key names the tenant
(:class:`~moderation.core.admission.Tenant`), which is passed to the submit use case
(:class:`moderation.pipeline.submit.Submitter`): ids, reads, limits and policy sets are the
tenant's own. Bodies are limited while they stream in (:mod:`moderation.api.edge`). Every error
is RFC 9457 problem details (:mod:`moderation.http.problems`). Internal addresses in image URLs
are refused by the worker's SSRF guard (also after DNS resolution and redirects), so they end as
error results, not 4xx.
"""

from __future__ import annotations

import base64
import binascii
import copy
import inspect
import logging
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import TypeAdapter, ValidationError
from starlette.exceptions import HTTPException

from moderation import exceptions
from moderation.api.authn import STATE_TENANT, AuthenticateFirst, TenantKeys, TrustedProxies
from moderation.api.edge import (
    STREAMED,
    BodyLimit,
    BodyRefused,
    HttpMetrics,
    body_limits,
    max_upload_bytes,
)
from moderation.api.multipart import StreamedForm, read_upload
from moderation.api.ops import operations_router, ready_status
from moderation.api.schemas import (
    AppealRequest,
    BatchAccepted,
    BatchRequest,
    Health,
    JobAccepted,
    JobOptions,
    JobRequest,
    LookupAnswer,
    LookupRequest,
    NoticeAnswer,
    NoticeRequest,
    PublicReadiness,
)
from moderation.compose.api import ApiProcess
from moderation.core.admission import Tenant
from moderation.core.appeals import Appeal
from moderation.core.jobs import DEFAULT_TENANT, JOB_ID_PATTERN, JobResult
from moderation.core.notices import Notice, ReporterType
from moderation.exceptions import JobRejected, ModerationError
from moderation.http.problems import (
    PROBLEM_JSON,
    Problem,
    handle_http_error,
    handle_moderation_error,
    handle_unexpected_error,
    handle_validation_error,
)
from moderation.pipeline.notices import NoticeDesk
from moderation.pipeline.submit import Accepted, SubmitRequest
from moderation.pipeline.uploads import StoredUpload, drop_upload

__all__ = ["create_app"]

log = logging.getLogger(__name__)

_DESCRIPTIONS = {
    400: "The request is well formed but refused (problem details; `code` says why, e.g. "
    "policy_unknown, policy_not_allowed, metadata_too_deep).",
    401: "Missing or wrong API key (`WWW-Authenticate: Bearer`).",
    403: "Your tenant may not do this: trusted_flagger_not_allowed (a trusted flagger's notice "
    "from a tenant the operator has not allowed to file them).",
    404: "No such job (or notice) of your tenant (unknown, another tenant's, or expired).",
    409: "id_conflict: the id is taken by a job submitted with a different request; `job_id` "
    "names it. notice_not_reviewable: the reported job has no verdict to review yet.",
    413: "Too large: request body (request_too_large), inline image, batch, or metadata.",
    422: "The request does not match the schema (`errors` lists the fields), or "
    "source_not_allowed: an s3:// reference outside your tenant's S3 sources.",
    429: "rate_limited or quota_exceeded for your tenant; retry after `Retry-After` seconds.",
    500: "An internal error (a bug; nothing internal is shown).",
    503: "Redis, the broker or the database is unavailable, or too many bytes wait for the "
    "workers (queue_full), or notices_unavailable (no database configured); retry after "
    "`Retry-After` seconds.",
}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "integer"},
    }
}
_WWW_AUTH = {
    "WWW-Authenticate": {"description": "The authentication scheme.", "schema": {"type": "string"}}
}


def _responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {
            "model": Problem,
            "description": _DESCRIPTIONS[status],
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        if status in (429, 503):
            entry["headers"] = _RETRY_AFTER
        if status == 401:
            entry["headers"] = _WWW_AUTH
        out[status] = entry
    return out


def _decode_inline(req: JobRequest, max_bytes: int) -> bytes | None:
    if req.image_base64 is None:
        return None
    if len(req.image_base64) > (max_bytes + 2) // 3 * 4 + 4:
        raise JobRejected(
            f"inline image exceeds {max_bytes} bytes; upload it and send image_url instead",
            status=413,
            code="inline_too_large",
        )
    try:
        return base64.b64decode(req.image_base64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise JobRejected(f"image_base64 is not valid base64: {exc}", code="bad_base64") from exc


def _request(req: JobRequest, max_bytes: int) -> SubmitRequest:
    return SubmitRequest(
        image_url=req.image_url,
        image_bytes=_decode_inline(req, max_bytes),
        policies=req.policies,
        id=req.id,
        metadata=req.metadata,
        callback_url=req.callback_url,
        priority=req.priority,
        uploader_id=req.uploader_id,
    )


def _accepted(a: Accepted) -> JobAccepted:
    return JobAccepted(id=a.id, status=a.status, duplicate=a.duplicate, url=f"/v1/jobs/{a.id}")


def _notice_answer(notice: Notice, *, duplicate: bool = False) -> NoticeAnswer:
    data = notice.for_caller()
    return NoticeAnswer.model_validate(
        {
            **{k: data[k] for k in NoticeAnswer.model_fields if k in data},
            "duplicate": duplicate,
        }
    )


def _problem_codes() -> dict[str, str]:
    """Every error code of the exception tree, with its class's description."""
    out: dict[str, str] = {}
    for _, cls in inspect.getmembers(exceptions, inspect.isclass):
        if issubclass(cls, ModerationError):
            doc = inspect.getdoc(cls) or ""
            out.setdefault(cls.code, doc.splitlines()[0] if doc else cls.__name__)
    return out


_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="apiKey",
    description="An API key of your tenant: `Authorization: Bearer <key>`.",
)


#: The ``jobs`` field of a multipart upload: parsed and validated in one step by pydantic's JSON
#: parser (nesting is bounded there, so a 200,000-deep ``[`` is a 422, not a RecursionError).
_UPLOAD_JOBS: TypeAdapter[list[JobOptions]] = TypeAdapter(list[JobOptions])


def _invalid(exc: ValidationError, *where: str | int) -> RequestValidationError:
    """A 422 naming the multipart fields that did not validate (``jobs.1.id``). The client's
    input is never echoed."""
    return RequestValidationError(
        [
            {"loc": ("body", *where, *error["loc"]), "msg": error["msg"], "type": error["type"]}
            for error in exc.errors(include_url=False, include_input=False, include_context=False)
        ]
    )


def _upload_requests(form: StreamedForm) -> list[SubmitRequest]:
    """The submit requests of a multipart upload. Its options are validated by the model of the
    JSON endpoints (:class:`~moderation.api.schemas.JobOptions`): the same id pattern, policy
    list, metadata and callback limits.

    Raises:
        RequestValidationError: a ``jobs`` entry, ``policies`` or ``callback_url`` does not
            validate, or ``jobs`` is not JSON (422).
        JobRejected: no image, or not one ``jobs`` entry per image part (400).
    """
    files = form.images
    if not files:
        raise JobRejected(
            "no image part: send each image as a form part named 'image'", code="missing_image"
        )
    given: dict[str, Any] = {}
    if form.fields.get("policies"):
        given["policies"] = form.fields["policies"]
    if form.fields.get("callback_url"):
        given["callback_url"] = form.fields["callback_url"][-1]
    try:
        shared = JobOptions.model_validate(given)
    except ValidationError as exc:
        raise _invalid(exc) from None
    entries = [JobOptions() for _ in files]
    if form.fields.get("jobs"):
        try:
            entries = _UPLOAD_JOBS.validate_json(form.fields["jobs"][-1])
        except ValidationError as exc:
            raise _invalid(exc, "jobs") from None
        if len(entries) != len(files):
            raise JobRejected(
                f"jobs has {len(entries)} entries for {len(files)} image parts: give one entry "
                "per image part, in the order of the parts",
                code="bad_options",
            )
    requests = []
    for part, entry in zip(files, entries, strict=True):
        own = entry.model_fields_set
        requests.append(
            SubmitRequest(
                image_bytes=part if isinstance(part, bytes) else None,
                image_upload=part if isinstance(part, StoredUpload) else None,
                id=entry.id,
                policies=entry.policies if "policies" in own else shared.policies,
                metadata=entry.metadata,
                callback_url=entry.callback_url if "callback_url" in own else shared.callback_url,
                priority=entry.priority,
                uploader_id=entry.uploader_id,
            )
        )
    return requests


#: One ``jobs`` entry of a multipart upload, as the OpenAPI document shows it.
_UPLOAD_ENTRY: dict[str, Any] = {
    k: v for k, v in JobOptions.model_json_schema().items() if k not in ("title", "description")
}
#: The multipart body of ``/v1/jobs:upload``, for the OpenAPI document (limits and policy ids
#: are filled in by ``openapi()``).
UPLOAD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["image"],
    "properties": {
        "image": {
            "type": "array",
            "minItems": 1,
            "items": {"type": "string", "format": "binary", "minLength": 1},
            "description": "One part per image or video (raw bytes). A part over "
            "video.stream_above_bytes is streamed to the object store as it arrives, up to "
            "video.max_upload_bytes (413 video_upload_too_large past it, nothing stored).",
        },
        "jobs": {
            "type": "array",
            "description": "Per-image options (JSON): exactly one entry per `image` part, in the "
            "order of the parts (entry n applies to image n); each entry takes the fields of a "
            "JobRequest other than the image, with the same patterns and limits. A `jobs` array "
            "whose length differs from the number of image parts is refused (400 bad_options).",
            "items": _UPLOAD_ENTRY,
        },
        "policies": {
            **_UPLOAD_ENTRY["properties"]["policies"],
            "description": "Policy ids for every image without its own `policies` entry.",
        },
        "callback_url": {
            **_UPLOAD_ENTRY["properties"]["callback_url"],
            "description": "Callback for every image without its own `callback_url` entry.",
        },
    },
}
UPLOAD_ENCODING = {"jobs": {"contentType": "application/json"}}


def _caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> Tenant:
    """The tenant of the request's API key (``default`` when no keys are configured, which only
    development mode allows). :class:`~moderation.api.authn.AuthenticateFirst` has checked the
    key before the body was read; this reads what it found (``credentials`` is here for the
    OpenAPI document's security scheme).

    Raises:
        JobRejected: 401, no key or not a configured one.
    """
    keys: TenantKeys = request.app.state.tenant_keys
    tenants: dict[str, Tenant] = request.app.state.tenants
    if keys.open:
        return tenants[DEFAULT_TENANT]
    found: str | None = getattr(request.state, STATE_TENANT, None)
    if found is None:
        found = keys.tenant_of(request.headers.get("authorization"))
    if found is None:
        raise JobRejected(
            "missing or wrong API key (Authorization: Bearer <key>)",
            status=401,
            code="unauthorized",
        )
    return tenants[found]


Caller = Annotated[Tenant, Depends(_caller)]


def create_app(api: ApiProcess) -> FastAPI:
    """The API application over the collaborators of :func:`moderation.compose.api.build_api`."""
    settings = api.settings
    submitter = api.submitter
    tenants = api.tenants
    app = FastAPI(
        # Production: no interactive docs, and the OpenAPI document needs a tenant's key.
        docs_url="/docs" if settings.development else None,
        redoc_url="/redoc" if settings.development else None,
        title="Moderation API",
        version="1",
        description="Enqueue images for policy-driven moderation; read verdicts. Every /v1 call "
        "authenticates with `Authorization: Bearer <key>`; the key names your tenant, and ids, "
        "reads, limits and policy sets are your tenant's own. Errors are RFC 9457 problem "
        "details (application/problem+json) with a stable `code`.",
    )
    app.state.api = api
    app.add_exception_handler(ModerationError, handle_moderation_error)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.add_exception_handler(HTTPException, handle_http_error)
    app.add_exception_handler(Exception, handle_unexpected_error)
    limits, default_limit = body_limits(settings)
    app.add_middleware(BodyLimit, limits=limits, default=default_limit, streamed=STREAMED)
    uploads = api.uploads
    #: Non-image fields of an upload (``jobs``, ``policies``, ``callback_url``), all together.
    upload_field_bytes = limits[("POST", "/v1/jobs:upload")] - max_upload_bytes(settings)
    keys = TenantKeys((k.key.get_secret_value(), k.tenant) for k in settings.api_keys)
    app.add_middleware(
        AuthenticateFirst,
        keys=keys,
        prefixes=("/v1/",),
        exact=frozenset() if settings.development else frozenset({"/openapi.json"}),
    )
    app.add_middleware(HttpMetrics, routes=lambda: list(app.router.routes))
    if settings.api_trusted_proxies:
        app.add_middleware(TrustedProxies, proxies=settings.api_trusted_proxies)

    app.state.tenant_keys = keys
    app.state.tenants = tenants
    max_inline = settings.queue.max_inline_bytes

    @app.post(
        "/v1/jobs",
        status_code=202,
        response_model=JobAccepted,
        responses={
            200: {
                "model": JobAccepted,
                "description": "Duplicate: this request with this id "
                "was already submitted (nothing new is queued).",
            },
            **_responses(400, 401, 409, 413, 422, 429, 500, 503),
        },
        tags=["jobs"],
    )
    def submit_job(req: JobRequest, response: Response, caller: Caller) -> JobAccepted:
        """Enqueue one image. 202 with the job id; 200 when the same request with this id
        exists; 409 when the id is taken by a different request."""
        accepted = submitter.submit([_request(req, max_inline)], tenant=caller)[0]
        if accepted.duplicate:
            response.status_code = 200
        return _accepted(accepted)

    @app.post(
        "/v1/jobs:batch",
        status_code=202,
        response_model=BatchAccepted,
        responses=_responses(400, 401, 409, 413, 422, 429, 500, 503),
        tags=["jobs"],
    )
    def submit_batch(req: BatchRequest, caller: Caller) -> BatchAccepted:
        """Enqueue many images. Every job is validated before any is enqueued; a refused job is
        named by `index`."""
        requests = []
        for index, item in enumerate(req.jobs):
            try:
                requests.append(_request(item, max_inline))
            except JobRejected as exc:
                raise JobRejected(
                    f"jobs[{index}]: {exc}", status=exc.status, code=exc.code, index=index
                ) from exc
        return BatchAccepted(jobs=[_accepted(a) for a in submitter.submit(requests, tenant=caller)])

    @app.post(
        "/v1/jobs:upload",
        status_code=202,
        response_model=BatchAccepted,
        responses=_responses(400, 401, 409, 413, 422, 429, 500, 503),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": copy.deepcopy(UPLOAD_SCHEMA),  # openapi() fills in limits
                        "encoding": UPLOAD_ENCODING,
                    }
                },
            }
        },
        tags=["jobs"],
    )
    async def upload(request: Request, caller: Caller) -> BatchAccepted:
        """Enqueue images sent as raw bytes: one ``image`` part per image (no base64, no JSON
        around the bytes). Optional ``jobs``: a JSON array of per-image options (``id``,
        ``metadata``, ``policies``, ``callback_url``), in the order of the images; ``policies``
        and ``callback_url`` fields apply to every image. Validated like ``/v1/jobs:batch``."""
        limit = settings.queue.max_batch_jobs
        try:
            form = await read_upload(
                request,
                uploads,
                max_inline_bytes=settings.queue.max_inline_bytes,
                max_files=limit,
                max_fields=limit + 16,
                max_field_bytes=upload_field_bytes,
                # what submit accepts inline in one request (one job: its own inline cap)
                max_memory_bytes=max(
                    settings.queue.max_batch_bytes, settings.queue.max_inline_bytes
                ),
            )
        except JobRejected as exc:
            if exc.status == 413:  # the body is still arriving: refuse it so the client reads it
                raise BodyRefused(exc.status, exc.code, exc.message) from exc
            raise
        try:
            requests = _upload_requests(form)
        except BaseException:
            for stored in form.stored():
                if uploads is not None:
                    await run_in_threadpool(drop_upload, uploads.blobs, stored)
            raise
        # The submit use case deletes the stored parts no new job refers to.
        accepted = await run_in_threadpool(submitter.submit, requests, tenant=caller)
        return BatchAccepted(jobs=[_accepted(a) for a in accepted])

    @app.post(
        "/v1/jobs:lookup",
        response_model=LookupAnswer,
        responses=_responses(401, 422, 500, 503),
        tags=["jobs"],
    )
    def lookup(req: LookupRequest, caller: Caller) -> LookupAnswer:
        """The results of many of your jobs at once, in the order asked (``null`` for an
        unknown or expired id): what a client polls instead of one request per job."""
        return LookupAnswer(jobs=submitter.results(req.ids, tenant=caller))

    @app.get(
        "/v1/jobs/{job_id}",
        response_model=JobResult,
        responses=_responses(401, 404, 422, 500, 503),
        tags=["jobs"],
    )
    def get_job(
        job_id: Annotated[str, Path(pattern=JOB_ID_PATTERN, description="Your job id.")],
        caller: Caller,
    ) -> JobResult:
        """Status, and the verdict or error once the job ended (your tenant's jobs only)."""
        return submitter.result(job_id, tenant=caller)

    def _notice_desk() -> NoticeDesk:
        if api.notice_desk is None:
            raise JobRejected(
                "notices need the database (database.url)",
                status=503,
                code="notices_unavailable",
            )
        return api.notice_desk

    @app.post(
        "/v1/jobs/{job_id}/notices",
        response_model=NoticeAnswer,
        status_code=201,
        responses=_responses(400, 401, 403, 404, 409, 422, 429, 500, 503),
        tags=["notices"],
    )
    def file_notice(
        job_id: Annotated[str, Path(pattern=JOB_ID_PATTERN, description="Your job id.")],
        req: NoticeRequest,
        response: Response,
        caller: Caller,
    ) -> NoticeAnswer:
        """Report one of your jobs (a user's notice, or a trusted flagger's): the item goes to
        human review (a trusted flagger's first) and the reporter gets a signed
        `notice.outcome` callback once a reviewer decided. The same report again (same
        reporter, job and reason) collapses into the first: 200 with `duplicate: true`. A job
        that ended without a verdict is scored again (its image fetched again) and reviewed; 409
        `notice_source_gone` when its bytes were sent inline and are gone, 409
        `notice_not_reviewable` when it has not ended yet."""
        filed = _notice_desk().file(
            tenant=caller,
            job_id=job_id,
            reporter_type=ReporterType(req.reporter_type),
            reporter=req.reporter,
            reason=req.reason,
            text=req.text,
            callback_url=req.callback_url,
        )
        if not filed.new:
            response.status_code = 200
        return _notice_answer(filed.notice, duplicate=not filed.new)

    @app.get(
        "/v1/notices/{notice_id}",
        response_model=NoticeAnswer,
        responses=_responses(401, 404, 422, 500, 503),
        tags=["notices"],
    )
    def get_notice(
        notice_id: Annotated[str, Path(pattern=r"^ntc_[0-9a-f]{24}$")],
        caller: Caller,
    ) -> NoticeAnswer:
        """One of your notices: open, or answered with the reviewer's decision."""
        return _notice_answer(_notice_desk().get(tenant=caller, notice_id=notice_id))

    appeals = api.appeals

    @app.post(
        "/v1/jobs/{job_id}/appeals",
        status_code=201,
        response_model=Appeal,
        responses={
            200: {"model": Appeal, "description": "This appeal was already filed."},
            **_responses(401, 404, 409, 422, 500, 503),
        },
        tags=["appeals"],
    )
    def file_appeal(
        job_id: Annotated[str, Path(pattern=JOB_ID_PATTERN, description="Your job id.")],
        req: AppealRequest,
        response: Response,
        caller: Caller,
    ) -> Appeal:
        """Appeal the decision that restricted one of your jobs' content (a block or a
        removal), with the user's statement: a reviewer who did not decide it before looks at
        it again. Within the appeal window only (409 ``appeal_window_closed``), once per
        decision unless configured otherwise (409 ``appeal_limit_reached``); a decision that
        restricted nothing answers 409 ``appeal_not_allowed``. The outcome comes as the
        ``job.appeal_decided`` callback and in ``GET /v1/appeals/{appeal_id}``."""
        before = len(appeals.for_job(job_id, tenant=caller.name))
        appeal = appeals.file(job_id, tenant=caller.name, statement=req.statement)
        if appeal.number <= before:
            response.status_code = 200
        return appeal.for_caller()

    @app.get(
        "/v1/jobs/{job_id}/appeals",
        response_model=list[Appeal],
        responses=_responses(401, 404, 422, 500, 503),
        tags=["appeals"],
    )
    def job_appeals(
        job_id: Annotated[str, Path(pattern=JOB_ID_PATTERN, description="Your job id.")],
        caller: Caller,
    ) -> list[Appeal]:
        """The appeals of one of your jobs, oldest first."""
        return appeals.for_job(job_id, tenant=caller.name)

    @app.get(
        "/v1/appeals/{appeal_id}",
        response_model=Appeal,
        responses=_responses(401, 404, 422, 500, 503),
        tags=["appeals"],
    )
    def get_appeal(
        appeal_id: Annotated[str, Path(pattern=r"^apl_[0-9a-f]{24}$")],
        caller: Caller,
    ) -> Appeal:
        """One of your appeals: ``status`` open, upheld or overturned, with the reason code."""
        return appeals.get(appeal_id, tenant=caller.name)

    @app.get("/problems/{code}", response_class=HTMLResponse, include_in_schema=False)
    def problem_page(code: str) -> HTMLResponse:
        """What an error code means (the ``type`` of a problem answer)."""
        import html

        text = _problem_codes().get(code, "See the detail member of the answer.")
        return HTMLResponse(
            f"<!doctype html><title>{html.escape(code)}</title>"
            f"<h1>{html.escape(code)}</h1><p>{html.escape(text)}</p>"
        )

    @app.get("/healthz", response_model=Health, tags=["operations"])
    def healthz() -> Health:
        """The process is alive."""
        return Health(status="ok")

    if settings.development:  # the API is open here too; production: the operations port
        app.include_router(operations_router(api))
    else:

        @app.get(
            "/readyz",
            response_model=PublicReadiness,
            responses={503: {"model": PublicReadiness, "description": "Not ready."}},
            tags=["operations"],
        )
        def readyz() -> JSONResponse:
            """Ready when this process can take jobs (the details are on the operations
            port)."""
            ok = ready_status(api)
            return JSONResponse(
                {"status": "ready" if ok else "not ready"}, status_code=200 if ok else 503
            )

    def openapi() -> dict[str, Any]:
        """The OpenAPI document, with what the models cannot say: the configured size limits
        and the policy ids in service (regenerated when they change)."""
        known = sorted(_quiet(submitter.catalog.known) or [])
        cached = app.openapi_schema
        if cached is not None and cached.get("x-policies") == known:
            return cached
        spec = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
            tags=[
                {"name": "jobs", "description": "Submit images, read verdicts."},
                {"name": "operations", "description": "Health, readiness, metrics."},
            ],
        )
        for operation in (op for item in spec["paths"].values() for op in item.values()):
            for status, answer in operation.get("responses", {}).items():
                content = answer.get("content", {})
                if status[0] in "45" and PROBLEM_JSON in content:
                    answer["content"] = {PROBLEM_JSON: content[PROBLEM_JSON]}  # one shape
        schemas = spec["components"]["schemas"]
        request = schemas["JobRequest"]["properties"]
        request["image_base64"]["maxLength"] = (max_inline + 2) // 3 * 4
        if known:
            request["policies"]["items"]["enum"] = known
        schemas["BatchRequest"]["properties"]["jobs"]["maxItems"] = settings.queue.max_batch_jobs
        upload = spec["paths"]["/v1/jobs:upload"]["post"]["requestBody"]["content"][
            "multipart/form-data"
        ]["schema"]["properties"]
        upload["image"]["maxItems"] = upload["jobs"]["maxItems"] = settings.queue.max_batch_jobs
        # (a part over video.stream_above_bytes streams to the object store, up to this)
        upload["image"]["items"]["maxLength"] = max(
            settings.queue.max_inline_bytes, max_upload_bytes(settings)
        )
        if known:
            upload["policies"]["items"]["enum"] = known
            upload["jobs"]["items"]["properties"]["policies"]["items"]["enum"] = known
        if keys.open:
            _open_api_security(spec)
        spec["x-policies"] = known
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _open_api_security(spec: dict[str, Any]) -> None:
    """Make the document describe an API without keys (development, the demo): no security
    requirement and no 401 on any operation, and a description that says so."""
    for operation in (op for item in spec["paths"].values() for op in item.values()):
        operation.pop("security", None)
        operation.get("responses", {}).pop("401", None)
    spec.get("components", {}).pop("securitySchemes", None)
    spec["info"]["description"] = (
        "Enqueue images for policy-driven moderation; read verdicts. This deployment has no API "
        "keys configured (development mode): /v1 calls need no `Authorization` header and all "
        "act as tenant `default`. Errors are RFC 9457 problem details "
        "(application/problem+json) with a stable `code`."
    )


def _quiet(read: Any) -> Any:
    """``read()``, or None when Redis or the broker is unavailable (metrics and docs degrade)."""
    try:
        return read()
    except ModerationError:
        return None
