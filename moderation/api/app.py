"""The HTTP API: upstream services enqueue images and read results; reviewers' pages under
``/review``.

``POST /v1/jobs`` (202 + job id at once; 200 for a duplicate id), ``POST /v1/jobs:batch``,
``GET /v1/jobs/{id}``, ``/healthz``, ``/readyz``, ``/metrics``; OpenAPI at ``/openapi.json`` and
``/docs``. The endpoints parse and authenticate, then call the submit use case
(:class:`moderation.pipeline.submit.Submitter`); every error is RFC 9457 problem details
(:mod:`moderation.api.problems`). Internal addresses in image URLs are refused by the worker's
SSRF guard (also after DNS resolution and redirects), so they end as error results, not 4xx.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import inspect
import json
import logging
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException

from moderation import exceptions
from moderation.api.problems import (
    Problem,
    handle_http_error,
    handle_moderation_error,
    handle_validation_error,
)
from moderation.api.schemas import (
    BatchAccepted,
    BatchRequest,
    JobAccepted,
    JobRequest,
    LookupAnswer,
    LookupRequest,
)
from moderation.compose import ApiProcess
from moderation.core.jobs import JobResult
from moderation.exceptions import JobNotFoundError, JobRejected, ModerationError
from moderation.metrics import render, render_review_gauges
from moderation.pipeline.submit import Accepted, SubmitRequest

__all__ = ["create_app"]

log = logging.getLogger(__name__)

_PROBLEMS: dict[int | str, dict[str, Any]] = {
    status: {"model": Problem, "content": {"application/problem+json": {}}}
    for status in (400, 401, 404, 413, 422, 503)
}


def _responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: _PROBLEMS[s] for s in statuses}


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
    )


def _accepted(a: Accepted) -> JobAccepted:
    return JobAccepted(id=a.id, status=a.status, duplicate=a.duplicate, url=f"/v1/jobs/{a.id}")


def _problem_codes() -> dict[str, str]:
    """Every error code of the exception tree, with its class's description."""
    out: dict[str, str] = {}
    for _, cls in inspect.getmembers(exceptions, inspect.isclass):
        if issubclass(cls, ModerationError):
            doc = inspect.getdoc(cls) or ""
            out.setdefault(cls.code, doc.splitlines()[0] if doc else cls.__name__)
    return out


async def _upload_requests(form: FormData) -> list[SubmitRequest]:
    """The submit requests of a multipart upload.

    Raises:
        JobRejected: no image, or a ``jobs`` option list that does not fit the images.
    """
    files = [part for part in form.getlist("image") if isinstance(part, UploadFile)]
    if not files:
        raise JobRejected(
            "no image part: send each image as a form part named 'image'", code="missing_image"
        )
    shared = {
        "policies": [str(p) for p in form.getlist("policies")] or None,
        "callback_url": str(form["callback_url"]) if "callback_url" in form else None,
    }
    options: list[dict[str, Any]] = [{} for _ in files]
    if "jobs" in form:
        try:
            given = json.loads(str(form["jobs"]))
        except ValueError as exc:
            raise JobRejected(f"jobs is not JSON: {exc}", code="bad_options") from exc
        if (
            not isinstance(given, list)
            or len(given) != len(files)
            or not all(isinstance(o, dict) and set(o) <= _OPTIONS for o in given)
        ):
            raise JobRejected(
                f"jobs must be a JSON array of {len(files)} objects with keys from "
                f"{sorted(_OPTIONS)} (one per image part)",
                code="bad_options",
            )
        options = given
    requests = []
    for index, (part, extra) in enumerate(zip(files, options, strict=True)):
        policies = extra.get("policies", shared["policies"])
        try:
            requests.append(
                SubmitRequest(
                    image_bytes=await part.read(),
                    id=extra.get("id"),
                    policies=list(policies) if policies is not None else None,
                    metadata=dict(extra.get("metadata") or {}),
                    callback_url=extra.get("callback_url", shared["callback_url"]),
                )
            )
        except (TypeError, ValueError) as exc:
            raise JobRejected(f"jobs[{index}]: {exc}", code="bad_options", index=index) from exc
    return requests


_OPTIONS = {"id", "metadata", "policies", "callback_url"}

#: The multipart body of ``/v1/jobs:upload``, for the OpenAPI document.
UPLOAD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["image"],
    "properties": {
        "image": {
            "type": "array",
            "items": {"type": "string", "format": "binary"},
            "description": "One part per image (raw bytes).",
        },
        "jobs": {
            "type": "string",
            "description": "JSON array of per-image options: id, metadata, policies, callback_url.",
        },
        "policies": {"type": "array", "items": {"type": "string"}},
        "callback_url": {"type": "string"},
    },
}


