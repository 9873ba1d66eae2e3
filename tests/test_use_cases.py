"""The use cases over the in-memory twins of the ports: no servers, real decisions.

The bundled test model scores (a real forward pass); the job store, review queue, audit sink,
publisher, callback sender and image source are the twins of :mod:`moderation.adapters.memory`.
These pin down the rules of :mod:`moderation.pipeline`: validation before anything is stored,
idempotency and id conflicts, tenant isolation, admission (token bucket, daily quota, queued-byte
cap) on a fake clock, the order of side effects (audit, then result, then review and callback),
that every ending is audited, retries, dead letters, human decisions, the lost-message sweep, and
reviewer sign-in (sessions, throttling, lockout).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from moderation import testmodel
from moderation.adapters.memory import (
    MemoryAuditSink,
    MemoryCallbacks,
    MemoryDeliveryLog,
    MemoryJobStore,
    MemoryPublisher,
    MemoryRateLimiter,
    MemoryReviewQueue,
    MemorySource,
    MemoryWorkerRegistry,
)
from moderation.core.admission import DAY_S, Tenant
from moderation.core.decision import Decision
from moderation.core.image_ref import ImageRef
from moderation.core.jobs import Job, JobResult, JobStatus
from moderation.core.review import HumanDecision, ReviewDecision
from moderation.exceptions import (
    AuditSinkUnavailable,
    ImageFetchTransient,
    JobConflict,
    JobNotFoundError,
    JobRejected,
    QueueFull,
    QueueUnavailable,
    RateLimited,
)
from moderation.pipeline.batching import MicroBatcher
from moderation.pipeline.maintenance import sweep_lost
from moderation.pipeline.outcomes import Outcomes
from moderation.pipeline.process import Processor, RetryLater
from moderation.pipeline.score import score_local
from moderation.pipeline.sources import ImageSources, InlineSource
from moderation.pipeline.submit import PolicyCatalog, SubmitRequest, Submitter
from moderation.settings import QueueSettings
from moderation.testmodel.samples import encoded

DEFAULT = Tenant("default")
ACME = Tenant("acme")
GLOBEX = Tenant("globex")


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def png(band: str, seed: int) -> bytes:
    return encoded(testmodel.sample_images(band, 1, seed)[0][0])


def _no_callback_check(url: str) -> None:
    if not url.startswith("https://"):
        from moderation.exceptions import UrlRefusedError

        raise UrlRefusedError(f"{url}: not https")


@dataclass
class World:
    store: MemoryJobStore
    deliveries: MemoryDeliveryLog
    registry: MemoryWorkerRegistry
    publisher: MemoryPublisher
    callbacks: MemoryCallbacks
    audit: MemoryAuditSink
    review: MemoryReviewQueue
    images: MemorySource
    submitter: Submitter
    outcomes: Outcomes
    processor: Processor
    queue: QueueSettings
    clock: FakeClock

    def submit(self, tenant: Tenant = DEFAULT, **kw: Any) -> str:
        """Submit one job; returns its scoped id (the store's key)."""
        from moderation.core.jobs import scoped_id

        return scoped_id(
            tenant.name, self.submitter.submit([SubmitRequest(**kw)], tenant=tenant)[0].id
        )

    def run(self, job_id: str, retries: int = 0) -> str:
        return self.processor.process(job_id, retries=retries).outcome

    def result(self, job_id: str) -> JobResult:
        result = self.store.get_result(job_id)
        assert result is not None
        return result


@pytest.fixture
def world(scoring: Any) -> Iterator[World]:
    queue = QueueSettings(
        max_retries=2,
        max_deliveries=3,
        max_inline_bytes=200_000,
        max_batch_jobs=10,
        max_batch_bytes=400_000,
        max_metadata_bytes=4096,
    )
    store = MemoryJobStore()
    deliveries = MemoryDeliveryLog(store)
    registry = MemoryWorkerRegistry()
    publisher = MemoryPublisher()
    callbacks = MemoryCallbacks()
    audit = MemoryAuditSink()
    review = MemoryReviewQueue()
    images = MemorySource()
    sources = ImageSources([images, InlineSource(store)])
    policies = scoring.policies
    clock = FakeClock()
    submitter = Submitter(
        store=store,
        publisher=publisher,
        sources=sources,
        catalog=PolicyCatalog(registry, lambda: set(policies.current.by_id)),
        settings=queue,
        check_callback_url=_no_callback_check,
        limiter=MemoryRateLimiter(clock=clock),
    )
    outcomes = Outcomes(
        store,
        deliveries=deliveries,
        audit=audit,
        callbacks=callbacks,
        review=review,
        policies=lambda: policies.current.policies,
        weights_sha256="w" * 64,
    )
    encoder = scoring.model.encoder
    batcher: MicroBatcher[Any, NDArray[np.float32]] = MicroBatcher(
        lambda xs: list(encoder.encode_prepared(xs)), max_batch=8, max_wait_s=0.0
    )
    processor = Processor(
        store=store,
        deliveries=deliveries,
        sources=sources,
        moderator=scoring.moderator,
        batcher=batcher,
        outcomes=outcomes,
        settings=queue,
    )
    yield World(
        store,
        deliveries,
        registry,
        publisher,
        callbacks,
        audit,
        review,
        images,
        submitter,
        outcomes,
        processor,
        queue,
        clock,
    )
    batcher.close()


# --- submit ------------------------------------------------------------------------------------


def test_a_batch_is_validated_completely_before_anything_is_stored(world: World) -> None:
    good = SubmitRequest(image_bytes=png("allow", 1))
    cases = [
        (SubmitRequest(image_url="ftp://x/y.png"), 400, "bad_scheme"),
        (SubmitRequest(image_url="inline:someone-elses-job"), 400, "bad_scheme"),
        (SubmitRequest(image_url="mem://"), 400, "bad_reference"),
        (SubmitRequest(image_bytes=b"x" * 200_001), 413, "inline_too_large"),
        (SubmitRequest(image_bytes=b""), 400, "empty_image"),
        (SubmitRequest(), 400, "missing_image"),
        (SubmitRequest(image_url="mem://a", policies=["nope"]), 400, "policy_unknown"),
        (SubmitRequest(image_url="mem://a", policies=[]), 400, "no_policies"),
        (SubmitRequest(image_url="mem://a", callback_url="http://plain"), 400, "bad_callback_url"),
    ]
    cases += [
        (SubmitRequest(image_url="mem://a", metadata={"x": "y" * 5000}), 413, "metadata_too_large"),
        (SubmitRequest(image_url="mem://a", metadata=_nested(9)), 400, "metadata_too_deep"),
    ]
    for bad, status, code in cases:
        with pytest.raises(JobRejected) as info:
            world.submitter.submit([good, good, bad], tenant=DEFAULT)
        assert (info.value.status, info.value.code, info.value.index) == (status, code, 2)
        assert "jobs[2]" in str(info.value)
    with pytest.raises(JobRejected) as too_many:
        world.submitter.submit([good] * 11, tenant=DEFAULT)
    assert too_many.value.code == "batch_too_large"
    big = SubmitRequest(image_bytes=b"\xff" * 150_000)
    with pytest.raises(JobRejected) as too_heavy:  # 3 x 150 kB > max_batch_bytes (400 kB)
        world.submitter.submit([big, big, big], tenant=DEFAULT)
    assert (too_heavy.value.status, too_heavy.value.code) == (413, "batch_too_large")
    assert world.store.jobs == {} and world.publisher.published == []


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"k": value}
    return value


