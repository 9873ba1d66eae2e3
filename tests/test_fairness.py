"""Fairness between tenants, fast: the scheduling core (weighted turns between lanes, priority
first, no credit banked while idle), the shares of the queued bytes, the submit use case over
the twins (429 ``tenant_queue_full``, the priority quota) and the Redis job store's per-tenant
accounting (released on every way a job ends). The flow with real workers is in
``tests/test_attacks_fairness.py``."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from moderation.adapters.memory import MemoryJobStore, MemoryPublisher, MemoryRateLimiter
from moderation.adapters.postgres.jobs import PostgresJobStore
from moderation.adapters.postgres.pool import open_pool
from moderation.adapters.redis_jobs import RedisJobStore
from moderation.adapters.redis_transients import RedisJobTransients
from moderation.adapters.support.fair_lanes import FairCycle, declare_lanes
from moderation.core.admission import Tenant
from moderation.core.fairness import FairOrder, Lane, lane_for, lanes, queued_byte_shares
from moderation.core.image_ref import ImageRef
from moderation.core.jobs import Job, JobError, JobResult
from moderation.exceptions import JobRejected, QueueFull, RateLimited, TenantQueueFull
from moderation.pipeline.sources import ImageSources, InlineSource
from moderation.pipeline.submit import PolicyCatalog, SubmitRequest, Submitter
from moderation.settings import DatabaseSettings, QueueSettings, Settings, TenantSettings

# --- the scheduling core ---------------------------------------------------------------------


def _serve(order: FairOrder, busy: set[str], rounds: int) -> list[str]:
    """Take ``rounds`` messages, always from the first busy lane in the order given."""
    taken = []
    for _ in range(rounds):
        lane = next(n for n in order.order(sorted(busy)) if n in busy)
        order.served(lane)
        taken.append(lane)
    return taken


def test_busy_lanes_are_served_in_proportion_to_their_weights() -> None:
    order = FairOrder([Lane("a", "a", 1.0), Lane("b", "b", 3.0), Lane("c", "c", 2.0)])
    taken = _serve(order, {"a", "b", "c"}, 600)
    assert Counter(taken) == {"a": 100, "b": 300, "c": 200}
    # Over every stretch, the counts stay within one turn of the weights.
    for end in range(6, 601, 6):
        counts = Counter(taken[:end])
        assert abs(counts["b"] - 3 * counts["a"]) <= 3
        assert abs(counts["c"] - 2 * counts["a"]) <= 2


def test_a_lane_that_comes_back_gets_its_turn_at_once_but_no_banked_credit() -> None:
    order = FairOrder([Lane("a", "a"), Lane("b", "b")])
    _serve(order, {"a"}, 5000)  # a's burst while b is idle
    taken = _serve(order, {"a", "b"}, 10)
    assert taken[0] == "b"  # b's first message does not wait behind a's backlog
    assert Counter(taken) == {"a": 5, "b": 5}  # and then they alternate: no monopoly


def test_priority_lanes_go_first_and_undeclared_queues_take_turns() -> None:
    order = FairOrder([Lane("q.t.a", "a"), Lane("q.high.a", "a", high=True)])
    assert order.order(["q.t.a", "callbacks", "q.high.a"])[0] == "q.high.a"
    taken = _serve(order, {"q.t.a", "callbacks"}, 4)
    assert Counter(taken) == {"q.t.a": 2, "callbacks": 2}


def test_lanes_of_the_configured_tenants() -> None:
    found = lanes("moderation", {"default": 1.0, "acme": 2.0})
    assert [(lane.name, lane.tenant, lane.weight, lane.high) for lane in found] == [
        ("moderation", "default", 1.0, False),
        ("moderation.t.acme", "acme", 2.0, False),
        ("moderation.high.acme", "acme", 2.0, True),
        ("moderation.high.default", "default", 1.0, True),
    ]
    known = {"acme", "default"}
    assert lane_for("moderation", "acme", high=False, known=known) == "moderation.t.acme"
    assert lane_for("moderation", "default", high=False, known=known) == "moderation"
    assert lane_for("moderation", "gone", high=True, known=known) == "moderation"
    with pytest.raises(ValueError, match="weight"):
        lanes("moderation", {"acme": 0.0})


def test_queued_byte_shares_split_the_cap_by_weight_unless_a_tenant_has_its_own() -> None:
    shares = queued_byte_shares(1000, {"a": 1.0, "b": 3.0, "c": 1.0}, {"c": 50})
    assert shares == {"a": 200, "b": 600, "c": 50}


def test_the_kombu_cycle_orders_by_the_declared_lanes() -> None:
    declare_lanes([Lane("q.t.a", "a", 1.0), Lane("q.t.b", "b", 1.0)])
    try:
        cycle = FairCycle()
        cycle.update(["q.t.a", "q.t.b", "callbacks"])
        for _ in range(50):
            assert cycle.rotate("q.t.a") == "q.t.a"  # a's burst
        assert cycle.consume(3)[0] in {"q.t.b", "callbacks"}  # both waited
        assert cycle.consume(3).index("q.t.a") == 2
    finally:
        declare_lanes([])


def test_the_tenant_gate_caps_one_tenants_messages_and_never_blocks_another() -> None:
    import threading

    from moderation.pipeline.tenant_gate import TenantGate

    gate = TenantGate(1)
    b_ran = threading.Event()

    def b_message() -> None:
        with gate.hold("b"):
            b_ran.set()

    with gate.hold("a"):
        assert not gate._slot("a").acquire(blocking=False)  # a's second message waits
        other = threading.Thread(target=b_message)
        other.start()
        assert b_ran.wait(10)  # b's message runs while a holds its slot
        other.join()
    assert gate._slot("a").acquire(blocking=False)  # released when a's message ended
    with pytest.raises(ValueError):
        TenantGate(0)


# --- the submit use case over the twins ------------------------------------------------------


class _Clock:
    now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _submitter(store: MemoryJobStore, publisher: MemoryPublisher, clock: _Clock) -> Submitter:
    return Submitter(
        store=store,
        publisher=publisher,
        sources=ImageSources([InlineSource(store)]),
        catalog=PolicyCatalog(_NoWorkers(), set),
        settings=QueueSettings(max_queued_bytes=100_000),
        check_callback_url=lambda url: None,
        limiter=MemoryRateLimiter(clock=clock),
    )


class _NoWorkers:
    def known_policies(self) -> list[str]:
        return []


ACME = Tenant("acme", max_queued_bytes=30_000, high_per_minute=2)
GLOBEX = Tenant("globex", max_queued_bytes=30_000, high_per_minute=0)


def test_one_tenants_backlog_never_refuses_another_tenants_work() -> None:
    store, publisher, clock = MemoryJobStore(max_queued_bytes=100_000), MemoryPublisher(), _Clock()
    submitter = _submitter(store, publisher, clock)
    image = b"\x89PNG" + b"a" * 9_000
    for _ in range(3):
        submitter.submit([SubmitRequest(image_bytes=image)], tenant=ACME)
    with pytest.raises(TenantQueueFull) as full:
        submitter.submit([SubmitRequest(image_bytes=image)], tenant=ACME)
    assert (full.value.status, full.value.code) == (429, "tenant_queue_full")
    assert full.value.retry_after_s > 0
    accepted = submitter.submit([SubmitRequest(image_bytes=image)], tenant=GLOBEX)
    assert not accepted[0].duplicate  # globex still has its whole share
    assert store.queued_bytes("acme") > 27_000 and store.queued_bytes("globex") > 9_000
    # acme's jobs end: its share is free again.
    for job_id in [j for j in store.jobs if j.startswith("acme/")]:
        store.finish(JobResult.ended(store.jobs[job_id], error=JobError(code="x", message="x")))
    assert store.queued_bytes("acme") == 0
    submitter.submit([SubmitRequest(image_bytes=image)], tenant=ACME)


def test_a_tenant_whose_share_is_the_whole_queue_meets_the_global_cap() -> None:
    store, publisher, clock = MemoryJobStore(max_queued_bytes=100_000), MemoryPublisher(), _Clock()
    submitter = _submitter(store, publisher, clock)
    alone = Tenant("solo", max_queued_bytes=100_000)
    for _ in range(9):
        submitter.submit([SubmitRequest(image_bytes=b"b" * 10_000)], tenant=alone)
    with pytest.raises(QueueFull) as full:
        submitter.submit([SubmitRequest(image_bytes=b"b" * 10_000)], tenant=alone)
    assert full.value.code == "queue_full"


def test_priority_jobs_go_to_the_priority_lane_within_the_tenants_quota() -> None:
    store, publisher, clock = MemoryJobStore(), MemoryPublisher(), _Clock()
    submitter = _submitter(store, publisher, clock)
    high = SubmitRequest(image_bytes=b"c" * 100, priority="high")
    first = submitter.submit([high, SubmitRequest(image_bytes=b"d" * 100)], tenant=ACME)
    assert publisher.high == [f"acme/{first[0].id}"]
    assert store.jobs[f"acme/{first[0].id}"].priority == "high"
    submitter.submit([high], tenant=ACME)
    with pytest.raises(RateLimited) as over:
        submitter.submit([high], tenant=ACME)
    assert over.value.code == "priority_quota_exceeded" and over.value.retry_after_s > 0
    submitter.submit([SubmitRequest(image_bytes=b"e" * 100)], tenant=ACME)  # normal still goes
    clock.now += 30.0  # a minute's quota refills at high_per_minute / 60 per second
    submitter.submit([high], tenant=ACME)
    with pytest.raises(JobRejected) as refused:
        submitter.submit([high], tenant=GLOBEX)
    assert (refused.value.status, refused.value.code) == (403, "priority_not_allowed")
    with pytest.raises(JobRejected) as bad:
        submitter.submit([SubmitRequest(image_bytes=b"f", priority="urgent")], tenant=ACME)
    assert bad.value.code == "bad_priority"


def test_tenant_settings_give_each_tenant_its_weighted_share() -> None:
    from moderation.compose.access import build_tenants

    settings = Settings(
        environment="development",
        queue=QueueSettings(max_queued_bytes=1200),
        tenants={
            "acme": TenantSettings(weight=2.0),
            "globex": TenantSettings(),
            "initech": TenantSettings(max_queued_bytes=100, high_priority_per_minute=0),
        },
    )
    tenants = build_tenants(settings)
    # 1200 * 2 / (2 + 1 + 1 + 1): default (the open API of development mode) is a tenant too.
    assert tenants["acme"].max_queued_bytes == 480
    assert tenants["globex"].max_queued_bytes == tenants["default"].max_queued_bytes == 240
    assert tenants["initech"].max_queued_bytes == 100
    assert tenants["initech"].high_lane() is None and tenants["acme"].high_per_minute == 60


# --- the Redis job store ---------------------------------------------------------------------


@pytest.fixture
def redis_store(redis_url: str) -> Iterator[RedisJobStore]:
    store = RedisJobStore.from_url(redis_url, QueueSettings(key_prefix="fair:"))
    yield store
    store.redis.flushdb()


@pytest.fixture
def pg_store(redis_url: str, pg_url: str) -> Iterator[PostgresJobStore]:
    """Records in PostgreSQL, the shares and backlogs beside the bytes in valkey."""
    settings = QueueSettings(key_prefix="fair:")
    with open_pool(DatabaseSettings(), url=pg_url) as pool:
        yield PostgresJobStore(pool, RedisJobTransients.from_url(redis_url, settings))


def _job(job_id: str, tenant: str) -> Job:
    return Job(id=job_id, image=ImageRef.for_inline(job_id), tenant=tenant)


@pytest.mark.parametrize("kind", ["redis", "memory", "postgres"])
def test_per_tenant_queued_bytes_and_backlog_are_released_on_every_ending(
    kind: str, request: pytest.FixtureRequest
) -> None:
    stores = {"redis": "redis_store", "postgres": "pg_store"}
    store: Any = request.getfixturevalue(stores[kind]) if kind in stores else MemoryJobStore()
    a1, a2, a3, b1 = (
        _job("acme/1", "acme"),
        _job("acme/2", "acme"),
        _job("acme/3", "acme"),
        _job("globex/1", "globex"),
    )
    store.create_many([(a1, b"x" * 1000), (a2, b"x" * 1000)], tenant_cap=2600)
    with pytest.raises(TenantQueueFull):
        store.create_many([(a3, b"x" * 1000)], tenant_cap=2600)
    assert store.get_job("acme/3") is None  # nothing of a refused create stays
    store.create_many([(b1, b"y" * 1000)], tenant_cap=2600)  # globex has its own share
    held = store.queued_bytes("acme")
    assert 2000 < held <= 2600 and store.queued_bytes() == held + store.queued_bytes("globex")
    backlog = store.backlog(["acme", "globex", "initech"])
    assert (backlog["acme"].depth, backlog["globex"].depth, backlog["initech"].depth) == (2, 1, 0)
    assert backlog["acme"].oldest_created_at is not None
    assert backlog["initech"].oldest_created_at is None
    # Every way out frees the tenant's share: a verdict or error, a dead letter, a rollback.
    assert store.finish(JobResult.ended(a1, error=JobError(code="image_corrupt", message="x")))
    poison = JobResult.ended(a2, error=JobError(code="poison_message", message="dead"))
    assert store.finish(poison)
    store.delete("globex/1")
    assert store.queued_bytes("acme") == store.queued_bytes("globex") == 0
    assert store.queued_bytes() == 0
    assert all(b.depth == 0 for b in store.backlog(["acme", "globex"]).values())
    assert not store.finish(poison)  # ending twice releases nothing twice
    assert store.queued_bytes("acme") == 0


# --- over HTTP: lanes on the broker, backlog in the metrics ----------------------------------


def test_jobs_go_to_their_tenants_lanes_and_the_backlog_shows_per_tenant(
    test_model_settings: Settings, redis_url: str
) -> None:
    import base64
    import re

    import httpx
    from pydantic import SecretStr

    from moderation.settings import ApiKey
    from tests.pipeline_support import pipeline_settings, start_api, stop_api

    acme, globex = "a" * 40, "g" * 40
    s = pipeline_settings(test_model_settings, redis_url, publish_wait_ms=0.0).model_copy(
        update={
            "api_keys": [
                ApiKey(tenant="acme", key=SecretStr(acme)),
                ApiKey(tenant="globex", key=SecretStr(globex)),
            ],
            "tenants": {"acme": TenantSettings(weight=2.0)},
        }
    )
    server, base = start_api(s)
    store = RedisJobStore.from_url(redis_url, s.queue)
    try:
        with httpx.Client(base_url=base, timeout=10) as client:
            as_acme = {"Authorization": f"Bearer {acme}"}
            job = {"image_base64": base64.b64encode(b"\x89PNG" + b"x" * 200).decode()}
            for i in range(2):
                answer = client.post("/v1/jobs", json={**job, "id": f"n{i}"}, headers=as_acme)
                assert answer.status_code == 202, answer.text
            high = client.post(
                "/v1/jobs", json={**job, "id": "h", "priority": "high"}, headers=as_acme
            )
            assert high.status_code == 202, high.text
            upload = client.post(
                "/v1/jobs:upload",
                files=[("image", ("u.png", b"\x89PNG" + b"u" * 200, "image/png"))],
                data={"jobs": '[{"id": "up", "priority": "high"}]'},
                headers=as_acme,
            )
            assert upload.status_code == 202, upload.text  # the upload's entries say it too
            bad = client.post("/v1/jobs", json={**job, "priority": "urgent"}, headers=as_acme)
            assert bad.status_code == 422  # schema validation, like every other field
            lanes_now = {
                name: store.redis.llen(name)
                for name in ("moderation", "moderation.t.acme", "moderation.high.acme")
            }
            assert lanes_now == {"moderation": 0, "moderation.t.acme": 2, "moderation.high.acme": 2}
            text = client.get("/metrics").text
    finally:
        stop_api(server)
    depth = dict(
        re.findall(r'^moderation_tenant_backlog_jobs\{tenant="(\w+)"\} (\S+)$', text, re.M)
    )
    assert depth == {"acme": "4.0", "globex": "0.0"}  # only the configured tenants
    ages = dict(
        re.findall(
            r'^moderation_tenant_backlog_oldest_age_seconds\{tenant="(\w+)"\} (\S+)$', text, re.M
        )
    )
    assert float(ages["acme"]) >= 0.0 and float(ages["globex"]) == 0.0
    assert re.search(r'^moderation_tenant_queued_bytes\{tenant="acme"\} [1-9]', text, re.M)
    assert re.search(r"^moderation_queue_depth 4\.0$", text, re.M)  # every lane counted
