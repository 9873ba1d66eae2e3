"""A worker process's life as its supervisor sees it: health probes, graceful shutdown, and an
exit status that tells a crash from a requested stop.

* **Probes.** :class:`~moderation.pipeline.health.WorkerHealth` is fed by a timer on the
  consumer's event loop (:class:`LoopTick`: stops ticking when the loop is stuck), by the task
  signals (a task running longer than ``queue.stuck_after_s``) and by the warm-up (ready once the
  model, policies and banks are loaded; failed with the loader's message otherwise). With
  ``queue.worker_health_port`` set it is served on ``/livez`` and ``/readyz``.
* **SIGTERM** (Celery's warm shutdown): the worker is marked draining (not ready), stops
  consuming, finishes the batches it is running, and its reserved-but-unstarted messages go
  back to the queue when the broker channel closes; then ``worker_shutdown`` closes the
  :class:`~moderation.compose.WorkerProcess`, which flushes the audit spool. A watchdog ends the
  process (status 70) if all that takes longer than ``queue.shutdown_timeout_s``: its unfinished
  messages come back after the visibility timeout, and results are compare-and-set, so nothing
  is decided twice.
* **The last step** (:func:`before_exit`, after ``worker_shutdown`` flushed the spool): the
  probe endpoint closes its listening socket, so a probe from then on is refused at once instead
  of being accepted by the kernel and never answered; and the heap is frozen for the garbage
  collector (``gc.freeze``), so the interpreter's teardown does not walk it. That walk, one
  collection over every object of a process holding the model, Celery and the stores, holds the
  interpreter lock and took 8-12 s on a 2-core machine shared with other test suites (py-spy
  dump of a worker after SIGTERM: the main thread alone, in ``gc_collect_main``, no Python
  frame): a probe sent in that window hung until the process ended.
* **Exit status.** Celery can stop on its own, e.g. when kombu fails while the broker is gone
  (``AttributeError: 'NoneType' object has no attribute 'hostname'`` while it restores unacked
  messages on a dead connection), with status 0 or 1. A stop nobody asked for exits with
  status 75 (``EX_TEMPFAIL``), so that the supervisor (Kubernetes, compose's restart policy)
  starts the worker again.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celery import bootsteps
from celery.signals import task_postrun, task_prerun, worker_init, worker_shutting_down

from moderation.adapters.support.fair_lanes import video_done, video_started, videos_restart
from moderation.pipeline.health import WorkerHealth
from workers.celery_app import current_settings

if TYPE_CHECKING:
    from moderation.adapters.health_server import HealthServer

__all__ = [
    "EXIT_SHUTDOWN_TIMEOUT",
    "EXIT_UNREQUESTED_STOP",
    "LoopTick",
    "before_exit",
    "health",
    "on_stopped",
    "start_shutdown_watchdog",
]

log = logging.getLogger(__name__)

#: Exit status of a worker that stopped without being asked to (sysexits' EX_TEMPFAIL).
EXIT_UNREQUESTED_STOP = 75
#: Exit status of a worker whose graceful shutdown overran ``queue.shutdown_timeout_s``.
EXIT_SHUTDOWN_TIMEOUT = 70
#: Seconds between two ticks of the consumer loop (at most; a fifth of ``stuck_after_s`` when
#: that is shorter, so that a loop turning on time never looks stuck).
TICK_S = 2.0

_lock = threading.Lock()
_health: WorkerHealth | None = None
_server: HealthServer | None = None


def health() -> WorkerHealth:
    """This process's health state (created on first use from the worker's Settings)."""
    global _health
    with _lock:
        if _health is None:
            q = current_settings().queue
            stuck = q.stuck_after_s if q.stuck_after_s is not None else q.visibility_timeout_s
            _health = WorkerHealth(stuck_after_s=float(stuck))
        return _health


class LoopTick(bootsteps.StartStopStep):  # type: ignore[misc]
    """A consumer bootstep: ticks :func:`health` from a timer that the consumer's own event
    loop fires, so the ticks stop when that loop is stuck."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.tref: Any = None

    def start(self, c: Any) -> None:
        # Before the consumer's loop reads again: the messages of a lost connection that had
        # not started are gone from this process, so they no longer count under the video cap.
        videos_restart()
        state = health()
        state.tick()
        every = max(0.1, min(TICK_S, state.stuck_after_s / 5))
        self.tref = c.timer.call_repeatedly(every, state.tick)

    def stop(self, c: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None


@worker_init.connect  # type: ignore[untyped-decorator]
def _serve_probes(**_: Any) -> None:
    global _server
    state = health()
    port = current_settings().queue.worker_health_port
    if port:
        from moderation.adapters.health_server import HealthServer

        server = HealthServer(liveness=state.liveness, readiness=state.readiness, port=port)
        with _lock:
            _server = server.start()


@task_prerun.connect  # type: ignore[untyped-decorator]
def _task_started(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    if task_id:
        health().task_started(task_id)
        video_started(_queue_of(task), task_id)


@task_postrun.connect  # type: ignore[untyped-decorator]
def _task_finished(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    if task_id:
        health().task_finished(task_id)
    # A message from a video lane has run: a worker of both kinds may take the next video.
    video_done(_queue_of(task), task_id)


def _queue_of(task: Any) -> str | None:
    """The lane the running task's message came from (its routing key)."""
    delivery = getattr(getattr(task, "request", None), "delivery_info", None) or {}
    key = delivery.get("routing_key")
    return str(key) if key else None


@worker_shutting_down.connect  # type: ignore[untyped-decorator]
def _draining(sig: str = "", how: str = "", **_: Any) -> None:
    health().draining()


def before_exit() -> None:
    """The worker's last step before the interpreter's teardown: stop serving the probes (a
    probe is then refused, not left unanswered) and freeze the heap, so that the teardown's
    collection does not hold the interpreter lock for seconds (see the module docstring)."""
    global _server
    with _lock:
        server, _server = _server, None
    if server is not None:
        server.close()
    gc.freeze()


def start_shutdown_watchdog(timeout_s: float, last_words: Callable[[], object]) -> None:
    """After ``timeout_s``, run ``last_words`` (flush what can be flushed) and end the process
    with :data:`EXIT_SHUTDOWN_TIMEOUT`."""

    def watch() -> None:
        log.error(
            "graceful shutdown did not finish within %.0fs; exiting (unfinished messages are "
            "delivered again after the visibility timeout)",
            timeout_s,
        )
        try:
            last_words()
        finally:
            os._exit(EXIT_SHUTDOWN_TIMEOUT)

    timer = threading.Timer(timeout_s, watch)
    timer.daemon = True
    timer.name = "shutdown-watchdog"
    timer.start()


def on_stopped(controller: Any) -> None:
    """At ``worker_shutdown``: a stop nobody asked for exits with status 75, never 0."""
    if health().shutdown_requested:
        return
    # Celery's own status for such a stop is 0 or 1 (EX_FAILURE); either becomes 75. A status
    # that already says why (70: the shutdown watchdog) is kept.
    if controller is not None and getattr(controller, "exitcode", None) in (None, 0, 1):
        log.error(
            "the Celery worker stopped without being asked to (lost its broker?); exiting with "
            "status %d so that its supervisor starts it again",
            EXIT_UNREQUESTED_STOP,
        )
        controller.exitcode = EXIT_UNREQUESTED_STOP