def test_an_id_is_a_duplicate_for_the_same_request_and_a_conflict_for_another(
    world: World,
) -> None:
    first = world.submitter.submit([SubmitRequest(image_url="mem://a", id="up-1")], tenant=DEFAULT)
    again = world.submitter.submit([SubmitRequest(image_url="mem://a", id="up-1")], tenant=DEFAULT)
    assert (first[0].duplicate, again[0].duplicate) == (False, True)
    with pytest.raises(JobConflict) as conflict:
        world.submitter.submit([SubmitRequest(image_url="mem://b", id="up-1")], tenant=DEFAULT)
    assert (conflict.value.status, conflict.value.existing_id) == (409, "up-1")
    with pytest.raises(JobConflict):  # other metadata is another request too
        world.submitter.submit(
            [SubmitRequest(image_url="mem://a", id="up-1", metadata={"u": 1})], tenant=DEFAULT
        )
    assert world.publisher.published == ["up-1"]
    assert world.store.jobs["up-1"].image == ImageRef(uri="mem://a")
    # In a batch: a conflict with a stored job, or inside the batch, enqueues nothing at all.
    fresh = SubmitRequest(image_url="mem://c", id="up-2")
    for batch, index in (
        ([fresh, SubmitRequest(image_url="mem://b", id="up-1")], 1),
        ([fresh, SubmitRequest(image_url="mem://d", id="up-2")], 1),
    ):
        with pytest.raises(JobConflict) as info:
            world.submitter.submit(batch, tenant=DEFAULT)
        assert info.value.index == index
    assert world.publisher.published == ["up-1"] and "up-2" not in world.store.jobs
    # The same inline bytes are the same request; other bytes are not.
    data = png("allow", 2)
    world.submit(image_bytes=data, id="up-3")
    assert world.submitter.submit([SubmitRequest(image_bytes=data, id="up-3")], tenant=DEFAULT)[
        0
    ].duplicate
    with pytest.raises(JobConflict):
        world.submit(image_bytes=data + b"x", id="up-3")


def test_the_job_record_is_rolled_back_when_the_broker_refuses(world: World) -> None:
    world.publisher.fail = QueueUnavailable("broker down")
    with pytest.raises(QueueUnavailable):
        world.submit(image_bytes=png("allow", 2), id="up-2")
    assert "up-2" not in world.store.jobs and "up-2" not in world.store.inline
    assert world.store.queued_bytes() == 0


def test_tenants_own_their_ids_and_read_only_their_jobs(world: World) -> None:
    ours = world.submitter.submit(
        [SubmitRequest(image_url="mem://a", id="upload-8812")], tenant=ACME
    )
    theirs = world.submitter.submit(
        [SubmitRequest(image_url="mem://b", id="upload-8812")], tenant=GLOBEX
    )
    # Same id, two tenants: two jobs, neither a duplicate of the other.
    assert [ours[0].id, theirs[0].id] == ["upload-8812", "upload-8812"]
    assert not ours[0].duplicate and not theirs[0].duplicate
    assert world.publisher.published == ["acme/upload-8812", "globex/upload-8812"]
    assert world.store.jobs["acme/upload-8812"].tenant == "acme"
    mine = world.submitter.result("upload-8812", tenant=ACME)
    assert (mine.job_id, mine.tenant) == ("upload-8812", "acme")
    with pytest.raises(JobNotFoundError):
        world.submitter.result("upload-8812", tenant=DEFAULT)
    only_acme = world.submitter.submit(
        [SubmitRequest(image_url="mem://c", id="a-only")], tenant=ACME
    )
    with pytest.raises(JobNotFoundError):
        world.submitter.result(only_acme[0].id, tenant=GLOBEX)
    # Processing, audit and callbacks carry the tenant; the callback shows the tenant's own id.
    ref = world.images.put("x.png", png("block", 4))
    job_id = world.submit(
        ACME, image_url=ref.uri, id="cb-1", callback_url="https://hooks.example/x"
    )
    assert job_id == "acme/cb-1" and world.run(job_id) == "verdict"
    assert (
        world.audit.records[-1].tenant == "acme" and world.audit.records[-1].job_id == "acme/cb-1"
    )
    sent_id, _, body = world.callbacks.sent[-1]
    assert sent_id == "cb-1" and b'"job_id":"cb-1"' in body and b'"tenant":"acme"' in body


