"""The Celery app on the Redis broker.

Its configuration is :func:`moderation.adapters.celery_queue.celery_config` (shared with the
producers). ``app`` is configured lazily from ``Settings()`` (the environment) the first time its
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

from moderation.adapters.celery_queue import celery_config
from moderation.settings import Settings

__all__ = ["app", "configure", "current_settings"]

app = Celery("moderation", include=["workers.tasks"], set_as_current=False)

_lock = threading.Lock()
_settings: Settings | None = None


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
