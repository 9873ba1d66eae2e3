"""Delivering callbacks from the outbox, apart from moderation, fairly between tenants.

Jobs and human decisions put their callbacks in the outbox (:class:`~moderation.ports.
CallbackOutbox`: one write, never a network call to a receiver). Each worker process runs one
:class:`CallbackDispatcher`: a thread that claims due callbacks and a pool of ``slots``
deliverer threads of its own, so a receiver that answers slowly (or never) holds a deliverer,
never a moderation thread.

Fairness: the dispatcher takes the tenants in turn (starting one further each round) and claims
for a tenant only while it has fewer than ``per_tenant`` deliveries running in this process; a
tenant whose receivers hang therefore holds at most ``per_tenant`` of the ``slots``, and the
others keep being delivered. Each attempt ends within the delivery's own deadline (the
``deliver`` function's promise, :class:`~moderation.adapters.http_callbacks.CallbackDelivery`).

Retries: an attempt that asks for one (``retry``) goes back to the outbox, due after
``backoff(attempt)``; nothing waits for it. ``ok`` and ``failed`` remove the callback.

Crash ordering: a claim leases the callback for ``lease_s`` (longer than an attempt's deadline);
a process that dies while delivering leaves it to come due again when the lease ends, and
another process delivers it (at least once: receivers drop duplicates by job id and event).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from moderation.core.callbacks import Delivered, PendingCallback
from moderation.exceptions import ModerationError
from moderation.metrics import metrics
from moderation.ports import CallbackOutbox

__all__ = ["CallbackDispatcher", "Deliver"]

log = logging.getLogger(__name__)

#: One delivery attempt: (callback, attempt number from 1) -> its outcome. Must end within a
#: bounded time (its own deadline).
Deliver = Callable[[PendingCallback, int], Delivered]


class CallbackDispatcher:
    """Claims due callbacks from ``outbox`` and delivers them on its own bounded pool.

    Args:
        outbox: where callbacks wait.
        deliver: one attempt (bounded in time).
        backoff: seconds before the next attempt after attempt ``n`` asked for a retry.
        slots: deliveries at once, all tenants.
        per_tenant: deliveries at once for one tenant.
        lease_s: how long a claimed callback is this process's (longer than an attempt).
        poll_s: how often the outbox is checked when nothing else wakes the dispatcher.
        gauge_s: how often the outbox's size is measured (``moderation_callback_outbox_waiting``).
    """

    def __init__(
        self,
        outbox: CallbackOutbox,
        deliver: Deliver,
        *,
        backoff: Callable[[int], float],
        slots: int,
        per_tenant: int,
        lease_s: float,
        poll_s: float = 0.2,
        gauge_s: float = 10.0,
    ) -> None:
        self.outbox = outbox
        self.deliver = deliver
        self.backoff = backoff
        self.slots = max(1, slots)
        self.per_tenant = max(1, min(per_tenant, self.slots))
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.gauge_s = gauge_s
        self._gauged_at = 0.0
        self._running: dict[str, int] = {}
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._turn = 0
        self._pool = ThreadPoolExecutor(self.slots, thread_name_prefix="callback")
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="callbacks", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop claiming; running attempts end on their own deadline (their callbacks come due
        again when their lease ends if this process exits first)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- one round -----------------------------------------------------------------------------

    def running(self) -> dict[str, int]:
        """Deliveries running now, per tenant."""
        with self._cond:
            return {t: n for t, n in self._running.items() if n}

    def dispatch_once(self) -> int:
        """Claim what the free slots allow, each tenant in turn; returns how many started.

        Raises:
            QueueUnavailable: the outbox cannot be reached.
        """
        tenants = self.outbox.tenants()
        if not tenants:
            return 0
        start = self._turn % len(tenants)
        self._turn += 1
        started = 0
        for tenant in tenants[start:] + tenants[:start]:
            with self._cond:
                free = self.slots - sum(self._running.values())
                room = min(free, self.per_tenant - self._running.get(tenant, 0))
            if free <= 0:
                break
            if room <= 0:
                continue
            for callback in self.outbox.claim(tenant, room, lease_s=self.lease_s):
                with self._cond:
                    self._running[tenant] = self._running.get(tenant, 0) + 1
                metrics().callbacks_delivering.labels(tenant).inc()
                self._pool.submit(self._attempt, callback)
                started += 1
        return started

    # --- internals -----------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                if time.monotonic() - self._gauged_at >= self.gauge_s:
                    self._gauged_at = time.monotonic()
                    metrics().callback_outbox_waiting.set(self.outbox.waiting())
                self.dispatch_once()
            except ModerationError as exc:
                log.warning("callback outbox: %s", exc)
                self._stop.wait(1.0)
                continue
            except Exception:
                log.exception("callback dispatcher")
                self._stop.wait(1.0)
                continue
            with self._cond:
                self._cond.wait(self.poll_s)

    def _attempt(self, callback: PendingCallback) -> None:
        attempt = callback.attempts + 1
        try:
            outcome = self.deliver(callback, attempt)
            if outcome.status == "retry":
                self.outbox.retry_at(callback, time.time() + self.backoff(attempt))
            else:
                self.outbox.done(callback)
        except ModerationError as exc:  # the outbox is down: the lease brings it back
            log.warning("callback %s: %s", callback.id, exc)
        except Exception:
            log.exception("callback %s", callback.id)
        finally:
            metrics().callbacks_delivering.labels(callback.tenant).dec()
            with self._cond:
                self._running[callback.tenant] -= 1
                self._cond.notify_all()