def test_a_tenant_policy_set_is_the_default_and_the_limit(world: World, scoring: Any) -> None:
    catalog = PolicyCatalog(world.registry, lambda: {"testworld", "other"})
    submitter = Submitter(
        store=world.store,
        publisher=world.publisher,
        sources=world.submitter.sources,
        catalog=catalog,
        settings=world.queue,
        check_callback_url=_no_callback_check,
    )
    restricted = Tenant("acme", policies=("testworld",))
    submitter.submit([SubmitRequest(image_url="mem://a", id="p1")], tenant=restricted)
    assert world.store.jobs["acme/p1"].policies == ["testworld"]
    with pytest.raises(JobRejected) as refused:
        submitter.submit(
            [SubmitRequest(image_url="mem://a", policies=["other"])], tenant=restricted
        )
    assert (refused.value.status, refused.value.code) == (400, "policy_not_allowed")
    submitter.submit([SubmitRequest(image_url="mem://a", policies=["other"])], tenant=GLOBEX)
    with pytest.raises(JobRejected) as unknown:
        submitter.submit(
            [SubmitRequest(image_url="mem://a")], tenant=Tenant("x", policies=("gone",))
        )
    assert unknown.value.code == "policy_unknown"


def test_rate_limits_and_quotas_per_tenant_on_a_fake_clock(world: World) -> None:
    slow = Tenant("acme", rate_per_s=2.0, burst=3)
    one = SubmitRequest(image_url="mem://a")
    for _ in range(3):
        world.submitter.submit([one], tenant=slow)
    with pytest.raises(RateLimited) as limited:
        world.submitter.submit([one], tenant=slow)
    assert (limited.value.status, limited.value.code) == (429, "rate_limited")
    assert limited.value.retry_after_s == pytest.approx(0.5)
    world.submitter.submit([one], tenant=GLOBEX)  # another tenant has its own bucket
    world.clock.now += 0.5
    world.submitter.submit([one], tenant=slow)
    with pytest.raises(RateLimited):
        world.submitter.submit([one, one], tenant=slow)  # all or nothing
    world.clock.now += 1.0
    world.submitter.submit([one, one], tenant=slow)
    with pytest.raises(JobRejected) as over_burst:
        world.submitter.submit([one] * 4, tenant=slow)
    assert (over_burst.value.status, over_burst.value.code) == (413, "batch_over_burst")
    # A daily quota, reset at the next UTC midnight.
    quota = Tenant("globex", daily_jobs=2)
    world.clock.now = 20 * DAY_S + 3600.0
    world.submitter.submit([one, one], tenant=quota)
    with pytest.raises(RateLimited) as used_up:
        world.submitter.submit([one], tenant=quota)
    assert used_up.value.code == "quota_exceeded"
    assert used_up.value.retry_after_s == pytest.approx(DAY_S - 3600.0)
    world.clock.now = 21 * DAY_S + 1.0
    world.submitter.submit([one], tenant=quota)
    from moderation.metrics import metrics

    rejected = metrics().rejected.labels("acme", "rate_limited")._value.get()
    assert rejected >= 2


def test_over_the_queued_bytes_cap_new_jobs_wait_and_ended_jobs_free_it(world: World) -> None:
    data = png("allow", 12)
    job_id = world.submit(image_bytes=data)
    held = world.store.queued_bytes()
    assert held > len(data)
    world.store.max_queued_bytes = held + 100
    with pytest.raises(QueueFull):
        world.submit(image_bytes=data + b"\0")
    assert world.run(job_id) == "verdict"
    assert world.store.queued_bytes() == 0
    world.submit(image_bytes=data + b"\0")


def test_inline_bytes_are_just_another_source(world: World) -> None:
    job_id = world.submit(image_bytes=png("block", 3))
    assert world.store.jobs[job_id].image == ImageRef.for_inline(job_id)
    assert world.run(job_id) == "verdict"
    assert world.result(job_id).verdict.decision is Decision.BLOCK  # type: ignore[union-attr]
    assert job_id not in world.store.inline  # decided (not REVIEW): the bytes are dropped


def test_heic_and_avif_uploads_get_real_verdicts(world: World) -> None:
    """What phones upload today is decoded (pillow-heif, Pillow's AVIF) and scored like a PNG."""
    import io

    import pillow_heif

    image = testmodel.sample_images("block", 1, 9)[0][0].convert("RGB")
    heic = io.BytesIO()
    pillow_heif.from_pillow(image).save(heic, quality=90)
    avif = io.BytesIO()
    image.save(avif, "AVIF", quality=90, speed=10)
    for data in (heic.getvalue(), avif.getvalue()):
        job_id = world.submit(image_bytes=data)
        assert world.run(job_id) == "verdict", world.result(job_id).error
        assert world.result(job_id).verdict.decision is Decision.BLOCK  # type: ignore[union-attr]


# --- process -----------------------------------------------------------------------------------


