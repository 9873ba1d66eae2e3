"""The Celery app on the Redis broker.

``app`` is configured lazily from ``Settings()`` (the environment) the first time its
configuration is read, so ``celery -A workers.celery_app worker`` and ``moderation worker`` both
work; tests and the CLI call :func:`configure` with an explicit Settings first.

Delivery guarantees: ``acks_late`` + ``reject_on_worker_lost`` (a message is acknowledged only
after its task ran), a broker visibility timeout longer than any task, and a fast sweep of
unacknowledged messages (``unacked_restore_interval``/``_throttle``) so the messages of a
``kill -9``'d worker are redelivered within about ``visibility_timeout_s`` + a few seconds. Tasks
are idempotent (job id = task id; final results are compare-and-set), so a redelivery that
overlaps a slow first run is harmless.
"""

from __future__ import annotations

import threading
from typing import Any

from celery import Celery
from kombu import Queue  # type: ignore[attr-defined]

from moderation.exceptions import QueueUnavailable
from moderation.settings import Settings

__all__ = ["app", "celery_config", "configure", "create_celery", "current_settings"]

app = Celery("moderation", include=["workers.tasks"], set_as_current=False)

_lock = threading.Lock()
_settings: Settings | None = None


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery configuration for ``settings``.

    Raises:
        QueueUnavailable: no Redis URL is configured (the embedded server is started by the
            ``moderation demo``/``api`` commands, never by a worker).
    """
    if not settings.redis_url:
        raise QueueUnavailable(
            "no Redis URL configured: set MODERATION_REDIS_URL (or run `moderation demo`, which "
            "starts an embedded server)"
        )
    q = settings.queue
    concurrency = q.concurrency or 2 * q.batch_size
    return {
        "broker_url": settings.redis_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            "visibility_timeout": q.visibility_timeout_s,
            "unacked_restore_interval": q.unacked_restore_interval_s,
            "unacked_restore_throttle": max(1, round(q.unacked_restore_throttle_s)),
        },
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,  # results live in the job store
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "task_track_started": False,
        "task_default_queue": q.queue_name,
        "task_queues": [Queue(q.queue_name), Queue(q.callback_queue_name)],  # type: ignore[no-untyped-call]
        "task_routes": {"moderation.deliver_callback": {"queue": q.callback_queue_name}},
        "worker_pool": "threads",
        "worker_concurrency": concurrency,
        "worker_prefetch_multiplier": q.prefetch_multiplier,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "broker_heartbeat": 0,
    }


def create_celery(settings: Settings) -> Celery:
    """A new Celery app (producer side: API, CLI) on ``settings``' broker. Tasks are sent by
    name, so it needs no task modules.

    Raises:
        QueueUnavailable: no Redis URL is configured.
    """
    producer = Celery("moderation-producer", set_as_current=False)
    producer.conf.update(celery_config(settings))
    return producer


def configure(settings: Settings) -> Celery:
    """Configure ``app`` from ``settings`` (before it is first used) and return it.

    Raises:
        QueueUnavailable: no Redis URL is configured.
    """
    global _settings
    with _lock:
        _settings = settings
    app.conf.update(celery_config(settings))
    return app


def current_settings() -> Settings:
    """The Settings the app was configured with (``Settings()`` from the environment if none)."""
    global _settings
    with _lock:
        if _settings is None:
            _settings = Settings()
        return _settings


@app.on_configure.connect  # type: ignore[untyped-decorator]
def _configure_from_env(sender: Celery, **_: Any) -> None:
    if _settings is None:
        sender.conf.update(celery_config(current_settings()))
