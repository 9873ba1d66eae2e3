"""Appeals on a real PostgreSQL: the appeal store and the appeals' own review queue, the export's
corrected labels, and 20 reviewers claiming appeals and first reviews at once (no item claimed
twice, no reviewer deciding an appeal of its own decision)."""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from psycopg_pool import ConnectionPool

from moderation.adapters.memory import (
    MemoryAuditSink,
    MemoryBlobStore,
    MemoryCallbacks,
    MemoryJobTransients,
)
from moderation.adapters.postgres.appeals import PostgresAppealStore
from moderation.adapters.postgres.jobs import PostgresJobStore
from moderation.adapters.postgres.review import PostgresReviewQueue
from moderation.core.appeals import AppealRules, AppealStatus
from moderation.core.decision import Decision
from moderation.core.evidence import evidence_key
from moderation.core.image_ref import ImageRef
from moderation.core.jobs import Job, JobResult, scoped_id
from moderation.core.policy import Action
from moderation.core.review import (
    QUEUE_APPEAL,
    QUEUE_REVIEW,
    HumanDecision,
    ReviewDecision,
    item_from_verdict,
    review_id_for,
)
from moderation.exceptions import AppealNotFound, AppealRefused, JobNotFoundError
from moderation.pipeline.appeals import Appeals, route_final
from moderation.pipeline.review_desk import ReviewDesk
from moderation.pipeline.review_evidence import ReviewEvidence
from tests.test_review_queue import make_verdict, world_policy

pytestmark = pytest.mark.xdist_group("postgres")


@dataclass
class Site:
    pool: ConnectionPool
    store: PostgresJobStore
    queue: PostgresReviewQueue
    appeal_store: PostgresAppealStore
    appeals: Appeals
    desk: ReviewDesk
    blobs: MemoryBlobStore
    audit: MemoryAuditSink
    callbacks: MemoryCallbacks


@pytest.fixture
def site(pg_url: str) -> Iterator[Site]:
    pool = ConnectionPool(pg_url, min_size=1, max_size=24, open=True)
    with pool.connection() as conn:
        conn.execute(
            "TRUNCATE review_items, review_policies, review_leases, review_decisions,"
            " review_outbox, appeals CASCADE"
        )
    store = PostgresJobStore(pool, MemoryJobTransients(max_queued_bytes=1 << 24))
    queue = PostgresReviewQueue(pool, lease_s=60, age_doubling_s=900)
    appeal_store = PostgresAppealStore(pool, age_doubling_s=900)
    audit, callbacks, blobs = MemoryAuditSink(), MemoryCallbacks(), MemoryBlobStore()
    policy = world_policy()
    appeals = Appeals(
        store=store,
        appeals=appeal_store,
        review=queue,
        audit=audit,
        callbacks=callbacks,
        policies=lambda: {policy.id: policy},
        rules=lambda tenant: AppealRules(window_s=183 * 86400.0),
    )

    def first_review(decision: HumanDecision) -> None:
        store.set_human(decision.job_id, decision)

    desk = ReviewDesk(
        queue,
        on_final=route_final(appeals, first_review),
        evidence=ReviewEvidence(blobs, retention_s=86400, appeal_window_s=183 * 86400.0),
        render_image=lambda data: data,
    )
    try:
        yield Site(pool, store, queue, appeal_store, appeals, desk, blobs, audit, callbacks)
    finally:
        pool.close()


