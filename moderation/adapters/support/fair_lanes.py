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
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

from moderation.core.fairness import FairOrder, Lane

__all__ = ["FAIR_CYCLE", "FairCycle", "declare_lanes"]

#: The dotted name kombu imports (``broker_transport_options["queue_order_strategy"]``).
FAIR_CYCLE = "moderation.adapters.support.fair_lanes:FairCycle"

_lock = threading.Lock()
_declared: tuple[Lane, ...] = ()


def declare_lanes(declared: Sequence[Lane]) -> None:
    """The lanes (and weights) the cycles of this process order from now on."""
    global _declared
    with _lock:
        _declared = tuple(declared)


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
        return self._order.order(self.items)[:n]

    def rotate(self, last_used: str) -> str:
        """A message was taken from ``last_used``."""
        self._order.served(last_used)
        return last_used

    def close(self) -> None:
        """Nothing to release."""