def test_verdicts_are_real_and_side_effects_follow_the_audit_record_and_the_result(
    world: World,
) -> None:
    ref = world.images.put("borderline.png", png("review", 31))
    order: list[str] = []
    finish, write, send = world.store.finish_many, world.audit.write_many, world.callbacks.send
    world.store.finish_many = lambda r: order.append("result") or finish(r)  # type: ignore[method-assign]
    world.audit.write_many = lambda r: order.append("audit") or write(r)  # type: ignore[method-assign]
    world.callbacks.send = lambda *a, **k: order.append("callback") or send(*a, **k)  # type: ignore[method-assign]
    job_id = world.submit(image_url=ref.uri, callback_url="https://hooks.example/x")
    assert world.run(job_id) == "verdict"
    verdict = world.result(job_id).verdict
    assert verdict is not None and verdict.decision is Decision.REVIEW, verdict
    assert order == ["audit", "result", "callback"]
    record = world.audit.records[-1]
    assert (record.job_id, record.decision, record.kind) == (job_id, "review", "automated")
    assert record.details["signal"] == "prompts" and record.details["evidence"]
    assert record.weights_sha256 == "w" * 64
    # Every image's PDQ hash and quality go with its SHA-256: result, audit record, review item.
    result = world.result(job_id)
    assert result.content_pdq is not None and len(result.content_pdq) == 64
    assert result.content_pdq_quality is not None and record.content_sha256
    assert record.details["content_pdq"] == result.content_pdq
    assert record.details["content_pdq_quality"] == result.content_pdq_quality
    claim = world.review.claim("rv_alice")
    assert claim is not None and claim.item.job_id == job_id and claim.item.image == ref
    assert claim.item.content_pdq == result.content_pdq
    # A redelivery of the finished job is a no-op: no second record, result or callback.
    assert world.run(job_id) == "duplicate"
    assert order == ["audit", "result", "callback"]
    assert [j for j, _ in world.store.outcomes()] == [job_id]


def test_a_crash_between_result_and_side_effects_is_repaired_by_the_redelivery(
    world: World,
) -> None:
    ref = world.images.put("b.png", png("block", 5))
    job_id = world.submit(image_url=ref.uri, callback_url="https://hooks.example/x")
    send = world.callbacks.send

    def broken(*args: Any, **kwargs: Any) -> None:
        raise QueueUnavailable("broker down right after the result was written")

    world.callbacks.send = broken  # type: ignore[method-assign]
    with pytest.raises(QueueUnavailable):
        world.run(job_id)
    assert world.result(job_id).status is JobStatus.DONE and world.callbacks.sent == []
    world.callbacks.send = send  # type: ignore[method-assign]
    assert world.run(job_id) == "duplicate"
    assert [j for j, _, _ in world.callbacks.sent] == [job_id]
    assert world.deliveries.effects_done(job_id)
    assert job_id not in world.deliveries.deliveries  # forgotten once its message was done


def test_a_crash_after_the_side_effects_does_not_repeat_them(world: World) -> None:
    """The effects mark lives as long as the message that ended the job: a worker that dies
    after the side effects (before the message is done) leaves it, and the redelivery finds
    the effects done."""
    ref = world.images.put("c.png", png("block", 7))
    job_id = world.submit(image_url=ref.uri, callback_url="https://hooks.example/y")
    forget = world.deliveries.forget_ended

    def dies(job_ids: Any) -> None:
        raise QueueUnavailable("the worker died before its message was done")

    world.deliveries.forget_ended = dies  # type: ignore[method-assign]
    with pytest.raises(QueueUnavailable):
        world.run(job_id)
    assert world.deliveries.effects_done(job_id)
    world.deliveries.forget_ended = forget  # type: ignore[method-assign]
    assert world.run(job_id) == "duplicate"
    assert [j for j, _, _ in world.callbacks.sent] == [job_id]  # once


def test_every_ending_is_audited_errors_too(world: World) -> None:
    corrupt = world.submit(image_bytes=png("allow", 6)[:40])
    missing = world.submit(image_url="mem://nowhere.png")
    for job_id, code in ((corrupt, "image_corrupt"), (missing, "not_found")):
        assert world.run(job_id) == "error"
        assert job_id not in world.store.inline  # errors keep no image bytes
        result = world.result(job_id)
        assert result.status is JobStatus.ERROR and result.error is not None
        assert result.error.code == code
        record = next(r for r in world.audit.records if r.job_id == job_id)
        assert (record.decision, record.reason_code) == ("error", code)
        assert record.details["error"]
    assert {j for j, _ in world.store.outcomes()} == {corrupt, missing}


def test_no_result_without_its_audit_record(world: World) -> None:
    job_id = world.submit(image_bytes=png("block", 7))
    world.audit.fail = AuditSinkUnavailable("spool disk full")
    with pytest.raises(AuditSinkUnavailable):
        world.run(job_id)
    assert world.result(job_id).status is JobStatus.QUEUED  # the job will run again
    world.audit.fail = None
    assert world.run(job_id) == "verdict"


def test_transient_errors_retry_then_end_with_the_reason(world: World) -> None:
    class Flaky(MemorySource):
        schemes = ("flaky",)

        def check(self, ref: ImageRef, *, tenant: str | None = None) -> None:
            pass

        def fetch(self, ref: ImageRef, *, tenant: str | None = None) -> bytes:
            raise ImageFetchTransient("origin answered 503")

    world.processor.sources = ImageSources([Flaky(), world.images])
    world.submitter.sources = world.processor.sources
    job_id = world.submit(image_url="flaky://x")
    for attempt in range(world.queue.max_retries):
        with pytest.raises(RetryLater) as info:
            world.run(job_id, retries=attempt)
        assert info.value.countdown == world.processor.backoff(attempt)
    assert world.run(job_id, retries=world.queue.max_retries) == "error"
    error = world.result(job_id).error
    assert error is not None and error.transient and error.attempts == 3
    # An origin that cannot be reached: the tenant gets the generic code (the detail is logged).
    assert error.code == "fetch_failed" and "503" not in error.message
    assert world.audit.records[-1].decision == "error"