def _job(site: Site, tenant: str, job_id: str, decision: Decision) -> tuple[Job, str]:
    """A job of ``tenant`` that ended with ``decision`` (REVIEW: queued for review), its
    scored bytes kept; returns the job and the key of its bytes."""
    policy = world_policy()
    scoped = scoped_id(tenant, job_id)
    data = f"bytes of {scoped}".encode()
    sha = hashlib.sha256(data).hexdigest()
    verdict = make_verdict(policy, "restricted_logo", 0.9 if decision is Decision.BLOCK else 0.5)
    if decision is Decision.BLOCK:
        verdict = dataclasses.replace(verdict, decision=Decision.BLOCK, action=Action.REMOVE)
    job = Job(
        id=scoped,
        image=ImageRef(uri=f"s3://uploads/{job_id}.png"),
        tenant=tenant,
        callback_url="https://tenant.example/cb",
    )
    site.store.create(job)
    site.store.finish(JobResult.ended(job, verdict=verdict, content_sha256=sha))
    key = evidence_key(tenant, review_id_for(scoped), sha)
    site.blobs.put(key, data)
    if decision is Decision.REVIEW:
        site.queue.submit(
            item_from_verdict(
                job_id=scoped,
                image=job.image,
                verdict=verdict,
                policy=policy,
                content_sha256=sha,
                evidence_key=key,
            )
        )
    return job, key


def test_an_appeal_on_postgres_from_filing_to_the_corrected_export(site: Site) -> None:
    _job(site, "acme", "blocked-1", Decision.BLOCK)
    _job(site, "acme", "reviewed-1", Decision.REVIEW)
    first = site.desk.claim("rv_first")
    assert first is not None
    site.desk.decide(
        "rv_first",
        review_id=first.item.review_id,
        token=first.lease.token,
        decision=ReviewDecision.REMOVE,
        reason_code=first.item.reason_codes[0],
    )
    blocked = site.appeals.file("blocked-1", tenant="acme", statement="my logo")
    reviewed = site.appeals.file("reviewed-1", tenant="acme", statement="satire")
    # The same filing again: the same appeal; a different one: refused (once per decision).
    assert site.appeals.file("blocked-1", tenant="acme", statement="my logo") == blocked
    with pytest.raises(AppealRefused):
        site.appeals.file("blocked-1", tenant="acme", statement="again")
    # Appeals wait in their own queue; first reviews are not mixed in.
    assert site.desk.claim("rv_first", queues=(QUEUE_REVIEW,)) is None
    by_queue = {s.queue: s.waiting for s in site.queue.stats()}
    assert by_queue == {"review": 0, "appeal": 2}
    assert site.appeals.backlog()[0] == 2
    # rv_first removed reviewed-1: it gets only the other appeal.
    taken = site.desk.claim("rv_first", queues=(QUEUE_APPEAL,))
    assert taken is not None and taken.item.review_id == blocked.appeal_id
    site.desk.decide(
        "rv_first",
        review_id=taken.item.review_id,
        token=taken.lease.token,
        decision=ReviewDecision.OVERTURN,
        reason_code="APPEAL_MODEL_ERROR",
    )
    assert site.desk.claim("rv_first", queues=(QUEUE_APPEAL,)) is None
    other = site.desk.claim("rv_other", queues=(QUEUE_APPEAL,))
    assert other is not None and other.item.review_id == reviewed.appeal_id
    assert other.item.barred == ["rv_first"]
    site.desk.decide(
        "rv_other",
        review_id=other.item.review_id,
        token=other.lease.token,
        decision=ReviewDecision.OVERTURN,
        reason_code="APPEAL_CONTEXT",
    )
    for job_id in ("blocked-1", "reviewed-1"):
        result = site.store.get_result(scoped_id("acme", job_id))
        assert result is not None and result.decision is Decision.ALLOW
    assert site.appeal_store.backlog() == (0, None)
    statuses = [a.status for a in site.appeal_store.decided()]
    assert statuses == [AppealStatus.OVERTURNED, AppealStatus.OVERTURNED]
    assert len(site.callbacks.sent) == 2 and len(site.audit.records) == 2
    rows = {row["job_id"]: row for row in site.queue.export()}
    assert set(rows) == {"acme/blocked-1", "acme/reviewed-1"}  # one row per job
    assert rows["acme/reviewed-1"]["review_id"] == review_id_for("acme/reviewed-1")
    assert rows["acme/reviewed-1"]["human_label"] == "allow"
    assert rows["acme/reviewed-1"]["original_human_label"] == "remove"
    assert rows["acme/blocked-1"]["human_label"] == "allow"
    assert rows["acme/blocked-1"]["appeal_reason_code"] == "APPEAL_MODEL_ERROR"


