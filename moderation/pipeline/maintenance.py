"""A worker's periodic duties, on one background thread: heartbeat, policy hot reload, the
lost-message sweep and any extra tasks (the bank reload check), from one table of periodic tasks.

* **Heartbeat** (every loop): the worker's name, model and loaded policy versions, with a short
  TTL, so the API knows which policies are served and operators see live workers.
* **Policy reload** (``queue.policy_reload_s``): re-hash the policy files; swap in a changed set.
* **Lost-message sweep** (``queue.sweep_interval_s``): kombu's Redis transport pops a message
  before recording it as unacked, so a worker killed in that instant loses it. A job still
  pending ``queue.lost_after_s`` after it was published whose message is neither queued nor
  unacked is published again (one worker at a time, under a lock). Tasks are idempotent, so a
  spurious republish costs one no-op delivery.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from moderation.core.media import VIDEO
from moderation.exceptions import ModerationError
from moderation.metrics import metrics
from moderation.pipeline.policies import ActivePolicies
from moderation.ports import DeliveryLog, JobStore, TaskPublisher, WorkerRegistry
from moderation.settings import QueueSettings

__all__ = ["WorkerMaintenance", "sweep_lost"]

log = logging.getLogger(__name__)


def sweep_lost(
    store: JobStore,
    deliveries: DeliveryLog,
    registry: WorkerRegistry,
    publisher: TaskPublisher,
    *,
    older_than_s: float,
    limit: int = 1000,
) -> list[str]:
    """Publish again the jobs whose message was lost. Returns their ids (empty when another
    worker holds the sweep lock or the queue is too long to scan this time).

    Raises:
        QueueUnavailable: Redis is down.
    """
    if not registry.try_lock("sweep", max(5.0, older_than_s)):
        return []
    stale = deliveries.stale_pending(older_than_s, limit)
    if not stale:
        return []
    in_flight = publisher.in_flight()
    if in_flight is None:
        return []
    lost = [job_id for job_id in stale if job_id not in in_flight]
    alive = [job for job in store.get_jobs(lost) if job is not None]
    for job_id in set(lost) - {job.id for job in alive}:  # expired record: nothing to run
        deliveries.forget_pending(job_id)
    if alive:
        log.warning(
            "jobs %s: their message was lost (worker died mid-delivery?); publishing them again",
            ", ".join(job.id for job in alive[:10]),
        )
        for video in (False, True):
            ids = [job.id for job in alive if (job.media == VIDEO) == video]
            if ids:
                publisher.publish(ids, video=video)
    for job in alive:
        deliveries.mark_republished(job.id)
        metrics().retries.labels("lost_message").inc()
    return lost


class WorkerMaintenance:
    """Runs a worker's periodic tasks on a daemon thread between :meth:`start` and
    :meth:`stop`."""

    def __init__(
        self,
        *,
        name: str,
        store: JobStore,
        deliveries: DeliveryLog,
        registry: WorkerRegistry,
        publisher: TaskPublisher,
        policies: ActivePolicies,
        settings: QueueSettings,
        info: Callable[[], dict[str, Any]],
        tasks: Sequence[tuple[float, Callable[[], object], str]] = (),
    ) -> None:
        self.name = name
        self.store = store
        self.deliveries = deliveries
        self.registry = registry
        self.publisher = publisher
        self.policies = policies
        self.settings = settings
        self.info = info
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        q = settings
        lost_after = q.lost_after_s if q.lost_after_s is not None else 2.0 * q.visibility_timeout_s
        self.periodic: list[tuple[float, Callable[[], object], str]] = [
            (
                q.sweep_interval_s,
                lambda: sweep_lost(store, deliveries, registry, publisher, older_than_s=lost_after),
                "lost-message sweep",
            ),
            (q.policy_reload_s, policies.reload, "policy reload check"),
            *tasks,
        ]

    def beat(self) -> None:
        """Publish this worker's heartbeat now."""
        self.registry.heartbeat(
            self.name,
            {
                "name": self.name,
                **self.info(),
                "policies": self.policies.current.versions,
                "shadow_policies": self.policies.current.shadow_versions,
            },
        )

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="maintenance", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        last = [time.monotonic()] * len(self.periodic)
        wait = min([5.0] + [every for every, _, _ in self.periodic if every > 0])
        while not self._stop.is_set():
            try:
                self.beat()
            except ModerationError as exc:
                log.warning("heartbeat failed: %s", exc)
            for i, (every, task, what) in enumerate(self.periodic):
                if every > 0 and time.monotonic() - last[i] >= every:
                    last[i] = time.monotonic()
                    try:
                        task()
                    except Exception:  # the maintenance thread must survive anything
                        log.exception("%s failed", what)
            self._stop.wait(wait)
