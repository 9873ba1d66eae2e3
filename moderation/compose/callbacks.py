"""Callback delivery for a process: the outbox's dispatcher over HTTP, in the processes that
``queue.callback_senders`` names (workers, the API, or both)."""

from __future__ import annotations

from dataclasses import dataclass

from moderation.adapters.http_callbacks import CallbackDelivery
from moderation.pipeline.callback_dispatch import CallbackDispatcher
from moderation.ports import CallbackOutbox
from moderation.settings import Settings

__all__ = ["CallbackSending", "build_callback_sending", "sends_callbacks"]


def sends_callbacks(settings: Settings, kind: str) -> bool:
    """Whether a process of ``kind`` (``workers`` or ``api``) delivers callbacks."""
    return settings.queue.callback_senders in (kind, "both")


@dataclass
class CallbackSending:
    """The HTTP deliverer and the dispatcher that feeds it from the outbox."""

    delivery: CallbackDelivery
    dispatcher: CallbackDispatcher

    def start(self) -> None:
        self.dispatcher.start()

    def close(self) -> None:
        self.dispatcher.stop()
        self.delivery.close()


def build_callback_sending(settings: Settings, outbox: CallbackOutbox) -> CallbackSending:
    """The deliverer and dispatcher of ``outbox`` (not started)."""
    q = settings.queue
    delivery = CallbackDelivery(settings)
    return CallbackSending(
        delivery=delivery,
        dispatcher=CallbackDispatcher(
            outbox,
            lambda cb, attempt: delivery.deliver(cb.job_id, cb.url, cb.body, attempt=attempt),
            backoff=delivery.backoff,
            slots=q.callback_slots,
            per_tenant=q.callback_tenant_slots,
            lease_s=2 * q.callback_deadline_s + 30.0,
        ),
    )