def test_a_poison_message_is_dead_lettered_and_audited(world: World) -> None:
    job_id = world.submit(image_bytes=png("allow", 8))
    for _ in range(world.queue.max_deliveries):  # deliveries that died with the worker
        world.deliveries.count_delivery(job_id)
    assert world.run(job_id) == "dead_letter"
    assert world.result(job_id).error.code == "poison_message"  # type: ignore[union-attr]
    assert job_id in world.store.inline  # kept: `dlq requeue` runs it again
    assert [d.job_id for d in world.deliveries.dead_letters()] == [job_id]
    assert world.audit.records[-1].reason_code == "poison_message"
    assert world.deliveries.take_dead_letter(job_id) is not None
    assert world.run(job_id) == "verdict"


def test_an_unknown_policy_ends_the_job_before_any_fetch(world: World) -> None:
    job = Job(id="j-unknown", image=ImageRef(uri="mem://a"), policies=["gone"])
    world.store.create(job)
    assert world.run(job.id) == "error"
    assert world.result(job.id).error.code == "policy_unknown"  # type: ignore[union-attr]
    assert world.images.fetched == []


# --- human decisions ---------------------------------------------------------------------------


def test_a_human_decision_is_audited_per_reviewer_then_stored_then_called_back(
    world: World,
) -> None:
    job_id = world.submit(image_bytes=png("review", 31), callback_url="https://hooks.example/x")
    world.run(job_id)
    claim = world.review.claim("rv_first")
    assert claim is not None
    decision = HumanDecision(
        job_id=job_id,
        review_id=claim.item.review_id,
        decision=ReviewDecision.REMOVE,
        reason_code=claim.item.reason_codes[0],
        reviewers=["rv_first", "rv_second"],
        category_id=claim.item.category_id,
        policy_id=claim.item.policy_id,
        policy_version=claim.item.policy_version,
        decided_at=datetime.now(UTC),
    )
    updated = world.outcomes.record_human_decision(decision)
    assert updated.decision is Decision.BLOCK and updated.human == decision
    humans = [r for r in world.audit.records if r.kind == "human"]
    assert [(r.actor, r.details["reviewer_position"]) for r in humans] == [
        ("rv_first", 1),
        ("rv_second", 2),
    ]
    assert {r.policy_version for r in humans} == {claim.item.policy_version}
    assert humans[0].content_sha256 == world.result(job_id).content_sha256
    events = [body for j, _, body in world.callbacks.sent if j == job_id]
    assert b'"job.human_decision"' in events[-1]
    world.outcomes.record_human_decision(decision)  # repeated: same record ids
    assert len({r.record_id for r in world.audit.records if r.kind == "human"}) == 2
    with pytest.raises(JobNotFoundError):
        world.outcomes.record_human_decision(decision.model_copy(update={"job_id": "nope"}))


# --- sweep and local scoring -------------------------------------------------------------------


def test_the_sweep_republishes_only_jobs_whose_message_was_lost(world: World) -> None:
    kept = world.submit(image_url="mem://a")
    lost = Job(id="lost-1", image=ImageRef(uri="mem://a"))
    world.store.create(lost)  # recorded, never published (the API died in between)
    sweep = (world.store, world.deliveries, world.registry, world.publisher)
    assert sweep_lost(*sweep, older_than_s=0.0) == ["lost-1"]
    assert world.publisher.published == [kept, "lost-1"]
    assert sweep_lost(*sweep, older_than_s=0.0) == []  # lock held


def test_local_scoring_uses_the_same_path(world: World, scoring: Any) -> None:
    items = [("block", lambda: png("block", 9)), ("broken", lambda: b"not an image")]
    results = list(score_local(items, scoring.moderator, batch_size=1))
    assert results[0].verdict is not None and results[0].verdict.decision is Decision.BLOCK
    assert results[1].error is not None and results[1].error.code == "image_corrupt"
    job_id = world.submit(image_bytes=png("block", 9))
    world.run(job_id)
    queued = world.result(job_id).verdict
    assert queued is not None and queued.score == pytest.approx(results[0].verdict.score, abs=1e-4)


# --- batches -----------------------------------------------------------------------------------


def test_a_batch_message_is_one_forward_pass_and_each_job_ends_on_its_own(world: World) -> None:
    good = [
        world.submit(image_bytes=png(band, 40 + i))
        for i, band in enumerate(["block", "allow", "review", "allow"])
    ]
    corrupt = world.submit(image_bytes=png("allow", 50)[:60])
    ended = world.submit(image_bytes=png("allow", 51))
    world.run(ended)
    sizes: list[int] = []
    encoder_batcher = world.processor.batcher
    original = encoder_batcher._on_batch
    encoder_batcher._on_batch = lambda stats: sizes.append(stats.size)
    audit_before = len(world.audit.records)
    ids = [*good, corrupt, ended, "never-created"]
    done = world.processor.process_many(ids)
    encoder_batcher._on_batch = original
    assert [d.outcome for d in done] == ["verdict"] * 4 + ["error", "duplicate", "missing"]
    assert sizes == [4]  # the four good images went through one forward pass together
    assert world.result(corrupt).error.code == "image_corrupt"  # type: ignore[union-attr]
    assert {r.job_id for r in world.audit.records[audit_before:]} == {*good, corrupt}
    assert [j for j, _ in world.store.outcomes()].count(ended) == 1


