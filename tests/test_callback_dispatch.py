"""The callback dispatcher over the outbox twin: its own bounded pool, a cap per tenant, turns
between tenants, retries back in the outbox with backoff, leases that bring back a lost claim;
and the outbox's contract on a real valkey server and on its twin."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from moderation.adapters.memory import MemoryCallbackOutbox
from moderation.core.callbacks import Delivered, PendingCallback
from moderation.pipeline.callback_dispatch import CallbackDispatcher
from moderation.ports import CallbackOutbox


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Gate:
    """A deliver function whose attempts for ``held`` tenants block until released."""

    def __init__(self, held: set[str], answer: str = "ok") -> None:
        self.held = held
        self.answer = answer
        self.release = threading.Event()
        self.started: list[tuple[str, int]] = []
        self.finished: list[str] = []
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)

    def __call__(self, callback: PendingCallback, attempt: int) -> Delivered:
        with self.changed:
            self.started.append((callback.tenant, attempt))
            self.changed.notify_all()
        if callback.tenant in self.held:
            self.release.wait(30)
        with self.changed:
            self.finished.append(callback.job_id)
            self.changed.notify_all()
        return Delivered(self.answer)  # type: ignore[arg-type]

    def wait_for(self, predicate: object) -> None:
        with self.changed:
            assert self.changed.wait_for(predicate, timeout=30)  # type: ignore[arg-type]


def _dispatcher(outbox: MemoryCallbackOutbox, deliver: Gate, **kw: int) -> CallbackDispatcher:
    return CallbackDispatcher(
        outbox,
        deliver,
        backoff=lambda attempt: 5.0 * attempt,
        slots=kw.get("slots", 4),
        per_tenant=kw.get("per_tenant", 2),
        lease_s=60.0,
    )


def test_a_tenant_holds_at_most_its_cap_and_the_others_are_delivered() -> None:
    outbox = MemoryCallbackOutbox(clock=Clock())
    for i in range(10):
        outbox.send(f"a{i}", "http://a/hook", b"{}", tenant="acme")
    outbox.send("b1", "http://b/hook", b"{}", tenant="globex")
    gate = Gate(held={"acme"})
    dispatcher = _dispatcher(outbox, gate)
    try:
        assert dispatcher.dispatch_once() == 3  # two of acme's (its cap), globex's one
        gate.wait_for(lambda: "b1" in gate.finished)
        assert dispatcher.running() == {"acme": 2}
        assert dispatcher.dispatch_once() == 0  # acme at its cap; nothing else is due
        assert sorted(t for t, _ in gate.started) == ["acme", "acme", "globex"]
        gate.release.set()
        gate.wait_for(lambda: len(gate.finished) == 3)
    finally:
        dispatcher.stop()
    assert outbox.waiting() == 8


def test_the_pool_bounds_all_tenants_together() -> None:
    outbox = MemoryCallbackOutbox(clock=Clock())
    for tenant in ("t1", "t2", "t3"):
        for i in range(3):
            outbox.send(f"{tenant}-{i}", "http://x/hook", b"{}", tenant=tenant)
    gate = Gate(held={"t1", "t2", "t3"})
    dispatcher = _dispatcher(outbox, gate, slots=4, per_tenant=2)
    try:
        assert dispatcher.dispatch_once() == 4
        assert sum(dispatcher.running().values()) == 4
        assert dispatcher.dispatch_once() == 0
        # The next round starts with the next tenant: t3 is not left behind for good.
        gate.release.set()
        gate.wait_for(lambda: len(gate.finished) == 4)
        gate.release.clear()
        dispatcher.dispatch_once()
        gate.wait_for(lambda: len(gate.started) == 8)
        assert {t for t, _ in gate.started} == {"t1", "t2", "t3"}
        gate.release.set()
    finally:
        dispatcher.stop()


def test_a_retry_goes_back_to_the_outbox_with_backoff() -> None:
    clock = Clock()
    outbox = MemoryCallbackOutbox(clock=clock)
    outbox.send("j1", "http://x/hook", b"{}", tenant="acme")
    gate = Gate(held=set(), answer="retry")
    dispatcher = _dispatcher(outbox, gate)
    try:
        assert dispatcher.dispatch_once() == 1
        gate.wait_for(lambda: len(gate.finished) == 1)
        gate.wait_for(lambda: not dispatcher.running())
        assert dispatcher.dispatch_once() == 0  # not due yet
        ((due, waiting),) = outbox.entries.values()
        assert waiting.attempts == 1
        clock.now = due
        assert dispatcher.dispatch_once() == 1
        gate.wait_for(lambda: len(gate.finished) == 2)
        assert gate.started == [("acme", 1), ("acme", 2)]
    finally:
        dispatcher.stop()


def test_a_claim_whose_deliverer_died_comes_due_again_after_its_lease() -> None:
    clock = Clock()
    outbox = MemoryCallbackOutbox(clock=clock)
    outbox.send("j1", "http://x/hook", b"{}", tenant="acme")
    assert len(outbox.claim("acme", 5, lease_s=60.0)) == 1  # a process that then died
    assert outbox.claim("acme", 5, lease_s=60.0) == []
    clock.now += 61
    (again,) = outbox.claim("acme", 5, lease_s=60.0)
    assert again.job_id == "j1"
    outbox.done(again)
    assert outbox.waiting() == 0


def test_the_dispatcher_thread_delivers_on_its_own() -> None:
    outbox = MemoryCallbackOutbox()
    gate = Gate(held=set())
    dispatcher = _dispatcher(outbox, gate)
    dispatcher.start()
    try:
        outbox.send("j1", "http://x/hook", b"{}", tenant="acme")
        gate.wait_for(lambda: gate.finished == ["j1"])
        for _ in range(3000):
            if not dispatcher.running():
                break
            threading.Event().wait(0.01)
    finally:
        dispatcher.stop()
    assert outbox.waiting() == 0


# --- the outbox contract, on Redis and on its twin ------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
def outbox(request: pytest.FixtureRequest) -> Iterator[CallbackOutbox]:
    if request.param == "memory":
        yield MemoryCallbackOutbox()
        return
    from moderation.adapters.redis_callbacks import RedisCallbackOutbox
    from moderation.settings import QueueSettings

    yield RedisCallbackOutbox.from_url(request.getfixturevalue("redis_url"), QueueSettings())


def test_the_outbox_keeps_tenants_apart_and_leases_what_it_hands_out(
    outbox: CallbackOutbox,
) -> None:
    outbox.send("a1", "http://a/hook", b'{"n":1}', tenant="acme")
    outbox.send("a2", "http://a/hook", b'{"n":2}', tenant="acme")
    outbox.send("g1", "http://g/hook", b'{"n":3}', tenant="globex")
    assert outbox.tenants() == ["acme", "globex"] and outbox.waiting() == 3
    first = outbox.claim("acme", 1, lease_s=60)
    assert [(c.job_id, c.url, c.body, c.attempts) for c in first] == [
        ("a1", "http://a/hook", b'{"n":1}', 0)
    ]
    (second,) = outbox.claim("acme", 5, lease_s=60)  # a1 is leased: only a2 is due
    assert second.job_id == "a2"
    assert outbox.claim("acme", 5, lease_s=60) == []
    (g1,) = outbox.claim("globex", 5, lease_s=60)
    assert g1.tenant == "globex"
    # A retry is due again at its time, one attempt counted; done forgets it.
    outbox.retry_at(first[0], 0.0)
    (again,) = outbox.claim("acme", 5, lease_s=60)
    assert again.id == first[0].id and again.attempts == 1
    for done in (again, second, g1):
        outbox.done(done)
    assert outbox.waiting() == 0


def test_a_lease_that_ran_out_hands_the_callback_out_again(outbox: CallbackOutbox) -> None:
    outbox.send("a1", "http://a/hook", b"{}", tenant="acme")
    (claimed,) = outbox.claim("acme", 1, lease_s=-1.0)  # its deliverer died at once
    (again,) = outbox.claim("acme", 1, lease_s=60)
    assert again.id == claimed.id and again.attempts == 0
    assert outbox.claim("acme", 1, lease_s=60) == []
