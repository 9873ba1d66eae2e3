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
import logging
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException

from moderation import exceptions
from moderation.api.problems import (
    Problem,
    handle_http_error,
    handle_moderation_error,
    handle_validation_error,
)
from moderation.api.schemas import BatchAccepted, BatchRequest, JobAccepted, JobRequest
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
            banks=api.banks,
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

    @app.get(
        "/v1/jobs/{job_id}",
        response_model=JobResult,
        dependencies=guarded,
        responses=_responses(401, 404, 503),
    )
    def get_job(job_id: str) -> JobResult:
        """Status, and the verdict or error once the job ended."""
        result = store.get_result(job_id)
        if result is None:
            raise JobNotFoundError(f"no job {job_id!r} (unknown or expired)")
        return result

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
            "workers": [
                {k: w.get(k) for k in ("name", "model", "policies", "banks")} for w in workers
            ],
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