def test_transient_errors_in_a_batch_are_retried_per_job(world: World) -> None:
    class Flaky(MemorySource):
        schemes = ("flaky",)

        def check(self, ref: ImageRef, *, tenant: str | None = None) -> None:
            pass

        def fetch(self, ref: ImageRef, *, tenant: str | None = None) -> bytes:
            raise ImageFetchTransient("origin answered 503")

    world.processor.sources = ImageSources([Flaky(), world.images, InlineSource(world.store)])
    world.submitter.sources = world.processor.sources
    flaky = world.submit(image_url="flaky://x")
    fine = world.submit(image_bytes=png("block", 52))
    done = world.processor.process_many([flaky, fine], retries=1)
    assert [(d.outcome, d.retry_in) for d in done] == [
        ("retry", world.processor.backoff(1)),
        ("verdict", None),
    ]
    assert world.result(flaky).status is JobStatus.QUEUED


def test_a_redelivered_batch_is_split_so_a_poison_image_takes_down_only_itself(
    world: World,
) -> None:
    ids = [world.submit(image_bytes=png("allow", 60 + i)) for i in range(3)]
    world.deliveries.count_deliveries(ids)  # the first delivery started them, then the worker died
    done = world.processor.process_many(ids)
    assert [d.outcome for d in done] == ["split"] * 3
    assert all(world.result(j).status is JobStatus.QUEUED for j in ids)
    assert [d.outcome for d in (world.processor.process_many([j]) for j in ids) for d in d] == [
        "verdict"
    ] * 3


def test_one_crash_of_a_batch_counts_once_and_dead_letters_after_max_deliveries_crashes(
    world: World,
) -> None:
    """Crashes are counted, not messages: the split of a redelivered batch is not one more
    delivery, so a job dies with exactly ``queue.max_deliveries`` crashes, not fewer."""
    ids = [world.submit(image_bytes=png("allow", 70 + i)) for i in range(2)]
    world.deliveries.count_deliveries(ids)  # started in a batch; the worker died
    assert [d.outcome for d in world.processor.process_many(ids)] == ["split"] * 2
    poison = ids[0]
    # Its single message: the second start, then the worker dies on it again and again.
    for crash in range(2, world.queue.max_deliveries + 1):
        assert world.deliveries.count_delivery(poison) == crash
    # The next start comes after max_deliveries crashes: dead-lettered, with that many crashes.
    assert world.processor.process_many([poison])[0].outcome == "dead_letter"
    letter = world.deliveries.dead_letters()[0]
    assert letter.deliveries == world.queue.max_deliveries + 1
    assert f"{world.queue.max_deliveries} without a result" in letter.reason
    assert world.processor.process_many([ids[1]])[0].outcome == "verdict"