def test_twenty_reviewers_claim_appeals_and_first_reviews_at_once(site: Site) -> None:
    """Phase 1: 20 reviewers take 40 first reviews at once. Phase 2: each removal is appealed
    and 40 more first reviews arrive; the 20 reviewers take appeals and first reviews at once.
    No item is ever held by two reviewers, each is decided once, and no appeal is decided by a
    reviewer who decided the item before."""
    reviewers = [f"rv_{n:02d}" for n in range(20)]
    for n in range(40):
        _job(site, "acme", f"a{n}", Decision.REVIEW)
    claims: list[tuple[str, str, str]] = []  # (queue, review_id, reviewer)
    lock = threading.Lock()
    start = threading.Barrier(len(reviewers))
    errors: list[BaseException] = []

    def work(reviewer: str, queues: tuple[str, ...]) -> None:
        try:
            start.wait()
            idle = 0
            turn = reviewers.index(reviewer)
            while idle < len(queues):
                queue = queues[turn % len(queues)]
                turn += 1
                claim = site.desk.claim(reviewer, queues=(queue,))
                if claim is None:
                    idle += 1
                    continue
                idle = 0
                with lock:
                    claims.append((queue, claim.item.review_id, reviewer))
                appeal = claim.item.appeal is not None
                site.desk.decide(
                    reviewer,
                    review_id=claim.item.review_id,
                    token=claim.lease.token,
                    decision=ReviewDecision.OVERTURN if appeal else ReviewDecision.REMOVE,
                    reason_code="APPEAL_CONTEXT" if appeal else claim.item.reason_codes[0],
                )
        except BaseException as exc:
            errors.append(exc)

    def run(queues: tuple[str, ...]) -> None:
        threads = [threading.Thread(target=work, args=(r, queues)) for r in reviewers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []

    run((QUEUE_REVIEW,))
    first_by = {rid: who for _, rid, who in claims}
    assert len(claims) == len(first_by) == 40  # each claimed once
    for n in range(40):
        site.appeals.file(f"a{n}", tenant="acme", statement=f"appeal {n}")
    for n in range(40, 80):
        _job(site, "acme", f"a{n}", Decision.REVIEW)
    claims.clear()
    run((QUEUE_APPEAL, QUEUE_REVIEW))
    assert len(claims) == len({rid for _, rid, _ in claims}) == 80
    assert sum(q == QUEUE_APPEAL for q, _, _ in claims) == 40
    with site.pool.connection() as conn:
        decided = conn.execute(
            "SELECT review_id, count(*) FROM review_decisions GROUP BY review_id"
        ).fetchall()
        appealed = conn.execute(
            "SELECT appeal->>'job_id', appeal->>'decided_by', status FROM appeals"
        ).fetchall()
    assert len(decided) == 120 and {n for _, n in decided} == {1}
    assert len(appealed) == 40
    for job_id, decided_by, status in appealed:
        assert status == "overturned"
        assert decided_by != first_by[review_id_for(job_id)], job_id


def test_another_tenants_job_cannot_be_appealed_on_postgres(site: Site) -> None:
    _job(site, "acme", "mine", Decision.BLOCK)
    appeal = site.appeals.file("mine", tenant="acme", statement="mine")
    with pytest.raises(JobNotFoundError):
        site.appeals.file("mine", tenant="beta", statement="theirs")
    with pytest.raises(AppealNotFound):
        site.appeals.get(appeal.appeal_id, tenant="beta")
    assert site.appeal_store.count(scoped_id("acme", "mine")) == 1
