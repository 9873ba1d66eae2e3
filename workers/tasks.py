"""Thin Celery tasks: deserialize ids, call the worker runtime, map errors to retries.

``moderation.moderate(job_id)``: the task id *is* the job id. Transient errors retry with
exponential backoff (bounded by ``queue.max_retries``), then end the job as an error result;
permanent errors end it at once. A message whose deliveries keep dying with the worker is
dead-lettered (see :mod:`workers.runtime`).

``moderation.deliver_callback(job_id, url, body)``: POSTs the HMAC-signed body through the SSRF
guarded client; retries with backoff up to ``queue.callback_max_attempts``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import httpx
from celery import Task
from celery.signals import worker_ready, worker_shutdown

from moderation.exceptions import ModerationError, PermanentError, QueueUnavailable
from moderation.metrics import metrics
from moderation.outcomes import SIGNATURE_HEADER, sign
from moderation.settings import Settings
from workers.celery_app import app, current_settings
from workers.runtime import RetryLater, WorkerRuntime

__all__ = ["deliver_callback", "enqueue_callback", "moderate", "worker_runtime"]

log = logging.getLogger(__name__)
_lock = threading.Lock()
_runtime: WorkerRuntime | None = None
_http: httpx.Client | None = None


def enqueue_callback(job_id: str, url: str, body: bytes) -> None:
    """Schedule delivery of a callback (its own task, on the callback queue)."""
    deliver_callback.apply_async(args=(job_id, url, body.decode()), ignore_result=True)


def _republish(job_id: str) -> None:
    """Publish a job's message again (its first one was lost); task id = job id."""
    moderate.apply_async(args=[job_id], task_id=job_id,
                         queue=current_settings().queue.queue_name, ignore_result=True)


def _loaded_policies() -> dict[str, Any]:
    runtime = _runtime
    return {} if runtime is None else {
        pid: c.policy for pid, c in runtime.moderator.compiled.items()
    }


def _open_sinks(settings: Settings) -> dict[str, Any]:
    """This process's audit sink (its own chain) and the review queue sink."""
    from moderation.adapters.audit_log import open_audit_sink
    from moderation.adapters.job_store import JobStore
    from moderation.wiring import ReviewQueueSink, open_review_queue

    assert settings.redis_url is not None
    review = ReviewQueueSink(
        open_review_queue(settings),
        _loaded_policies,
        store=JobStore.from_url(settings.redis_url, settings.queue),
        keep_inline_s=settings.queue.result_ttl_s,
    )
    return {"audit": open_audit_sink(settings), "review": review}


def worker_runtime() -> WorkerRuntime:
    """This process's runtime (model, batcher, store), built on first use."""
    global _runtime
    with _lock:
        if _runtime is None:
            settings = current_settings()
            _runtime = WorkerRuntime(settings, enqueue_callback=enqueue_callback,
                                     republish=_republish, **_open_sinks(settings))
        return _runtime


@worker_ready.connect  # type: ignore[untyped-decorator]
def _warm_up(**_: Any) -> None:
    # Load the model in the background so the first jobs and /readyz do not wait for a task.
    threading.Thread(target=worker_runtime, name="warm-up", daemon=True).start()


@worker_shutdown.connect  # type: ignore[untyped-decorator]
def _shutdown(**_: Any) -> None:
    if _runtime is not None:
        _runtime.close()
        audit = _runtime.outcomes.audit
        close = getattr(audit, "close", None)
        if close is not None:
            close()


@app.task(  # type: ignore[untyped-decorator]
    bind=True, name="moderation.moderate", acks_late=True, reject_on_worker_lost=True,
    max_retries=None, ignore_result=True,
)
def moderate(self: Task, job_id: str) -> str:
    try:
        return worker_runtime().process(job_id, retries=int(self.request.retries)).outcome
    except RetryLater as exc:
        log.info("job %s: %s; retry in %.1fs", job_id, exc.error, exc.countdown)
        raise self.retry(countdown=exc.countdown, exc=exc.error) from exc
    except QueueUnavailable as exc:  # Redis hiccup while ending the job: run it again later
        raise self.retry(countdown=5.0, exc=exc) from exc


@app.task(  # type: ignore[untyped-decorator]
    bind=True, name="moderation.deliver_callback", acks_late=True,
    reject_on_worker_lost=True, max_retries=None, ignore_result=True,
)
def deliver_callback(self: Task, job_id: str, url: str, body: str) -> str:
    global _http
    settings = current_settings()
    q = settings.queue
    with _lock:
        if _http is None:
            from moderation.adapters.ssrf import guarded_client

            _http = guarded_client(settings)
    payload = body.encode()
    try:
        event = str(json.loads(body).get("event", "job.finished"))
    except ValueError:
        event = "job.finished"
    headers = {
        "Content-Type": "application/json",
        "X-Moderation-Event": event,
        "X-Moderation-Job-Id": job_id,
        SIGNATURE_HEADER: sign(q.callback_secret.get_secret_value().encode(), payload,
                               int(time.time())),
    }
    m = metrics()
    attempt = int(self.request.retries) + 1
    try:
        response = _http.post(url, content=payload, headers=headers)
        if response.status_code < 300:
            m.callbacks.labels("ok").inc()
            return "ok"
        problem = f"HTTP {response.status_code}"
        permanent = response.status_code in (400, 401, 403, 404, 410, 422)
    except PermanentError as exc:  # refused by the SSRF guard: never retried
        problem, permanent = f"{exc.code}: {exc}", True
    except (httpx.HTTPError, ModerationError) as exc:
        problem, permanent = f"{type(exc).__name__}: {exc}", False
    if permanent or attempt >= q.callback_max_attempts:
        log.warning("callback for job %s failed for good after %d attempts: %s", job_id,
                    attempt, problem)
        m.callbacks.labels("failed").inc()
        return "failed"
    m.callbacks.labels("retry").inc()
    raise self.retry(countdown=q.callback_backoff_s * 2 ** (attempt - 1))