def create_app(api: ApiProcess) -> FastAPI:
    """The API application over the collaborators of :func:`moderation.compose.build_api`."""
    settings = api.settings
    submitter = api.submitter
    store = api.store
    app = FastAPI(
        title="Moderation API",
        version="1",
        description="Enqueue images for policy-driven moderation; read verdicts. Errors are "
        "RFC 9457 problem details (application/problem+json).",
    )
    app.state.api = api
    app.add_exception_handler(ModerationError, handle_moderation_error)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.add_exception_handler(HTTPException, handle_http_error)

    from moderation.web import build_review_router

    app.include_router(
        build_review_router(
            settings,
            api.review_queue,
            api.reviewers,
            on_final=api.outcomes.record_human_decision,
            image_loader=api.sources.fetch,
        )
    )

    keys = [k.get_secret_value().encode() for k in settings.api_keys]

    def authorized(request: Request) -> None:
        """``Authorization: Bearer <key>`` on /v1/* when API keys are configured."""
        if not keys:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        # Compare against every key (constant time each), so timing reveals nothing.
        matches = [hmac.compare_digest(given.strip().encode(), key) for key in keys]
        if scheme.lower() != "bearer" or not any(matches):
            raise JobRejected(
                "missing or wrong API key (Authorization: Bearer <key>)",
                status=401,
                code="unauthorized",
            )

    guarded = [Depends(authorized)]
    max_inline = settings.queue.max_inline_bytes

    @app.post(
        "/v1/jobs",
        status_code=202,
        response_model=JobAccepted,
        dependencies=guarded,
        responses={200: {"model": JobAccepted}, **_responses(400, 401, 413, 422, 503)},
    )
    def submit_job(req: JobRequest, response: Response) -> JobAccepted:
        """Enqueue one image. 202 with the job id; 200 when the id already exists."""
        accepted = submitter.submit([_request(req, max_inline)])[0]
        if accepted.duplicate:
            response.status_code = 200
        return _accepted(accepted)

    @app.post(
        "/v1/jobs:batch",
        status_code=202,
        response_model=BatchAccepted,
        dependencies=guarded,
        responses=_responses(400, 401, 413, 422, 503),
    )
    def submit_batch(req: BatchRequest) -> BatchAccepted:
        """Enqueue many images. Every job is validated before any is enqueued."""
        requests = []
        for index, item in enumerate(req.jobs):
            try:
                requests.append(_request(item, max_inline))
            except JobRejected as exc:
                raise JobRejected(
                    f"jobs[{index}]: {exc}", status=exc.status, code=exc.code, index=index
                ) from exc
        return BatchAccepted(jobs=[_accepted(a) for a in submitter.submit(requests)])

    @app.post(
        "/v1/jobs:upload",
        status_code=202,
        response_model=BatchAccepted,
        dependencies=guarded,
        responses=_responses(400, 401, 413, 422, 503),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"multipart/form-data": {"schema": UPLOAD_SCHEMA}},
            }
        },
    )
    async def upload(request: Request) -> BatchAccepted:
        """Enqueue images sent as raw bytes: one ``image`` part per image (no base64, no JSON
        around the bytes). Optional ``jobs``: a JSON array of per-image options (``id``,
        ``metadata``, ``policies``, ``callback_url``), in the order of the images; ``policies``
        and ``callback_url`` fields apply to every image."""
        limit = settings.queue.max_batch_jobs
        form = await request.form(max_files=limit, max_fields=limit + 16)
        try:
            requests = await _upload_requests(form)
        finally:
            await form.close()
        accepted = await run_in_threadpool(submitter.submit, requests)
        return BatchAccepted(jobs=[_accepted(a) for a in accepted])

    @app.post(
        "/v1/jobs:lookup",
        dependencies=guarded,
        response_model=LookupAnswer,
        responses=_responses(401, 422, 503),
    )
    def lookup(req: LookupRequest) -> Response:
        """The results of many jobs at once, in the order asked (``null`` for an unknown or
        expired id): what a client polls instead of one request per job."""
        found = store.result_json(req.ids)
        body = b'{"jobs":[' + b",".join(raw or b"null" for raw in found) + b"]}"
        return Response(body, media_type="application/json")

    @app.get(
        "/v1/jobs/{job_id}",
        response_model=JobResult,
        dependencies=guarded,
        responses=_responses(401, 404, 503),
    )
    def get_job(job_id: str) -> Response:
        """Status, and the verdict or error once the job ended."""
        raw = store.result_json([job_id])[0]
        if raw is None:
            raise JobNotFoundError(f"no job {job_id!r} (unknown or expired)")
        return Response(raw, media_type="application/json")

    @app.get("/problems/{code}", response_class=HTMLResponse, include_in_schema=False)
    def problem_page(code: str) -> HTMLResponse:
        """What an error code means (the ``type`` of a problem answer)."""
        import html

        text = _problem_codes().get(code, "See the detail member of the answer.")
        return HTMLResponse(
            f"<!doctype html><title>{html.escape(code)}</title>"
            f"<h1>{html.escape(code)}</h1><p>{html.escape(text)}</p>"
        )

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        """Redis answers and at least one worker is alive (heartbeat)."""
        redis_ok = store.ping()
        workers: list[dict[str, Any]] = store.workers() if redis_ok else []
        ready = redis_ok and bool(workers)
        body = {
            "status": "ready" if ready else "not ready",
            "redis": redis_ok,
            "workers": [{k: w.get(k) for k in ("name", "model", "policies")} for w in workers],
        }
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics")
    def prometheus() -> Response:
        """Prometheus metrics of the API and every worker process on this host."""
        try:
            depth: int | None = api.publisher.queue_depth()
        except ModerationError:
            depth = None
        body, content_type = render(queue_depth=depth)
        try:
            stats = api.review_queue.stats()
            body += render_review_gauges(
                lambda: [(s.policy_id, s.waiting, s.in_review, s.oldest_age_s) for s in stats]
            )
        except ModerationError:
            log.warning("review queue stats unavailable for /metrics")
        return Response(body, media_type=content_type)

    return app
