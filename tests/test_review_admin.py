"""A review admin's actions (issue 21): requeue, release, reassign, redeliver, each audited.
The queue's two primitives behind them (``leases``, ``assign``) on PostgreSQL, Redis (a real
valkey server) and the twin; the use case over the twin."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from moderation.adapters.memory import (
    MemoryAuditSink,
    MemoryBlobStore,
    MemoryReviewerStore,
    MemoryReviewQueue,
)
from moderation.core.review import ESCALATION_QUEUE, HumanDecision, ReviewDecision, pseudonym
from moderation.core.review_admin import AdminAction
from moderation.core.reviewers import ReviewerAccount, Role
from moderation.exceptions import (
    ReviewAlreadyDecided,
    ReviewError,
    ReviewNotFound,
    ReviewTakenBack,
)
from moderation.pipeline.review_admin import ReviewAdmin
from moderation.pipeline.review_desk import ReviewDesk
from moderation.pipeline.review_evidence import ReviewEvidence
from moderation.ports import ReviewQueue
from tests.test_review_queue import make_item, make_queue, with_evidence, world_policy


@pytest.fixture(params=["postgres", "redis", "memory"])
def queue(request: pytest.FixtureRequest) -> Iterator[ReviewQueue]:
    with make_queue(request.param, request, lease_s=60) as queue:
        yield queue


def test_leases_list_who_holds_what(queue: ReviewQueue) -> None:
    policy = world_policy()
    for job in ("job-l1", "job-l2", "job-l3"):
        queue.submit(make_item(policy, job))
    a = queue.claim("rv_a")
    b = queue.claim("rv_b")
    assert a is not None and b is not None
    held = {lease.review_id: lease.reviewer for lease in queue.leases()}
    assert held == {a.item.review_id: "rv_a", b.item.review_id: "rv_b"}
    queue.release(a.item.review_id)
    assert [lease.reviewer for lease in queue.leases()] == ["rv_b"]


def test_assign_takes_an_item_back_and_leases_it_to_the_named_reviewer(queue: ReviewQueue) -> None:
    queue.submit(make_item(world_policy(), "job-as"))
    held = queue.claim("rv_a")
    assert held is not None
    rid = held.item.review_id
    lease = queue.assign(rid, reviewer="rv_b", queues=["review"])
    assert lease.reviewer == "rv_b" and queue.holds("rv_b", rid) and not queue.holds("rv_a", rid)
    # the former holder is told an admin took it, and cannot decide
    with pytest.raises(ReviewTakenBack):
        queue.decide(
            rid,
            reviewer="rv_a",
            token=held.lease.token,
            decision=ReviewDecision.ALLOW,
            reason_code=None,
        )
    # assigning again to the same reviewer changes nothing; rv_b gets it from claim too
    assert queue.assign(rid, reviewer="rv_b", queues=["review"]).token == lease.token
    again = queue.claim("rv_b")
    assert again is not None and again.lease.token == lease.token
    queue.decide(
        rid, reviewer="rv_b", token=lease.token, decision=ReviewDecision.ALLOW, reason_code=None
    )
    with pytest.raises(ReviewAlreadyDecided):
        queue.assign(rid, reviewer="rv_c", queues=["review"])
    with pytest.raises(ReviewNotFound):
        queue.assign("nope", reviewer="rv_c", queues=["review"])


def test_assign_keeps_the_claim_rules(queue: ReviewQueue) -> None:
    policy = world_policy()
    ids = {make_item(policy, job).review_id for job in ("job-r1", "job-r2")}
    for job in ("job-r1", "job-r2"):
        queue.submit(make_item(policy, job))
    busy = queue.claim("rv_busy")
    assert busy is not None
    [other] = ids - {busy.item.review_id}
    with pytest.raises(ReviewError) as caught:
        queue.assign(other, reviewer="rv_busy", queues=["review"])
    assert caught.value.code == "review_assign_busy"
    with pytest.raises(ReviewError) as caught:
        queue.assign(other, reviewer="rv_x", queues=[ESCALATION_QUEUE])
    assert caught.value.code == "review_assign_refused"
    assert not queue.holds("rv_x", other)
    # the first reviewer of a critical removal is never its second
    crit = make_item(policy, "job-r3", category_id="contraband_symbol")
    queue.submit(crit)
    claim = queue.claim("rv_first")  # critical items come first
    assert claim is not None and claim.item.review_id == crit.review_id
    queue.decide(
        crit.review_id,
        reviewer="rv_first",
        token=claim.lease.token,
        decision=ReviewDecision.REMOVE,
        reason_code="TW_CONTRABAND",
    )
    with pytest.raises(ReviewError) as caught:
        queue.assign(crit.review_id, reviewer="rv_first", queues=["review"])
    assert caught.value.code == "review_assign_refused"
    second = queue.assign(crit.review_id, reviewer="rv_second", queues=["review"])
    assert second.reviewer == "rv_second"
    # a disagreeing second review goes to the escalation queue: neither of the two who
    # disagreed may be given it there, a third reviewer may
    queue.decide(
        crit.review_id,
        reviewer="rv_second",
        token=second.token,
        decision=ReviewDecision.ALLOW,
        reason_code=None,
    )
    for decided in ("rv_first", "rv_second"):
        with pytest.raises(ReviewError) as caught:
            queue.assign(crit.review_id, reviewer=decided, queues=[ESCALATION_QUEUE])
        assert caught.value.code == "review_assign_refused"
        assert not queue.holds(decided, crit.review_id)
    third = queue.assign(crit.review_id, reviewer="rv_senior", queues=[ESCALATION_QUEUE])
    assert third.reviewer == "rv_senior"


SECRET = "admin-test-secret"


def _admin() -> tuple[ReviewAdmin, MemoryReviewQueue, MemoryAuditSink, list[HumanDecision]]:
    queue = MemoryReviewQueue(lease_s=60)
    blobs = MemoryBlobStore()
    finals: list[HumanDecision] = []
    desk = ReviewDesk(
        queue,
        on_final=finals.append,
        evidence=ReviewEvidence(blobs, retention_s=3600),
        render_image=lambda data: data,
    )
    users = MemoryReviewerStore()
    for name, role, disabled in (
        ("alice", Role.REVIEWER, False),
        ("bob", Role.REVIEWER, False),
        ("gone", Role.REVIEWER, True),
    ):
        users.create(
            ReviewerAccount(
                username=name, role=role, password_hash="x", disabled=disabled, created_at=0.0
            )
        )
    audit = MemoryAuditSink()
    admin = ReviewAdmin(desk, users=users, pseudonym=lambda n: pseudonym(SECRET, n), audit=audit)
    policy = world_policy()
    for job in ("job-1", "job-2", "job-3"):
        queue.submit(with_evidence(make_item(policy, job), job.encode(), blobs))
    return admin, queue, audit, finals


def test_each_admin_action_is_audited_with_who_and_what() -> None:
    admin, queue, audit, _ = _admin()
    alice, bob = pseudonym(SECRET, "alice"), pseudonym(SECRET, "bob")
    held = queue.claim(alice)
    assert held is not None
    rid = held.item.review_id
    [row] = admin.in_review()
    assert (row.review_id, row.reviewer, row.job_id) == (rid, alice, held.item.job_id)

    assert admin.reassign(rid, to="Bob", by="rv_root") == bob
    assert queue.holds(bob, rid)
    assert admin.requeue(rid, by="rv_root") is True
    assert admin.requeue(rid, by="rv_root") is False  # nobody held it: still recorded
    assert queue.claim(alice) is not None
    assert admin.release(alice, by="rv_root") != []
    with pytest.raises(ReviewError) as caught:
        admin.release(alice, by="rv_root")
    assert caught.value.code == "review_nothing_held"
    assert admin.redeliver(by="rv_root") == (0, 0)

    records = audit.records
    assert [r.decision for r in records] == [
        AdminAction.REASSIGN.value,
        AdminAction.REQUEUE.value,
        AdminAction.REQUEUE.value,
        AdminAction.RELEASE.value,
        AdminAction.REDELIVER.value,
    ]
    assert {r.kind for r in records} == {"admin"} and {r.actor for r in records} == {"rv_root"}
    assert records[0].details == {"review_id": rid, "from": alice, "to": bob}
    assert records[0].job_id == held.item.job_id and records[0].policy_id == "testworld"
    assert records[1].details == {"review_id": rid, "from": bob, "taken_back": True}
    assert records[2].details["taken_back"] is False
    assert records[3].details["from"] == alice
    assert records[4].job_id == "review/outbox" and records[4].details == {
        "waiting": 0,
        "delivered": 0,
    }


def test_reassign_refuses_unknown_or_disabled_accounts_and_records_nothing() -> None:
    admin, queue, audit, _ = _admin()
    rid = queue.claim("rv_x")
    assert rid is not None
    for name in ("nobody", "gone"):
        with pytest.raises(ReviewNotFound) as caught:
            admin.reassign(rid.item.review_id, to=name, by="rv_root")
        assert caught.value.code == "review_unknown_user"
    with pytest.raises(ReviewNotFound):
        admin.requeue("no-such-item", by="rv_root")
    assert audit.records == []


def test_redeliver_hands_on_what_waited_in_the_outbox() -> None:
    admin, queue, audit, finals = _admin()
    claim = queue.claim("rv_a")
    assert claim is not None
    queue.decide(
        claim.item.review_id,
        reviewer="rv_a",
        token=claim.lease.token,
        decision=ReviewDecision.ALLOW,
        reason_code=None,
        seen_sha256="x",
    )
    assert admin.redeliver(by="rv_root", older_than_s=0.0) == (1, 1)
    assert [f.review_id for f in finals] == [claim.item.review_id]
    assert audit.records[-1].details == {"waiting": 1, "delivered": 1}
