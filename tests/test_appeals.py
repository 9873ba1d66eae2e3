"""Appeals over the in-memory twins: who may file, against what, when and how often; the appeal's
own queue barred to earlier deciders; what an overturn reverses (result, audit link, callback,
statement of reasons, review export) and the overturn rates."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from moderation.adapters.memory import (
    MemoryAppealStore,
    MemoryAuditSink,
    MemoryBlobStore,
    MemoryCallbacks,
    MemoryJobStore,
    MemoryReviewQueue,
)
from moderation.core.appeals import (
    AppealRules,
    AppealStatus,
    corrected_row,
    statement_after_appeal,
)
from moderation.core.audit import dsa_statement, record_for_verdict
from moderation.core.decision import Decision
from moderation.core.evidence import evidence_key
from moderation.core.image_ref import ImageRef
from moderation.core.jobs import Job, JobResult, scoped_id
from moderation.core.policy import Action
from moderation.core.review import (
    QUEUE_APPEAL,
    ReviewDecision,
    apply_decision,
    item_from_verdict,
    review_id_for,
)
from moderation.exceptions import (
    AppealNotFound,
    AppealRefused,
    JobNotFoundError,
    JobRejected,
    ReviewInvalidDecision,
)
from moderation.pipeline.appeals import Appeals, route_final
from moderation.pipeline.review_desk import ReviewDesk
from moderation.pipeline.review_evidence import ReviewEvidence
from tests.test_review_queue import make_verdict, world_policy

DAY = 86400.0
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC).timestamp()


@dataclass
class World:
    store: MemoryJobStore
    queue: MemoryReviewQueue
    appeals: Appeals
    desk: ReviewDesk
    audit: MemoryAuditSink
    callbacks: MemoryCallbacks
    blobs: MemoryBlobStore
    handed: list[object]
    clock: list[float]


def _world(*, max_per_decision: int = 1, window_s: float = 183 * DAY) -> World:
    store, queue = MemoryJobStore(), MemoryReviewQueue()
    audit, callbacks, blobs = MemoryAuditSink(), MemoryCallbacks(), MemoryBlobStore()
    clock = [NOW]
    policy = world_policy()
    appeals = Appeals(
        store=store,
        appeals=MemoryAppealStore(queue),
        review=queue,
        audit=audit,
        callbacks=callbacks,
        policies=lambda: {policy.id: policy},
        rules=lambda tenant: AppealRules(window_s=window_s, max_per_decision=max_per_decision),
        clock=lambda: clock[0],
    )
    handed: list[object] = []
    desk = ReviewDesk(
        queue,
        on_final=route_final(appeals, handed.append),
        evidence=ReviewEvidence(blobs, retention_s=30 * DAY, appeal_window_s=window_s),
        render_image=lambda data: data,
    )
    return World(store, queue, appeals, desk, audit, callbacks, blobs, handed, clock)


def _blocked(w: World, job_id: str, *, tenant: str = "acme", keep: bool = True) -> str:
    """A job of ``tenant`` the model blocked (its scored bytes kept, as the worker keeps
    them); returns the scoped id."""
    policy = world_policy()
    scoped = scoped_id(tenant, job_id)
    data = f"image of {scoped}".encode()
    sha = hashlib.sha256(data).hexdigest()
    verdict = dataclasses.replace(
        make_verdict(policy, "restricted_logo", 0.9), decision=Decision.BLOCK, action=Action.REMOVE
    )
    job = Job(
        id=scoped,
        image=ImageRef(uri=f"s3://uploads/{job_id}.png"),
        tenant=tenant,
        callback_url="https://tenant.example/cb",
        created_at=datetime.fromtimestamp(NOW - 60, UTC),
    )
    w.store.create(job)
    w.store.finish(
        JobResult.ended(job, verdict=verdict, content_sha256=sha).model_copy(
            update={"finished_at": datetime.fromtimestamp(NOW - 60, UTC)}
        )
    )
    if keep:
        w.blobs.put(evidence_key(tenant, review_id_for(scoped), sha), data)
    return scoped


def _reviewed(w: World, job_id: str, reviewer: str, *, tenant: str = "acme") -> str:
    """A job of ``tenant`` sent to review and removed by ``reviewer``; returns the scoped id."""
    policy = world_policy()
    scoped = scoped_id(tenant, job_id)
    data = f"image of {scoped}".encode()
    sha = hashlib.sha256(data).hexdigest()
    verdict = make_verdict(policy, "restricted_logo", 0.5)
    job = Job(id=scoped, image=ImageRef(uri=f"s3://uploads/{job_id}.png"), tenant=tenant)
    w.store.create(job)
    w.store.finish(JobResult.ended(job, verdict=verdict, content_sha256=sha))
    key = evidence_key(tenant, review_id_for(scoped), sha)
    w.blobs.put(key, data)
    item = item_from_verdict(
        job_id=scoped,
        image=job.image,
        verdict=verdict,
        policy=policy,
        content_sha256=sha,
        evidence_key=key,
    )
    w.queue.submit(item)
    claim = w.desk.claim(reviewer)
    assert claim is not None and claim.item.job_id == scoped
    done = w.desk.decide(
        reviewer,
        review_id=claim.item.review_id,
        token=claim.lease.token,
        decision=ReviewDecision.REMOVE,
        reason_code=claim.item.reason_codes[0],
    )
    assert done.final is not None
    w.store.set_human(scoped, done.final)  # what on_final does for a first review
    return scoped


def _decide_appeal(w: World, reviewer: str, decision: ReviewDecision, code: str) -> None:
    claim = w.desk.claim(reviewer, queues=(QUEUE_APPEAL,))
    assert claim is not None and claim.item.appeal is not None
    done = w.desk.decide(
        reviewer,
        review_id=claim.item.review_id,
        token=claim.lease.token,
        decision=decision,
        reason_code=code,
    )
    assert done.final is not None and done.delivered


def test_an_overturned_block_is_reinstated_audited_linked_called_back_and_relabelled() -> None:
    w = _world()
    scoped = _blocked(w, "up-1")
    appeal = w.appeals.file("up-1", tenant="acme", statement="It is my own logo.")
    assert appeal.job_id == "up-1" and appeal.status is AppealStatus.OPEN
    assert appeal.appealed_kind == "automated" and appeal.appealed_decision == "block"
    # Not a first review: the default queue never offers an appeal.
    assert w.desk.claim("rv_x") is None
    claim = w.desk.claim("rv_x", queues=(QUEUE_APPEAL,))
    assert claim is not None and claim.item.appeal is not None
    assert claim.item.appeal.statement == "It is my own logo."
    assert claim.item.appeal.earlier == []
    # The reviewer sees the scored bytes (kept for the blocked image).
    assert w.desk.image("rv_x", claim.item.review_id) == f"image of {scoped}".encode()
    with pytest.raises(ReviewInvalidDecision):  # an appeal is upheld or overturned
        w.desk.decide(
            "rv_x",
            review_id=claim.item.review_id,
            token=claim.lease.token,
            decision=ReviewDecision.ALLOW,
            reason_code=None,
        )
    w.desk.decide(
        "rv_x",
        review_id=claim.item.review_id,
        token=claim.lease.token,
        decision=ReviewDecision.OVERTURN,
        reason_code="APPEAL_MODEL_ERROR",
    )
    result = w.store.get_result(scoped)
    assert result is not None and result.decision is Decision.ALLOW
    assert result.human is not None and result.human.decision is ReviewDecision.OVERTURN
    stored = w.appeals.get(appeal.appeal_id, tenant="acme")
    assert stored.status is AppealStatus.OVERTURNED and stored.reason_code == "APPEAL_MODEL_ERROR"
    assert stored.decided_by == "rv_x"
    # The audit record links to the automated decision's record.
    [record] = w.audit.records
    original = record_for_verdict(
        job_id=scoped,
        verdict=result.verdict,
        content_sha256=None,
        content_ref=None,  # type: ignore[arg-type]
    )
    assert record.decision == "overturn" and record.details["appeal_of"] == original.record_id
    assert record.tenant == "acme" and record.actor == "rv_x"
    # The tenant is told, with its own ids.
    [(job_id, url, body)] = w.callbacks.sent
    sent = json.loads(body)
    assert (job_id, url) == ("up-1", "https://tenant.example/cb")
    assert sent["event"] == "job.appeal_decided" and sent["appeal"]["status"] == "overturned"
    assert sent["result"]["job_id"] == "up-1" and sent["result"]["human"]["decision"] == "overturn"
    # The statement of reasons of the block says it was reversed.
    statement = dsa_statement(original)
    assert statement is not None
    updated = statement_after_appeal(statement, record)
    assert "overturned on appeal" in updated["decision_facts"]
    assert "APPEAL_MODEL_ERROR" in updated["decision_facts"]
    # The export labels it allow (the appeal's own row: no human review before).
    [row] = list(w.queue.export())
    assert row["job_id"] == scoped and row["human_label"] == "allow"
    assert row["appeal_outcome"] == "overturn"


def test_an_appeal_goes_to_a_different_reviewer_and_corrects_the_removal_in_the_export() -> None:
    w = _world()
    scoped = _reviewed(w, "up-2", "rv_first")
    appeal = w.appeals.file("up-2", tenant="acme", statement="This is satire.")
    assert appeal.appealed_kind == "human" and appeal.appealed_decision == "remove"
    # The reviewer who removed it is never offered its appeal...
    assert w.desk.claim("rv_first", queues=(QUEUE_APPEAL,)) is None
    claim = w.desk.claim("rv_other", queues=(QUEUE_APPEAL,))
    assert claim is not None and claim.item.appeal is not None
    assert [d.reviewers for d in claim.item.appeal.earlier] == [["rv_first"]]
    assert claim.item.barred == ["rv_first"]
    # ...nor may decide it: the rule is applied where decisions are, not only at claim.
    with pytest.raises(ReviewInvalidDecision) as barred:
        apply_decision(
            claim.item,
            None,
            reviewer="rv_first",
            decision=ReviewDecision.OVERTURN,
            reason_code="APPEAL_CONTEXT",
            token="t",
            now=NOW,
        )
    assert barred.value.code == "review_reviewer_barred"
    w.desk.decide(
        "rv_other",
        review_id=claim.item.review_id,
        token=claim.lease.token,
        decision=ReviewDecision.OVERTURN,
        reason_code="APPEAL_CONTEXT",
    )
    rows = list(w.queue.export())
    assert len(rows) == 1  # one row per job: the review's, corrected
    [row] = rows
    assert row["review_id"] == review_id_for(scoped)
    assert row["human_label"] == "allow" and row["original_human_label"] == "remove"
    assert row["appeal_outcome"] == "overturn" and row["appeal_reason_code"] == "APPEAL_CONTEXT"


def test_an_upheld_appeal_keeps_the_block_and_the_label() -> None:
    w = _world()
    scoped = _reviewed(w, "up-3", "rv_first")
    w.appeals.file("up-3", tenant="acme", statement="Please look again.")
    _decide_appeal(w, "rv_second", ReviewDecision.UPHOLD, "APPEAL_VIOLATION_CONFIRMED")
    result = w.store.get_result(scoped)
    assert result is not None and result.decision is Decision.BLOCK
    [row] = list(w.queue.export())
    assert row["human_label"] == "remove" and row["appeal_outcome"] == "uphold"
    assert "original_human_label" not in row
    [appeal] = w.appeals.for_job("up-3", tenant="acme")
    assert appeal.status is AppealStatus.UPHELD


def test_filing_rules_nothing_to_appeal_window_once_statement() -> None:
    w = _world()
    # A job that was allowed restricts nothing.
    policy = world_policy()
    allowed = Job(id=scoped_id("acme", "ok-1"), image=ImageRef(uri="s3://u/ok.png"), tenant="acme")
    w.store.create(allowed)
    verdict = dataclasses.replace(
        make_verdict(policy, "restricted_logo", 0.1), decision=Decision.ALLOW, action=Action.NONE
    )
    w.store.finish(JobResult.ended(allowed, verdict=verdict))
    with pytest.raises(AppealRefused) as refused:
        w.appeals.file("ok-1", tenant="acme", statement="why")
    assert refused.value.code == "appeal_not_allowed" and refused.value.status == 409
    _blocked(w, "b-1")
    for bad in ("", "   ", "x" * 5001):
        with pytest.raises(JobRejected) as rejected:
            w.appeals.file("b-1", tenant="acme", statement=bad)
        assert rejected.value.code == "appeal_statement" and rejected.value.status == 422
    first = w.appeals.file("b-1", tenant="acme", statement="mine")
    # The same filing again is the same appeal (a retry); another one is refused.
    assert w.appeals.file("b-1", tenant="acme", statement="mine") == first
    with pytest.raises(AppealRefused) as refused:
        w.appeals.file("b-1", tenant="acme", statement="another try")
    assert refused.value.code == "appeal_limit_reached"
    # Past the window: refused.
    _blocked(w, "b-2")
    w.clock[0] = NOW + 184 * DAY
    with pytest.raises(AppealRefused) as refused:
        w.appeals.file("b-2", tenant="acme", statement="late")
    assert refused.value.code == "appeal_window_closed"


def test_a_second_appeal_where_allowed_is_barred_to_every_earlier_decider() -> None:
    w = _world(max_per_decision=2)
    _reviewed(w, "up-4", "rv_first")
    w.appeals.file("up-4", tenant="acme", statement="first appeal")
    _decide_appeal(w, "rv_second", ReviewDecision.UPHOLD, "APPEAL_INSUFFICIENT_GROUNDS")
    second = w.appeals.file("up-4", tenant="acme", statement="second appeal")
    assert second.number == 2 and second.appealed_decision == "uphold"
    assert w.desk.claim("rv_first", queues=(QUEUE_APPEAL,)) is None
    assert w.desk.claim("rv_second", queues=(QUEUE_APPEAL,)) is None
    claim = w.desk.claim("rv_third", queues=(QUEUE_APPEAL,))
    assert claim is not None and claim.item.barred == ["rv_first", "rv_second"]


def test_tenants_cannot_appeal_or_read_each_others_jobs_and_appeals() -> None:
    w = _world()
    _blocked(w, "shared-id", tenant="acme")
    _blocked(w, "shared-id-b", tenant="beta")
    appeal = w.appeals.file("shared-id", tenant="acme", statement="mine")
    with pytest.raises(JobNotFoundError):  # 404, as for an unknown job
        w.appeals.file("shared-id", tenant="beta", statement="not mine")
    with pytest.raises(AppealNotFound):
        w.appeals.get(appeal.appeal_id, tenant="beta")
    with pytest.raises(JobNotFoundError):
        w.appeals.for_job("shared-id", tenant="beta")
    assert w.appeals.get(appeal.appeal_id, tenant="acme").appeal_id == appeal.appeal_id


def test_an_overturn_needs_the_scored_bytes_and_an_appeal_reason_code() -> None:
    w = _world()
    _blocked(w, "gone", keep=False)
    w.appeals.file("gone", tenant="acme", statement="look")
    claim = w.desk.claim("rv_x", queues=(QUEUE_APPEAL,))
    assert claim is not None
    with pytest.raises(ReviewInvalidDecision) as refused:
        w.desk.decide(
            "rv_x",
            review_id=claim.item.review_id,
            token=claim.lease.token,
            decision=ReviewDecision.OVERTURN,
            reason_code="APPEAL_MODEL_ERROR",
        )
    assert refused.value.code == "review_evidence_unavailable"
    with pytest.raises(ReviewInvalidDecision):
        w.desk.decide(
            "rv_x",
            review_id=claim.item.review_id,
            token=claim.lease.token,
            decision=ReviewDecision.UPHOLD,
            reason_code="NOT_A_CODE",
        )
    done = w.desk.decide(
        "rv_x",
        review_id=claim.item.review_id,
        token=claim.lease.token,
        decision=ReviewDecision.UPHOLD,
        reason_code="APPEAL_VIOLATION_CONFIRMED",
    )
    assert done.final is not None and done.final.decision is ReviewDecision.UPHOLD


def test_first_reviews_are_never_upheld_or_overturned() -> None:
    w = _world()
    _blocked(w, "x")  # (no review item)
    policy = world_policy()
    item = item_from_verdict(
        job_id="plain",
        image=ImageRef(uri="s3://u/p.png"),
        verdict=make_verdict(policy, "restricted_logo", 0.5),
        policy=policy,
    )
    w.queue.submit(item)
    claim = w.desk.claim("rv_x")
    assert claim is not None
    with pytest.raises(ReviewInvalidDecision):
        w.queue.decide(
            claim.item.review_id,
            reviewer="rv_x",
            token=claim.lease.token,
            decision=ReviewDecision.OVERTURN,
            reason_code="APPEAL_MODEL_ERROR",
        )


def test_overturn_rates_per_category_and_policy_version() -> None:
    w = _world()
    for n, outcome in enumerate(
        [ReviewDecision.OVERTURN, ReviewDecision.OVERTURN, ReviewDecision.UPHOLD]
    ):
        _blocked(w, f"r-{n}")
        w.appeals.file(f"r-{n}", tenant="acme", statement="again")
        _decide_appeal(
            w,
            "rv_x",
            outcome,
            "APPEAL_MODEL_ERROR" if outcome is ReviewDecision.OVERTURN else "APPEAL_CONTEXT",
        )
    _blocked(w, "open")
    w.appeals.file("open", tenant="acme", statement="still open")
    rates = w.appeals.overturn_rates()
    policy = world_policy()
    [by_category] = rates["category"]
    assert by_category.key == f"{policy.id}/restricted_logo"
    assert (by_category.decided, by_category.overturned) == (3, 2)
    assert by_category.rate == pytest.approx(2 / 3)
    [by_version] = rates["policy_version"]
    assert by_version.key == f"{policy.id}@v{policy.version}" and by_version.decided == 3
    assert w.appeals.backlog()[0] == 1


def test_first_review_decisions_still_reach_their_own_hand_on() -> None:
    w = _world()
    _reviewed(w, "plain-2", "rv_a")
    assert len(w.handed) == 1  # the first review's final decision went to on_final


def test_corrected_row_leaves_unappealed_rows_alone() -> None:
    row = {"human_label": "remove"}
    assert corrected_row(row, None, None) is row


def test_evidence_of_decided_items_outlives_the_appeal_window() -> None:
    blobs = MemoryBlobStore()
    evidence = ReviewEvidence(blobs, retention_s=30 * DAY, appeal_window_s=183 * DAY)
    decided = datetime(2026, 1, 1, tzinfo=UTC)
    evidence.retire_key("review-evidence/default/rev_x/" + "a" * 64, decided)
    blobs.put("review-evidence/default/rev_x/" + "a" * 64, b"bytes")
    assert evidence.sweep(decided + timedelta(days=100)) == 0
    assert evidence.sweep(decided + timedelta(days=185)) == 1
