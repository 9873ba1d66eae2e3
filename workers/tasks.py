"""Thin Celery tasks: deserialize ids, call the use case, map errors to retries.

``moderate(job_ids, retries=0)`` calls :meth:`moderation.pipeline.process.Processor.process_many`
for a message's batch of jobs and publishes again what it asks for: jobs with a transient error
(after their backoff, with ``retries + 1``), for a redelivered batch each job on its own, and
on the video lanes the downloads a photo-lane worker found to be videos;
``deliver_callback(job_id, url, body)`` (messages from before the callback outbox) puts the
callback in the outbox, which each worker's
:class:`~moderation.pipeline.callback_dispatch.CallbackDispatcher` delivers on its own threads;
``backtest_shards(task, keys)`` calls
:meth:`moderation.pipeline.backtest_tasks.WorkerBacktests.score`
for one group of history shards and returns its counts (pure computation on stored data: a
redelivery scores the group again, harmlessly). Everything they need is
built once per process by :func:`moderation.compose.worker.build_worker`, on first use (Celery wants
start-up hooks to return within seconds, and the model takes longer to load).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, defaultdict
from typing import Any

from celery import Task
from celery.signals import worker_ready, worker_shutdown, worker_shutting_down

from moderation.adapters.celery_queue import BACKTEST_TASK, CALLBACK_TASK, MODERATE_TASK
from moderation.compose.worker import WorkerProcess, build_worker
from moderation.core.backtest import BacktestTask
from moderation.exceptions import (
    AuditSinkUnavailable,
    DatabaseUnavailable,
    ModerationError,
    QueueUnavailable,
    TransientError,
)
from workers import lifecycle
from workers.celery_app import app, current_settings

app.steps["consumer"].add(lifecycle.LoopTick)

__all__ = ["backtest_shards", "deliver_callback", "moderate", "worker"]

#: Tries of a backtest task whose shards cannot be read for now (the object store is down).
BACKTEST_RETRIES = 3

log = logging.getLogger(__name__)
_lock = threading.Lock()
_worker: WorkerProcess | None = None


def worker() -> WorkerProcess:
    """This process's worker (model, policies, batcher, stores), built and started on first
    use."""
    global _worker
    with _lock:
        if _worker is None:
            candidate = build_worker(current_settings())
            try:
                candidate.start()  # loads the banks: may fail while Redis is down
            except BaseException:
                candidate.close()
                raise
            _worker = candidate
        return _worker


@worker_ready.connect  # type: ignore[untyped-decorator]
def _warm_up(**_: Any) -> None:
    # Load the model in the background so the first jobs and /readyz do not wait for a task.
    def warm() -> None:
        try:
            w = worker()
        except ModerationError as exc:  # e.g. no weights: /readyz says why
            log.error("the worker could not start: %s", exc)
            lifecycle.health().failed(f"the worker could not start: {exc}")
        except Exception as exc:
            log.exception("the worker could not start")
            lifecycle.health().failed(f"the worker could not start: {type(exc).__name__}: {exc}")
        else:
            lifecycle.health().ready(f"model {w.model.encoder.identity.id}")

    threading.Thread(target=warm, name="warm-up", daemon=True).start()


@worker_shutting_down.connect  # type: ignore[untyped-decorator]
def _watch_shutdown(**_: Any) -> None:
    def last_words() -> None:
        if _worker is not None:
            if _worker.history is not None:
                _worker.history.flush(force=True)  # the buffered embeddings, as a shard
            _worker.audit.close()  # flush what the spool holds

    lifecycle.start_shutdown_watchdog(current_settings().queue.shutdown_timeout_s, last_words)


@worker_shutdown.connect  # type: ignore[untyped-decorator]
def _shutdown(sender: Any = None, **_: Any) -> None:
    try:
        if _worker is not None:
            _worker.close()  # flushes the audit spool
    finally:
        lifecycle.on_stopped(sender)
        lifecycle.before_exit()


@app.task(  # type: ignore[untyped-decorator]
    bind=True,
    name=MODERATE_TASK,
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=None,
    ignore_result=True,
)
def moderate(self: Task, job_ids: list[str] | str, retries: int = 0) -> dict[str, int]:
    ids = [job_ids] if isinstance(job_ids, str) else list(job_ids)
    w = worker()
    try:
        done = w.processor.process_many(ids, retries=retries)
    except (QueueUnavailable, DatabaseUnavailable, AuditSinkUnavailable) as exc:
        # cannot even end the jobs now (Redis, PostgreSQL or the audit store is away)
        raise self.retry(countdown=5.0, exc=exc) from exc
    later: dict[tuple[float, bool], list[str]] = defaultdict(list)
    videos: list[str] = []
    for item in done:
        if item.outcome == "retry" and item.retry_in is not None:
            later[item.retry_in, item.video].append(item.job_id)
        elif item.outcome == "split":
            w.publisher.publish([item.job_id], retries=retries, video=item.video)
        elif item.outcome == "video":
            videos.append(item.job_id)
    if videos:  # downloads that are videos, met on a photo lane
        w.publisher.publish(videos, retries=retries, video=True)
    for (countdown, video), retry_ids in later.items():
        log.info("jobs %s: transient errors; retry in %.1fs", retry_ids[:5], countdown)
        w.publisher.publish(retry_ids, retries=retries + 1, countdown=countdown, video=video)
    return dict(Counter(item.outcome for item in done))


@app.task(  # type: ignore[untyped-decorator]
    bind=True,
    name=CALLBACK_TASK,
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=None,
    ignore_result=True,
)
def deliver_callback(self: Task, job_id: str, url: str, body: str, tenant: str = "default") -> str:
    # Callbacks are delivered from the outbox by each worker's dispatcher, never on these
    # threads; a message of this task (sent before the outbox existed) only moves there.
    try:
        worker().outbox.send(job_id, url, body.encode(), tenant=tenant)
    except QueueUnavailable as exc:
        raise self.retry(countdown=5.0, exc=exc) from exc
    return "queued"


@app.task(  # type: ignore[untyped-decorator]
    bind=True,
    name=BACKTEST_TASK,
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=BACKTEST_RETRIES,
    ignore_result=False,
)
def backtest_shards(self: Task, task: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    try:
        partial = worker().backtests.score(BacktestTask.from_dict(task), [str(k) for k in keys])
    except TransientError as exc:
        if self.request.retries < BACKTEST_RETRIES:
            raise self.retry(countdown=2.0 * (self.request.retries + 1), exc=exc) from exc
        return {"error": {"code": exc.code, "message": str(exc), "transient": True}}
    except ModerationError as exc:
        return {"error": {"code": exc.code, "message": str(exc), "transient": False}}
    except ValueError as exc:  # a malformed task (pydantic's ValidationError is one)
        return {"error": {"code": "backtest_task_invalid", "message": str(exc)[:500]}}
    return {"partial": partial.to_dict()}
