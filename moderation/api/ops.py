"""The operations endpoints: what Kubernetes probes and Prometheus scrape, never the public.

``GET /healthz`` (alive), ``GET /readyz`` (Redis answers; the live workers with their model,
policies and banks) and ``GET /metrics`` (Prometheus text: every process of this host, and the
gauges read from Redis at scrape time, with tenant and policy names).

In production these are served by :func:`create_ops_app` on their own port (``api_ops_port``,
8001 by default; ``moderation api --ops-port``), which only the cluster reaches: the public port
answers ``/healthz`` and ``/readyz`` with a bare status, and has no ``/metrics``. In development
mode (the demo, tests), where the API itself is open, the public app carries them too
(:func:`operations_router`).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from moderation.api.schemas import Health, Readiness
from moderation.compose.api import ApiProcess
from moderation.exceptions import ModerationError
from moderation.metrics import (
    render,
    render_appeal_gauges,
    render_exchange_gauges,
    render_review_gauges,
    render_tenant_backlog,
)
from moderation.pipeline.backlog import tenant_backlog

__all__ = ["create_ops_app", "operations_router", "ready_status"]

log = logging.getLogger(__name__)


def ready_status(api: ApiProcess) -> bool:
    """Whether this API process can take jobs: its own dependency (Redis) answers."""
    return api.store.ping()


def operations_router(api: ApiProcess) -> APIRouter:
    """``/readyz`` with details and ``/metrics`` over the collaborators of ``api``."""
    router = APIRouter(tags=["operations"])
    store = api.store

    @router.get(
        "/readyz",
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "Redis does not answer."}},
    )
    def readyz() -> JSONResponse:
        """Ready when this process's own dependency (Redis) answers. Workers are listed but not
        required: jobs wait in the queue while they restart (watch the
        ``moderation_workers_alive`` metric instead)."""
        redis_ok = ready_status(api)
        workers: list[dict[str, Any]] = []
        if redis_ok:
            try:
                workers = api.workers.workers()
            except ModerationError:
                workers = []
        body = Readiness(
            status="ready" if redis_ok else "not ready",
            redis=redis_ok,
            workers=[
                {k: w.get(k) for k in ("name", "model", "policies", "banks")} for w in workers
            ],
        )
        return JSONResponse(body.model_dump(), status_code=200 if redis_ok else 503)

    @router.get(
        "/metrics",
        response_class=PlainTextResponse,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    def prometheus() -> Response:
        """Prometheus metrics of the API and every worker process on this host, plus gauges
        read from Redis (queue depth, live workers, queued bytes)."""
        depth = _quiet(api.publisher.queue_depth)
        alive = _quiet(lambda: len(api.workers.workers()))
        queued = _quiet(store.queued_bytes)
        oldest = _quiet(lambda: api.deliveries.oldest_pending_age() or 0.0)
        body, content_type = render(
            queue_depth=depth,
            workers_alive=alive,
            queued_bytes=queued,
            oldest_pending_age_s=oldest,
            dead_letters=_quiet(api.deliveries.dead_letter_count),
        )
        try:
            stats = api.review_queue.stats()
            body += render_review_gauges(
                lambda: [(s.policy_id, s.waiting, s.in_review, s.oldest_age_s) for s in stats]
            )
        except ModerationError:
            log.warning("review queue stats unavailable for /metrics")
        try:  # (0 open without a database: no appeals there)
            body += render_appeal_gauges(*api.appeals.backlog())
        except ModerationError:
            log.warning("appeal backlog unavailable for /metrics")
        if api.exchange_health is not None:
            try:
                every = {n: e.interval_s for n, e in api.settings.banks.exchanges.items()}
                body += render_exchange_gauges(
                    (h.source, h.last_success_age_s, h.failures, h.errors_total, every[h.source])
                    for h in api.exchange_health(sorted(every))
                )
            except ModerationError:
                log.warning("exchange sync health unavailable for /metrics")
        if api.backlog is not None:
            try:
                rows = tenant_backlog(api.backlog, store, sorted(api.tenants))
                body += render_tenant_backlog(
                    lambda: [(r.tenant, r.depth, r.oldest_age_s, r.queued_bytes) for r in rows]
                )
            except ModerationError:
                log.warning("tenant backlog unavailable for /metrics")
        return Response(body, media_type=content_type)

    return router


def create_ops_app(api: ApiProcess) -> FastAPI:
    """The operations port's application (no OpenAPI document, no pages)."""
    app = FastAPI(title="Moderation operations", openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/healthz", response_model=Health)
    def healthz() -> Health:
        """The process is alive."""
        return Health(status="ok")

    app.include_router(operations_router(api))
    return app


def _quiet(read: Any) -> Any:
    """``read()``, or None when Redis or the broker is unavailable (metrics degrade)."""
    try:
        return read()
    except ModerationError:
        return None