def test_the_api_side_publisher_gathers_single_submissions_into_one_message() -> None:
    import threading

    from moderation.pipeline.publishing import CoalescingPublisher

    inner = MemoryPublisher()
    publisher = CoalescingPublisher(inner, max_jobs=8, max_wait_s=0.2)
    threads = [threading.Thread(target=publisher.publish, args=([f"j{i}"],)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    publisher.publish([f"big{i}" for i in range(5)])  # half a message or more: straight through
    publisher.close()
    sizes = [len(ids) for ids, _, _ in inner.messages]
    assert sorted(inner.published) == sorted(
        [f"j{i}" for i in range(6)] + [f"big{i}" for i in range(5)]
    )
    assert len(sizes) < 7 and 5 in sizes  # six single submissions did not make six messages
    inner.fail = QueueUnavailable("down")
    with pytest.raises(QueueUnavailable):
        CoalescingPublisher(inner, max_jobs=8, max_wait_s=0.0).publish(["x"])


# --- reviewer sign-in ---------------------------------------------------------------------------


@dataclass
class Desk:
    auth: Any
    sessions: Any
    throttle: Any
    audit: MemoryAuditSink
    clock: FakeClock
    checked: list[str]


@pytest.fixture
def desk() -> Desk:
    from moderation.adapters.memory import (
        MemoryLoginThrottle,
        MemoryReviewerSessions,
        MemoryReviewerStore,
    )
    from moderation.core.reviewers import LoginPolicy, ReviewerAccount, Role
    from moderation.exceptions import ReviewAuthError
    from moderation.pipeline.signin import ReviewerAuth

    users = MemoryReviewerStore()
    for name in ("alice", "bob"):
        users.create(
            ReviewerAccount(
                username=name, role=Role.REVIEWER, password_hash="h", disabled=False, created_at=0
            )
        )
    checked: list[str] = []

    def check(account: Any, password: str) -> Any:  # stands in for argon2 (timed elsewhere)
        checked.append(password)
        if account is None or password != "right-password" or account.disabled:
            raise ReviewAuthError("wrong username or password", code="review_bad_credentials")
        return account

    clock = FakeClock()
    sessions = MemoryReviewerSessions(idle_s=600, max_s=3600)
    throttle = MemoryLoginThrottle()
    audit = MemoryAuditSink()
    policy = LoginPolicy(
        free_failures=2, delay_s=1.0, max_delay_s=8.0, lockout_after=6, lockout_s=900, window_s=900
    )
    auth = ReviewerAuth(
        users=users,
        sessions=sessions,
        throttle=throttle,
        check_password=check,
        pseudonym=lambda name: f"rv_{name}",
        account_policy=policy,
        address_policy=LoginPolicy(free_failures=5, lockout_after=20, lockout_s=900),
        audit=audit,
        clock=clock,
    )
    return Desk(auth, sessions, throttle, audit, clock, checked)


def test_failed_sign_ins_wait_longer_then_lock_that_address_out_of_the_account(
    desk: Desk,
) -> None:
    from moderation.exceptions import LoginThrottled, ReviewAuthError

    waits: list[float] = []
    pair = ["pair:alice@10.0.0.1"]
    for attempt in range(6):
        desk.clock.now += waits[-1] if waits else 0.0  # wait exactly as long as told
        with pytest.raises(ReviewAuthError) as info:
            desk.auth.sign_in("alice", f"wrong-{attempt}", client="10.0.0.1")
        assert not isinstance(info.value, LoginThrottled)
        waits.append(desk.throttle.blocked_for(pair, desk.clock.now))
    assert waits == [0.0, 0.0, 1.0, 2.0, 4.0, 900.0]  # growing delays, then the lockout
    checked = len(desk.checked)
    with pytest.raises(LoginThrottled) as locked:
        desk.auth.sign_in("alice", "right-password", client="10.0.0.1")
    assert locked.value.retry_after_s == pytest.approx(900.0)
    assert len(desk.checked) == checked  # refused without checking the password
    # From another address alice is only slowed down (the account's delay, at most 8 s here),
    # never locked out.
    with pytest.raises(LoginThrottled) as slowed:
        desk.auth.sign_in("alice", "right-password", client="10.9.9.9")
    assert slowed.value.retry_after_s == pytest.approx(8.0)
    assert len(desk.checked) == checked
    desk.clock.now += slowed.value.retry_after_s
    assert desk.auth.sign_in("alice", "right-password", client="10.9.9.9")[0]
    with pytest.raises(LoginThrottled):  # the attacker's address stays locked out of alice
        desk.auth.sign_in("alice", "right-password", client="10.0.0.1")
    # Another account from the same address is not locked out with alice (the address has
    # only its own, shorter wait: 6 failures, 5 free).
    address_wait = desk.throttle.blocked_for(["address:10.0.0.1"], desk.clock.now)
    assert address_wait <= 1.0  # not locked (and 8 s have passed)
    desk.clock.now += address_wait
    token, _ = desk.auth.sign_in("bob", "right-password", client="10.0.0.1")
    assert token
    desk.clock.now += 900.0
    desk.auth.sign_in("alice", "right-password", client="10.0.0.1")
    assert desk.throttle.blocked_for(["account:alice", *pair], desk.clock.now) == 0.0
    events = [(r.kind, r.decision, r.actor) for r in desk.audit.records]
    assert events.count(("security", "login_failed", "rv_alice")) == 6
    assert ("security", "login_locked", "rv_alice") in events
    assert all("wrong-" not in str(r.details) for r in desk.audit.records)  # no passwords


def test_concurrent_attempts_are_reserved_before_the_check_and_the_checks_are_capped() -> None:
    import threading

    from moderation.adapters.memory import (
        MemoryLoginThrottle,
        MemoryReviewerSessions,
        MemoryReviewerStore,
    )
    from moderation.core.reviewers import LoginPolicy
    from moderation.exceptions import LoginBusy, LoginThrottled, ReviewAuthError
    from moderation.pipeline.signin import ReviewerAuth

    inside = 0
    peak = 0
    gate = threading.Event()
    lock = threading.Lock()

    def check(account: Any, password: str) -> Any:
        nonlocal inside, peak
        with lock:
            inside += 1
            peak = max(peak, inside)
        gate.wait(5)  # every admitted check is held until the refusals are in
        with lock:
            inside -= 1
        raise ReviewAuthError("wrong username or password", code="review_bad_credentials")

    auth = ReviewerAuth(
        users=MemoryReviewerStore(),
        sessions=MemoryReviewerSessions(idle_s=600, max_s=3600),
        throttle=MemoryLoginThrottle(),
        check_password=check,
        pseudonym=lambda name: f"rv_{name}",
        account_policy=LoginPolicy(free_failures=3, lockout_after=10),
        address_policy=LoginPolicy(free_failures=3, lockout_after=50),
        max_concurrent_checks=2,
        check_wait_s=0.0,
    )
    outcomes: list[str] = []

    def attempt(n: int, client: str) -> None:
        try:
            auth.sign_in(f"ghost{n}", "guess", client=client)
        except LoginBusy:
            outcomes.append("busy")
        except LoginThrottled:
            outcomes.append("throttled")
        except ReviewAuthError:
            outcomes.append("checked")

    # One address, 12 attempts at once: the reservations let at most free + 1 through.
    threads = [threading.Thread(target=attempt, args=(n, "203.0.113.7")) for n in range(12)]
    for t in threads:
        t.start()
    for _ in range(2000):  # the two admitted checks hold their slots until 10 were refused
        if len(outcomes) >= 10:
            break
        threading.Event().wait(0.005)
    gate.set()
    for t in threads:
        t.join()
    assert outcomes.count("checked") == 2 and peak == 2, (outcomes, peak)
    # The address's reservations let free + 1 = 4 through, of which the cap checked 2.
    assert outcomes.count("throttled") == 8 and outcomes.count("busy") == 2


def test_an_address_trying_many_accounts_is_throttled(desk: Desk) -> None:
    from moderation.exceptions import LoginThrottled, ReviewAuthError

    for n in range(20):
        with pytest.raises(ReviewAuthError):
            desk.auth.sign_in(f"user{n}", "guess", client="203.0.113.7")
        desk.clock.now += desk.throttle.blocked_for(["address:203.0.113.7"], desk.clock.now)
        desk.clock.now -= 0.001 if n == 19 else 0.0
    with pytest.raises(LoginThrottled):
        desk.auth.sign_in("bob", "right-password", client="203.0.113.7")
    desk.auth.sign_in("bob", "right-password", client="198.51.100.1")


def test_sessions_end_at_logout_idle_timeout_lifetime_and_by_an_admin(desk: Desk) -> None:
    from moderation.exceptions import ReviewAuthError

    token, _session = desk.auth.sign_in("alice", "right-password", client="10.0.0.1")
    assert desk.auth.session(token)[1].username == "alice"
    desk.auth.sign_out(token)
    with pytest.raises(ReviewAuthError):  # a copied cookie is worthless after sign-out
        desk.auth.session(token)
    # Idle timeout: 600 s without a request.
    token, _ = desk.auth.sign_in("alice", "right-password", client="10.0.0.1")
    desk.clock.now += 599
    desk.auth.session(token)
    desk.clock.now += 599
    desk.auth.session(token)  # each request restarts the idle clock
    desk.clock.now += 600
    with pytest.raises(ReviewAuthError):
        desk.auth.session(token)
    # Absolute lifetime: 3600 s however active.
    token, _ = desk.auth.sign_in("alice", "right-password", client="10.0.0.1")
    for _ in range(6):
        desk.clock.now += 500
        desk.auth.session(token)
    desk.clock.now += 600
    with pytest.raises(ReviewAuthError):
        desk.auth.session(token)
    # An admin ends every session of an account, and it is audited.
    tokens = [desk.auth.sign_in("bob", "right-password", client="10.0.0.2")[0] for _ in range(3)]
    assert desk.auth.end_sessions("bob", by="rv_root") == 3
    for t in tokens:
        with pytest.raises(ReviewAuthError):
            desk.auth.session(t)
    ended = [r for r in desk.audit.records if r.decision == "sessions_ended"]
    assert ended[-1].actor == "rv_bob" and ended[-1].details == {"by": "rv_root", "sessions": 3}
    # Disabling an account ends its session at the next request.
    token, _ = desk.auth.sign_in("alice", "right-password", client="10.0.0.1")
    desk.auth.users.set_disabled("alice", True)
    with pytest.raises(ReviewAuthError):
        desk.auth.session(token)
    assert desk.sessions.count("alice") == 0


@pytest.mark.parametrize(
    "bad_id", ["acme/invoice-1", "a\r\nb", "inv-1\n", "x" * 129, "", " spaced", "../up"]
)
def test_the_use_case_refuses_ids_outside_the_pattern_for_every_tenant(
    world: World, bad_id: str
) -> None:
    """Whatever entry point calls it: no id can reach into another tenant's namespace."""
    for tenant in (DEFAULT, GLOBEX):
        with pytest.raises(JobRejected) as refused:
            world.submitter.submit([SubmitRequest(image_url="mem://a", id=bad_id)], tenant=tenant)
        assert refused.value.status == 422 and refused.value.code == "invalid_id"
        if bad_id:
            with pytest.raises(JobNotFoundError):
                world.submitter.result(bad_id, tenant=tenant)
    world.submitter.submit([SubmitRequest(image_url="mem://a", id="invoice-1")], tenant=ACME)
    assert world.submitter.results(["invoice-1", bad_id, "acme/invoice-1"], tenant=ACME)[1:] == [
        None,
        None,
    ]
    assert world.submitter.results(["invoice-1"], tenant=ACME)[0] is not None
    assert set(world.store.jobs) == {"acme/invoice-1"}


def test_a_video_job_carries_its_segments_to_result_audit_callback_and_dsa(world: World) -> None:
    """A red star from 12 s to 15 s of a 30 s clip (inline upload): blocked, with the segment
    in the job result, the audit record, the DSA statement and the callback's payload."""
    from moderation.core.audit import dsa_statement
    from moderation.testmodel.clips import Shot, allow_image, block_image, clip

    data = clip([Shot(12, allow_image()), Shot(3, block_image()), Shot(15, allow_image())])
    job_id = world.submit(image_bytes=data, callback_url="https://hooks.example/v")
    assert world.run(job_id) == "verdict", world.result(job_id).error
    result = world.result(job_id)
    verdict = result.verdict
    assert verdict is not None and verdict.decision is Decision.BLOCK and verdict.video
    (segment,) = [s for s in verdict.video.segments if s.decision is Decision.BLOCK]
    assert 11.9 <= segment.start_s <= 12.3 and 15.0 <= segment.end_s <= 15.3
    # what the API returns and the client parses back
    again = JobResult.model_validate_json(result.model_dump_json())
    assert again.verdict is not None and again.verdict.video == verdict.video
    record = world.audit.records[-1]
    assert record.details["video"]["segments"][0]["start_s"] == segment.start_s
    statement = dsa_statement(record)
    assert statement is not None and statement["content_type"] == ["CONTENT_TYPE_VIDEO"]
    assert "seen at 12." in statement["decision_facts"]
    sent = world.callbacks.sent[-1]
    assert "segments" in str(sent)


def test_metadata_that_is_not_unicode_and_urls_with_controls_are_refused(world: World) -> None:
    """JSON lets a client send a lone surrogate (``"\\ud800"``) and the JSON API takes any
    string as a URL: both are client errors, not a crash and not a forged log line later."""
    for metadata in ({"a": "\ud800"}, {"\udc00": 1}, {"a": [{"b": "x\ud800"}]}):
        with pytest.raises(JobRejected) as refused:
            world.submitter.submit(
                [SubmitRequest(image_url="mem://a", metadata=metadata)], tenant=ACME
            )
        assert (refused.value.status, refused.value.code) == (400, "metadata_invalid")
    for url in ("https://a.example/x\r\nERROR forged", "mem://a\x00b", "mem://a\x85b"):
        with pytest.raises(JobRejected) as refused:
            world.submitter.submit([SubmitRequest(image_url=url)], tenant=ACME)
        assert (refused.value.status, refused.value.code) == (400, "bad_reference")
    assert world.store.jobs == {}
