"""The use cases over the in-memory twins of the ports: no servers, real decisions.

The bundled test model scores (a real forward pass); the job store, review queue, audit sink,
publisher, callback sender and image source are the twins of :mod:`moderation.adapters.memory`.
These pin down the rules of :mod:`moderation.pipeline`: validation before anything is stored,
idempotency, the order of side effects (audit, then result, then review and callback), that every
ending is audited, retries, dead letters, human decisions and the lost-message sweep.
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
    MemoryJobStore,
    MemoryPublisher,
    MemoryReviewQueue,
    MemorySource,
)
from moderation.core.decision import Decision
from moderation.core.image_ref import ImageRef
from moderation.core.jobs import Job, JobResult, JobStatus
from moderation.core.review import HumanDecision, ReviewDecision
from moderation.exceptions import (
    AuditSinkUnavailable,
    ImageFetchTransient,
    JobNotFoundError,
    JobRejected,
    QueueUnavailable,
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


def png(band: str, seed: int) -> bytes:
    return encoded(testmodel.sample_images(band, 1, seed)[0][0])


def _no_callback_check(url: str) -> None:
    if not url.startswith("https://"):
        from moderation.exceptions import UrlRefusedError

        raise UrlRefusedError(f"{url}: not https")


@dataclass
class World:
    store: MemoryJobStore
    publisher: MemoryPublisher
    callbacks: MemoryCallbacks
    audit: MemoryAuditSink
    review: MemoryReviewQueue
    images: MemorySource
    submitter: Submitter
    outcomes: Outcomes
    processor: Processor
    queue: QueueSettings

    def submit(self, **kw: Any) -> str:
        return self.submitter.submit([SubmitRequest(**kw)])[0].id

    def run(self, job_id: str, retries: int = 0) -> str:
        return self.processor.process(job_id, retries=retries).outcome

    def result(self, job_id: str) -> JobResult:
        result = self.store.get_result(job_id)
        assert result is not None
        return result


@pytest.fixture
def world(scoring: Any) -> Iterator[World]:
    queue = QueueSettings(
        max_retries=2, max_deliveries=3, max_inline_bytes=200_000, max_batch_jobs=10
    )
    store = MemoryJobStore()
    publisher = MemoryPublisher()
    callbacks = MemoryCallbacks()
    audit = MemoryAuditSink()
    review = MemoryReviewQueue()
    images = MemorySource()
    sources = ImageSources([images, InlineSource(store)])
    policies = scoring.policies
    submitter = Submitter(
        store=store,
        publisher=publisher,
        sources=sources,
        catalog=PolicyCatalog(store, lambda: set(policies.current.by_id)),
        settings=queue,
        check_callback_url=_no_callback_check,
    )
    outcomes = Outcomes(
        store,
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
        sources=sources,
        moderator=scoring.moderator,
        batcher=batcher,
        outcomes=outcomes,
        settings=queue,
    )
    yield World(
        store, publisher, callbacks, audit, review, images, submitter, outcomes, processor, queue
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
    for bad, status, code in cases:
        with pytest.raises(JobRejected) as info:
            world.submitter.submit([good, good, bad])
        assert (info.value.status, info.value.code, info.value.index) == (status, code, 2)
        assert "jobs[2]" in str(info.value)
    with pytest.raises(JobRejected) as too_many:
        world.submitter.submit([good] * 11)
    assert too_many.value.code == "batch_too_large"
    assert world.store.jobs == {} and world.publisher.published == []


def test_submit_is_idempotent_by_id_and_rolls_back_when_the_broker_refuses(world: World) -> None:
    first = world.submitter.submit([SubmitRequest(image_url="mem://a", id="up-1")])[0]
    again = world.submitter.submit([SubmitRequest(image_url="mem://b", id="up-1")])[0]
    assert (first.duplicate, again.duplicate) == (False, True)
    assert world.publisher.published == ["up-1"]
    assert world.store.jobs["up-1"].image == ImageRef(uri="mem://a")
    world.publisher.fail = QueueUnavailable("broker down")
    with pytest.raises(QueueUnavailable):
        world.submit(image_bytes=png("allow", 2), id="up-2")
    assert "up-2" not in world.store.jobs and "up-2" not in world.store.inline


def test_inline_bytes_are_just_another_source(world: World) -> None:
    job_id = world.submit(image_bytes=png("block", 3))
    assert world.store.jobs[job_id].image == ImageRef.for_inline(job_id)
    assert world.run(job_id) == "verdict"
    assert world.result(job_id).verdict.decision is Decision.BLOCK  # type: ignore[union-attr]
    assert job_id not in world.store.inline  # decided (not REVIEW): the bytes are dropped


# --- process -----------------------------------------------------------------------------------


def test_verdicts_are_real_and_side_effects_follow_the_audit_record_and_the_result(
    world: World,
) -> None:
    ref = world.images.put("borderline.png", png("review", 31))
    order: list[str] = []
    finish, write, send = world.store.finish, world.audit.write, world.callbacks.send
    world.store.finish = lambda r: order.append("result") or finish(r)  # type: ignore[method-assign]
    world.audit.write = lambda r: order.append("audit") or write(r)  # type: ignore[method-assign]
    world.callbacks.send = lambda *a: order.append("callback") or send(*a)  # type: ignore[method-assign]
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

    def broken(*args: Any) -> None:
        raise QueueUnavailable("broker down right after the result was written")

    world.callbacks.send = broken  # type: ignore[method-assign]
    with pytest.raises(QueueUnavailable):
        world.run(job_id)
    assert world.result(job_id).status is JobStatus.DONE and world.callbacks.sent == []
    world.callbacks.send = send  # type: ignore[method-assign]
    assert world.run(job_id) == "duplicate"
    assert [j for j, _, _ in world.callbacks.sent] == [job_id]
    assert world.store.effects_done(job_id)


def test_every_ending_is_audited_errors_too(world: World) -> None:
    corrupt = world.submit(image_bytes=png("allow", 6)[:40])
    missing = world.submit(image_url="mem://nowhere.png")
    for job_id, code in ((corrupt, "image_corrupt"), (missing, "not_found")):
        assert world.run(job_id) == "error"
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

        def check(self, ref: ImageRef) -> None:
            pass

        def fetch(self, ref: ImageRef) -> bytes:
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
    assert "gave up after 3 attempts" in error.message
    assert world.audit.records[-1].decision == "error"


def test_a_poison_message_is_dead_lettered_and_audited(world: World) -> None:
    job_id = world.submit(image_bytes=png("allow", 8))
    for _ in range(world.queue.max_deliveries):  # deliveries that died with the worker
        world.store.count_delivery(job_id)
    assert world.run(job_id) == "dead_letter"
    assert world.result(job_id).error.code == "poison_message"  # type: ignore[union-attr]
    assert [d.job_id for d in world.store.dead_letters()] == [job_id]
    assert world.audit.records[-1].reason_code == "poison_message"
    assert world.store.take_dead_letter(job_id) is not None
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
    assert sweep_lost(world.store, world.publisher, older_than_s=0.0) == ["lost-1"]
    assert world.publisher.published == [kept, "lost-1"]
    assert sweep_lost(world.store, world.publisher, older_than_s=0.0) == []  # lock held


def test_local_scoring_uses_the_same_path(world: World, scoring: Any) -> None:
    items = [("block", lambda: png("block", 9)), ("broken", lambda: b"not an image")]
    results = list(score_local(items, scoring.moderator, batch_size=1))
    assert results[0].verdict is not None and results[0].verdict.decision is Decision.BLOCK
    assert results[1].error is not None and results[1].error.code == "image_corrupt"
    job_id = world.submit(image_bytes=png("block", 9))
    world.run(job_id)
    queued = world.result(job_id).verdict
    assert queued is not None and queued.score == pytest.approx(results[0].verdict.score, abs=1e-4)
