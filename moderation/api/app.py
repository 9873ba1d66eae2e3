"""The HTTP API: upstream services enqueue images and read results.

``POST /v1/jobs`` (202 + job id at once; 200 for a duplicate id), ``POST /v1/jobs:batch``,
``GET /v1/jobs/{id}``, ``/healthz``, ``/readyz``, ``/metrics``; OpenAPI at ``/openapi.json`` and
``/docs``. A request is validated completely before anything is stored (unknown policy, missing
or oversize image, bad reference scheme: 4xx with ``{"code", "message"}``); the job record is
created with SET NX (idempotency) and rolled back if the broker refuses the message, so nothing
is half-enqueued. Internal addresses in image URLs are refused by the worker's SSRF guard (also
after DNS resolution and redirects), so they end as error results, not 4xx.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import time
from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from moderation.adapters.job_store import JobStore
from moderation.api.schemas import BatchAccepted, BatchRequest, ErrorBody, JobAccepted, JobRequest
from moderation.exceptions import (
    ImageFetchError,
    JobNotFoundError,
    JobRejected,
    ModerationError,
    PolicyError,
    QueueUnavailable,
)
from moderation.jobs import Job, JobResult, new_job_id
from moderation.metrics import metrics, render
from moderation.ports import AuditSink
from moderation.settings import Settings

__all__ = ["JobSender", "create_app"]

log = logging.getLogger(__name__)

#: ``job_id`` -> publishes the ``moderation.moderate`` message (task id = job id).
JobSender = Callable[[str], None]


def _celery_sender(settings: Settings) -> JobSender:
    from workers.celery_app import create_celery

    celery = create_celery(settings)
    queue = settings.queue.queue_name

    def send(job_id: str) -> None:
        try:
            celery.send_task("moderation.moderate", args=[job_id], task_id=job_id, queue=queue,
                             ignore_result=True)
        except Exception as exc:  # kombu/redis raise many types; all mean "not enqueued"
            raise QueueUnavailable(f"cannot enqueue job {job_id}: {exc}") from exc

    return send


def _celery_callback_sender(settings: Settings) -> Callable[[str, str, bytes], None]:
    """Schedules ``moderation.deliver_callback`` (run by the workers) from the API process."""
    from workers.celery_app import create_celery

    celery = create_celery(settings)

    def enqueue(job_id: str, url: str, body: bytes) -> None:
        celery.send_task("moderation.deliver_callback", args=[job_id, url, body.decode()],
                         queue=settings.queue.callback_queue_name, ignore_result=True)

    return enqueue


class _PolicyCatalog:
    """Policy ids the workers serve (from their heartbeats), else those in the policy files."""

    def __init__(self, settings: Settings, store: JobStore) -> None:
        self.settings = settings
        self.store = store
        self._files: tuple[float, dict[str, bool]] | None = None

    def _from_files(self) -> dict[str, bool]:
        if self._files is not None and time.monotonic() - self._files[0] < 10:
            return self._files[1]
        from moderation.policy_files import load_policies

        try:
            policies = load_policies(self.settings.policy_paths)
            known = {pid: policies[pid].active for pid in policies}
        except PolicyError as exc:
            log.warning("cannot read policy files: %s", exc)
            known = {}
        self._files = (time.monotonic(), known)
        return known

    def known(self) -> set[str]:
        from_workers = self.store.known_policies()
        return set(from_workers) if from_workers else set(self._from_files())


def _reject(status: int, code: str, message: str) -> JobRejected:
    return JobRejected(message, status=status, code=code)


def _check_ref(ref: str) -> None:
    from moderation.adapters.fetch import parse_s3_ref
    from moderation.adapters.ssrf import Allowlist, check_url

    scheme = ref.split(":", 1)[0].lower() if ":" in ref else ""
    try:
        if scheme == "s3":
            parse_s3_ref(ref)
        elif scheme in ("http", "https"):
            # Scheme and syntax only: address vetting happens at fetch time, after DNS.
            check_url(ref, Allowlist.parse(["0.0.0.0/0", "::/0"]))
        else:
            raise _reject(400, "bad_scheme", f"image_url scheme {scheme or '(none)'!r} is not "
                          "supported: use s3://bucket/key, http:// or https://")
    except ImageFetchError as exc:
        raise _reject(400, exc.code, str(exc)) from exc


def _validate(req: JobRequest, settings: Settings, known: set[str]) -> tuple[Job, bytes | None]:
    q = settings.queue
    inline: bytes | None = None
    if req.image_base64 is not None:
        if len(req.image_base64) > (q.max_inline_bytes + 2) // 3 * 4 + 4:
            raise _reject(413, "inline_too_large",
                          f"inline image exceeds {q.max_inline_bytes} bytes; upload it to S3 "
                          "and send image_url instead")
        try:
            inline = base64.b64decode(req.image_base64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _reject(400, "bad_base64", f"image_base64 is not valid base64: {exc}") from exc
        if not inline:
            raise _reject(400, "empty_image", "image_base64 is empty")
        if len(inline) > q.max_inline_bytes:
            raise _reject(413, "inline_too_large",
                          f"inline image is {len(inline)} bytes; the limit is "
                          f"{q.max_inline_bytes}")
        ref = "inline:"
    else:
        ref = (req.image_url or "").strip()
        if not ref:
            raise _reject(400, "missing_image", "image_url is empty")
        _check_ref(ref)
    if req.policies is not None:
        if not req.policies:
            raise _reject(400, "no_policies", "policies is empty; omit it to apply every "
                          "active policy")
        unknown = sorted(set(req.policies) - known)
        if unknown:
            raise _reject(400, "policy_unknown", f"unknown policy {', '.join(unknown)}; known: "
                          f"{', '.join(sorted(known)) or 'none'}")
    if req.callback_url is not None:
        from moderation.adapters.ssrf import Allowlist, check_url

        try:
            check_url(req.callback_url, Allowlist.parse(["0.0.0.0/0", "::/0"]))
        except ImageFetchError as exc:
            raise _reject(400, "bad_callback_url", f"callback_url: {exc}") from exc
    job = Job(id=req.id or new_job_id(), image_ref=ref, policies=req.policies,
              metadata=req.metadata, callback_url=req.callback_url)
    return job, inline


def create_app(
    settings: Settings,
    *,
    store: JobStore | None = None,
    send: JobSender | None = None,
    audit: AuditSink | None = None,
    review: bool = True,
) -> FastAPI:
    """The API application.

    Args:
        settings: ``redis_url`` (required), ``queue`` limits, ``policy_paths``.
        store: the job store (default: Redis at ``settings.redis_url``).
        send: publishes a job's broker message (default: the Celery app).
        audit: where human review decisions are audited (the API process's own chain).
        review: mount the reviewers' pages under ``/review`` (needs ``settings.redis_url``).

    Raises:
        QueueUnavailable: no Redis URL configured.
    """
    if store is None:
        if not settings.redis_url:
            raise QueueUnavailable("the API needs a Redis URL (MODERATION_REDIS_URL)")
        store = JobStore.from_url(settings.redis_url, settings.queue)
    job_store = store
    sender = send or _celery_sender(settings)
    catalog = _PolicyCatalog(settings, job_store)
    app = FastAPI(
        title="Moderation API",
        version="1",
        description="Enqueue images for policy-driven moderation; read verdicts.",
    )
    app.state.settings = settings
    app.state.store = job_store
    review_queue = None
    if review and settings.redis_url:
        from moderation.wiring import mount_review

        review_queue = mount_review(
            app, settings, job_store, audit=audit,
            enqueue_callback=_celery_callback_sender(settings) if send is None else None,
        )
    app.state.review_queue = review_queue

    @app.exception_handler(ModerationError)
    async def _moderation_error(_: Request, exc: ModerationError) -> JSONResponse:
        if isinstance(exc, JobRejected):
            status = exc.status
        elif isinstance(exc, JobNotFoundError):
            status = 404
        elif exc.transient:
            status = 503
        else:
            status = 400
        body = ErrorBody(code=exc.code, message=str(exc),
                         index=getattr(exc, "index", None))
        return JSONResponse(body.model_dump(exclude_none=True), status_code=status)

    def enqueue(job: Job, inline: bytes | None) -> JobAccepted:
        stored, created = job_store.create(job, inline)
        if created:
            try:
                sender(job.id)
            except ModerationError:
                job_store.delete(job.id)
                raise
            metrics().submitted.inc()
            status = JobResult.queued(job).status
        else:
            existing = job_store.get_result(stored.id)
            status = existing.status if existing else JobResult.queued(stored).status
        return JobAccepted(id=stored.id, status=status, duplicate=not created,
                           url=f"/v1/jobs/{stored.id}")

    keys = [k.get_secret_value().encode() for k in settings.api_keys]

    def authorized(request: Request) -> None:
        """``Authorization: Bearer <key>`` on /v1/* when API keys are configured."""
        if not keys:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        # Compare against every key (constant time each), so timing reveals nothing.
        matches = [hmac.compare_digest(given.strip().encode(), key) for key in keys]
        if scheme.lower() != "bearer" or not any(matches):
            raise _reject(401, "unauthorized",
                          "missing or wrong API key (Authorization: Bearer <key>)")

    guarded = [Depends(authorized)]

    @app.post("/v1/jobs", status_code=202, response_model=JobAccepted, dependencies=guarded,
              responses={200: {"model": JobAccepted}, 400: {"model": ErrorBody},
                         413: {"model": ErrorBody}, 503: {"model": ErrorBody}})
    def submit_job(req: JobRequest, response: Response) -> JobAccepted:
        """Enqueue one image. 202 with the job id; 200 when the id already exists."""
        job, inline = _validate(req, settings, catalog.known())
        accepted = enqueue(job, inline)
        if accepted.duplicate:
            response.status_code = 200
        return accepted

    @app.post("/v1/jobs:batch", status_code=202, response_model=BatchAccepted,
              dependencies=guarded,
              responses={400: {"model": ErrorBody}, 413: {"model": ErrorBody}})
    def submit_batch(req: BatchRequest) -> BatchAccepted:
        """Enqueue many images. Every job is validated before any is enqueued."""
        if len(req.jobs) > settings.queue.max_batch_jobs:
            raise _reject(413, "batch_too_large",
                          f"{len(req.jobs)} jobs; at most {settings.queue.max_batch_jobs}")
        known = catalog.known()
        validated = []
        for index, item in enumerate(req.jobs):
            try:
                validated.append(_validate(item, settings, known))
            except JobRejected as exc:
                exc.message = f"jobs[{index}]: {exc.message}"
                exc.args = (exc.message,)
                exc.index = index  # type: ignore[attr-defined]
                raise
        return BatchAccepted(jobs=[enqueue(job, inline) for job, inline in validated])

    @app.get("/v1/jobs/{job_id}", response_model=JobResult, dependencies=guarded,
             responses={404: {"model": ErrorBody}})
    def get_job(job_id: str) -> JobResult:
        """Status, and the verdict or error once the job ended."""
        result = job_store.get_result(job_id)
        if result is None:
            raise JobNotFoundError(f"no job {job_id!r} (unknown or expired)")
        return result

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        """Redis answers and at least one worker is alive (heartbeat)."""
        redis_ok = job_store.ping()
        workers: list[dict[str, Any]] = job_store.workers() if redis_ok else []
        ready = redis_ok and bool(workers)
        body = {
            "status": "ready" if ready else "not ready",
            "redis": redis_ok,
            "workers": [{k: w.get(k) for k in ("name", "model", "policies")} for w in workers],
        }
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics")
    def prometheus() -> Response:
        """Prometheus metrics of the API and every worker process (multiprocess mode)."""
        try:
            depth: int | None = job_store.queue_depth()
        except QueueUnavailable:
            depth = None
        body, content_type = render(queue_depth=depth)
        if review_queue is not None:
            from moderation.metrics import render_review_gauges

            try:
                stats = review_queue.stats()
                body += render_review_gauges(lambda: [
                    (s.policy_id, s.waiting, s.in_review, s.oldest_age_s) for s in stats
                ])
            except QueueUnavailable:
                log.warning("review queue stats unavailable for /metrics")
        return Response(body, media_type=content_type)

    return app
