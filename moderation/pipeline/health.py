"""A worker's health as its supervisor (Kubernetes probes) sees it: ready, alive, draining.

::

    starting ──model, policies, banks loaded──► ready ──SIGTERM──► draining (not ready)
        │                                          │
        └──build failed (no weights...)──► failed (not ready; the reason is the answer)

* **Readiness** (``/readyz``): true only once the worker can score: its model, policies and
  banks are loaded. A worker whose weights are missing stays not ready with the loader's message
  (what is missing and how to provide it) instead of taking jobs it would fail.
* **Liveness** (``/livez``): false when the consumer is stuck, i.e. either

  - its event loop has not ticked for ``stuck_after_s`` (the broker connection hangs, the loop
    is blocked), or
  - a task has been running for ``stuck_after_s`` (a batch that never finishes: its message is
    redelivered after the visibility timeout anyway, so this worker is of no further use).

  A worker that failed to build is *alive* (restarting it would not bring the weights); one that
  is still loading its model is alive as long as its loop ticks.

Everything here is plain state with an injectable clock; the Celery hooks that feed it live in
``workers/tasks.py`` and the HTTP endpoint in :mod:`moderation.adapters.health_server`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

__all__ = ["HealthReport", "Phase", "WorkerHealth"]


class Phase(str, Enum):
    STARTING = "starting"
    READY = "ready"
    FAILED = "failed"
    DRAINING = "draining"


@dataclass(frozen=True)
class HealthReport:
    ok: bool
    phase: Phase
    detail: str

    def as_dict(self) -> dict[str, object]:
        return {"ok": self.ok, "phase": self.phase.value, "detail": self.detail}


class WorkerHealth:
    """Thread-safe health state of one worker process."""

    def __init__(self, *, stuck_after_s: float, clock: Callable[[], float] = time.monotonic):
        self.stuck_after_s = stuck_after_s
        self._clock = clock
        self._lock = threading.Lock()
        self._phase = Phase.STARTING
        self._detail = "loading the model, policies and hash banks"
        self._last_tick: float | None = None
        self._started = clock()
        self._running: dict[str, float] = {}
        self.shutdown_requested = False

    # --- what the worker reports -------------------------------------------------------------

    def tick(self) -> None:
        """The consumer's event loop is turning (called from a timer on that loop)."""
        with self._lock:
            self._last_tick = self._clock()

    def task_started(self, task_id: str) -> None:
        with self._lock:
            self._running[task_id] = self._clock()

    def task_finished(self, task_id: str) -> None:
        with self._lock:
            self._running.pop(task_id, None)

    def ready(self, detail: str) -> None:
        with self._lock:
            if self._phase is Phase.STARTING:
                self._phase, self._detail = Phase.READY, detail

    def failed(self, reason: str) -> None:
        with self._lock:
            if self._phase is not Phase.DRAINING:
                self._phase, self._detail = Phase.FAILED, reason

    def draining(self) -> None:
        """A shutdown was asked for (SIGTERM): take no more traffic."""
        with self._lock:
            self.shutdown_requested = True
            self._phase, self._detail = Phase.DRAINING, "shutting down: finishing running batches"

    # --- what the supervisor asks ------------------------------------------------------------

    @property
    def phase(self) -> Phase:
        with self._lock:
            return self._phase

    def readiness(self) -> HealthReport:
        with self._lock:
            return HealthReport(self._phase is Phase.READY, self._phase, self._detail)

    def liveness(self) -> HealthReport:
        with self._lock:
            now = self._clock()
            since_tick = now - (self._last_tick if self._last_tick is not None else self._started)
            if since_tick > self.stuck_after_s:
                what = "has not ticked" if self._last_tick is not None else "has not started"
                return HealthReport(
                    False,
                    self._phase,
                    f"stuck: the consumer loop {what} for {since_tick:.0f}s "
                    f"(limit {self.stuck_after_s:.0f}s)",
                )
            if self._running:
                task_id, since = min(self._running.items(), key=lambda item: item[1])
                if now - since > self.stuck_after_s:
                    return HealthReport(
                        False,
                        self._phase,
                        f"stuck: task {task_id} has run for {now - since:.0f}s "
                        f"(limit {self.stuck_after_s:.0f}s)",
                    )
            return HealthReport(
                True, self._phase, f"{len(self._running)} task(s) running; loop ticked"
            )
