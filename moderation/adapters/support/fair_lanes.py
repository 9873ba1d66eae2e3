"""Weighted turns between the tenants' lanes, inside kombu's Redis transport.

A worker's consumer asks one Redis ``BRPOP`` over all the queues it consumes; Redis answers from
the first non-empty queue in the order given. kombu takes that order from a *queue cycle*
(``queue_order_strategy``, a dotted name it imports): :class:`FairCycle` orders the lanes by
:class:`~moderation.core.fairness.FairOrder` (priority lanes first, then the lane whose tenant
had the least of its weighted share) and is told which lane each message came from. Delivery is
untouched: kombu still records every message as unacknowledged before the task runs, and a
``kill -9``'d worker's messages come back to their own lane.

kombu builds the cycle without arguments, so the lanes and weights are declared for the process
first (:func:`declare_lanes`, from :func:`~moderation.adapters.celery_queue.celery_config`, which
every worker and producer calls before it connects). Queues not declared (callbacks, backtests)
take turns with weight 1.

A worker of both kinds (``queue.worker_lanes=all``) also caps the video messages it holds
(:func:`declare_video_cap`): each message taken from a video lane counts until its task has run
(:func:`video_done`), and while the count is at the cap the cycle leaves the video lanes out of
the next ``BRPOP``: further videos stay on their lanes (not taken, not prefetched, never lost:
they are only read later), and the other threads stay free for photos.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

from moderation.core.fairness import FairOrder, Lane

__all__ = [
    "FAIR_CYCLE",
    "FairCycle",
    "declare_lanes",
    "declare_video_cap",
    "video_done",
    "video_started",
    "videos_held",
    "videos_restart",
]

#: The dotted name kombu imports (``broker_transport_options["queue_order_strategy"]``).
FAIR_CYCLE = "moderation.adapters.support.fair_lanes:FairCycle"

_lock = threading.Lock()
_declared: tuple[Lane, ...] = ()
_video_lanes: frozenset[str] = frozenset()
_video_cap: int | None = None
_videos_held = 0
_videos_running: set[str] = set()


def declare_lanes(declared: Sequence[Lane]) -> None:
    """The lanes (and weights) the cycles of this process order from now on."""
    global _declared, _video_lanes
    with _lock:
        _declared = tuple(declared)
        _video_lanes = frozenset(lane.name for lane in _declared if lane.video)


def declare_video_cap(cap: int | None) -> None:
    """At most ``cap`` messages from the video lanes held by this process at once (None: no
    cap). Declaring the same cap again keeps the count of those held (every producer of the
    process declares it); another cap starts it again from zero."""
    global _video_cap, _videos_held
    with _lock:
        if cap != _video_cap:
            _video_cap, _videos_held = cap, 0


def videos_held() -> int:
    """Messages from the video lanes this process took and has not yet run to the end."""
    with _lock:
        return _videos_held


def video_started(queue: str | None, task_id: str) -> None:
    """A task from ``queue`` starts running (for :func:`videos_restart`)."""
    with _lock:
        if _video_cap is not None and queue in _video_lanes:
            _videos_running.add(task_id)


def video_done(queue: str | None, task_id: str | None = None) -> None:
    """A task from ``queue`` has run (a video lane's frees a place under the cap)."""
    global _videos_held
    with _lock:
        if _video_cap is not None and queue in _video_lanes:
            _videos_held = max(0, _videos_held - 1)
            _videos_running.discard(task_id or "")


def videos_restart() -> None:
    """The worker's consumer (re)connects: the messages it had taken but not started are
    dropped (the broker delivers them again), so only the running videos still count."""
    global _videos_held
    with _lock:
        _videos_held = len(_videos_running)


class FairCycle:
    """A kombu queue cycle (``update``/``consume``/``rotate``) over
    :class:`~moderation.core.fairness.FairOrder`."""

    def __init__(self, items: Iterable[str] | None = None) -> None:
        with _lock:
            declared = _declared
        self.items: list[str] = list(items or [])
        self._order = FairOrder(declared)

    def update(self, items: Iterable[str]) -> None:
        """The queues consumed now."""
        self.items[:] = list(items)

    def consume(self, n: int) -> list[str]:
        """The first ``n`` queues, in the order to try them."""
        ordered = self._order.order(self.items)
        with _lock:
            full = _video_cap is not None and _videos_held >= _video_cap
            left_out = _video_lanes if full else frozenset()
        return [queue for queue in ordered if queue not in left_out][:n]

    def rotate(self, last_used: str) -> str:
        """A message was taken from ``last_used``."""
        global _videos_held
        self._order.served(last_used)
        with _lock:
            if _video_cap is not None and last_used in _video_lanes:
                _videos_held += 1
        return last_used

    def close(self) -> None:
        """Nothing to release."""
