"""The reviewer's context (issue 21): earlier decisions on the same image, same tenant only
(over PostgreSQL's job records and the in-memory twin), and a second review that disagrees with
the first going to the escalation queue, where a third reviewer settles it with both decisions
in view and every reviewer's own decision in the audit records (two reviewers and a senior over
a real PostgreSQL)."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from psycopg_pool import ConnectionPool

from moderation.adapters.memory import (
    MemoryAuditSink,
    MemoryBlobStore,
    MemoryCallbacks,
    MemoryDeliveryLog,
    MemoryImageHistory,
    MemoryJobStore,
    MemoryJobTransients,
)
from moderation.adapters.postgres.image_history import PostgresImageHistory
from moderation.adapters.postgres.jobs import PostgresJobStore
from moderation.adapters.postgres.review import PostgresReviewQueue
from moderation.core.decision import Decision
from moderation.core.evidence import evidence_key
from moderation.core.image_ref import ImageRef
from moderation.core.jobs import Job, JobResult, scoped_id
from moderation.core.review import (
    ESCALATION_QUEUE,
    HumanDecision,
    ReviewDecision,
    item_from_verdict,
    review_id_for,
)
from moderation.exceptions import ReviewInvalidDecision
from moderation.pipeline.outcomes import Outcomes
from moderation.pipeline.review_context import same_image
from moderation.pipeline.review_desk import ReviewDesk
from moderation.pipeline.review_evidence import ReviewEvidence
from moderation.ports import ImageHistory, JobStore
from moderation.web.context_view import disagreement_view
from tests.test_review_queue import make_verdict, world_policy

pytestmark = pytest.mark.xdist_group("postgres")

CRITICAL = "contraband_symbol"
PDQ = "f" * 64


@dataclass
class Site:
    store: JobStore
    history: ImageHistory
    desk: ReviewDesk
    audit: MemoryAuditSink
    blobs: MemoryBlobStore


@contextmanager
def _site(kind: str, request: pytest.FixtureRequest) -> Iterator[Site]:
    audit, blobs = MemoryAuditSink(), MemoryBlobStore()
    pool: ConnectionPool | None = None
    if kind == "postgres":
        pool = ConnectionPool(request.getfixturevalue("pg_url"), min_size=1, max_size=8)
        with pool.connection() as conn:
            conn.execute(
                "TRUNCATE review_items, review_policies, review_leases, review_decisions,"
                " review_outbox CASCADE"
            )
        store: JobStore = PostgresJobStore(pool, MemoryJobTransients(max_queued_bytes=1 << 24))
        history: ImageHistory = PostgresImageHistory(pool)
        queue = PostgresReviewQueue(pool, lease_s=60, age_doubling_s=900)
        deliveries = MemoryDeliveryLog(MemoryJobStore())
    else:
        from moderation.adapters.memory import MemoryReviewQueue

        memory = MemoryJobStore()
        store, history = memory, MemoryImageHistory(memory)
        queue = MemoryReviewQueue(lease_s=60, age_doubling_s=900)  # type: ignore[assignment]
        deliveries = MemoryDeliveryLog(memory)
    outcomes = Outcomes(store, deliveries=deliveries, audit=audit, callbacks=MemoryCallbacks())
    desk = ReviewDesk(
        queue,
        on_final=outcomes.record_human_decision,
        evidence=ReviewEvidence(blobs, retention_s=86400),
        render_image=lambda data: data,
        image_history=history,
    )
    try:
        yield Site(store, history, desk, audit, blobs)
    finally:
        if pool is not None:
            pool.close()


@pytest.fixture(params=["postgres", "memory"])
def site(request: pytest.FixtureRequest) -> Iterator[Site]:
    with _site(request.param, request) as made:
        yield made


@pytest.fixture
def pg_site(request: pytest.FixtureRequest) -> Iterator[Site]:
    with _site("postgres", request) as made:
        yield made


def _job(
    site: Site,
    tenant: str,
    job_id: str,
    data: bytes,
    *,
    decision: Decision = Decision.REVIEW,
    category_id: str = "restricted_logo",
    at: datetime,
    pdq: str | None = None,
    queue: bool = False,
) -> Job:
    """A job of ``tenant`` on ``data`` that ended with ``decision``, created at ``at``; with
    ``queue``, its review item is queued (bytes kept as evidence)."""
    policy = world_policy()
    scoped = scoped_id(tenant, job_id)
    sha = hashlib.sha256(data).hexdigest()
    verdict = make_verdict(policy, category_id, 0.9 if decision is Decision.BLOCK else 0.5)
    if decision is not Decision.REVIEW:
        import dataclasses

        verdict = dataclasses.replace(verdict, decision=decision)
    job = Job(
        id=scoped, image=ImageRef(uri=f"s3://uploads/{job_id}.png"), tenant=tenant, created_at=at
    )
    site.store.create(job)
    site.store.finish(
        JobResult.ended(
            job, verdict=verdict, content_sha256=sha, content_pdq=pdq, content_pdq_quality=90
        )
    )
    if queue:
        key = evidence_key(tenant, review_id_for(scoped), sha)
        site.blobs.put(key, data)
        site.desk.queue.submit(
            item_from_verdict(
                job_id=scoped,
                image=job.image,
                verdict=verdict,
                policy=policy,
                content_sha256=sha,
                evidence_key=key,
                content_pdq=pdq,
                content_pdq_quality=90 if pdq else None,
                category_id=category_id,
            )
        )
    return job


def test_earlier_decisions_on_the_same_image_are_the_same_tenants_only(site: Site) -> None:
    acme, evil = f"acme{uuid.uuid4().hex[:6]}", f"evil{uuid.uuid4().hex[:6]}"
    data = f"the same picture {uuid.uuid4()}".encode()
    t0 = datetime.now(UTC) - timedelta(hours=3)
    _job(site, acme, "old-block", data, decision=Decision.BLOCK, at=t0)
    reviewed = _job(site, acme, "old-review", data, at=t0 + timedelta(hours=1))
    human = HumanDecision(
        job_id=reviewed.id,
        review_id=review_id_for(reviewed.id),
        decision=ReviewDecision.ALLOW,
        reason_code=None,
        reviewers=["rv_0000000000000001"],
        category_id="restricted_logo",
        policy_id="testworld",
        policy_version=1,
        decided_at=t0 + timedelta(hours=1, minutes=5),
    )
    site.store.set_human(reviewed.id, human)
    # Re-encoded: other bytes, the same PDQ hash.
    _job(site, acme, "old-pdq", data + b" re-encoded", at=t0 + timedelta(minutes=30), pdq=PDQ)
    # Another tenant's job on the very same bytes, and the tenant's own unrelated image.
    _job(site, evil, "theirs", data, decision=Decision.BLOCK, at=t0 + timedelta(hours=2))
    _job(site, acme, "other", b"another picture", at=t0 + timedelta(hours=2))
    _job(site, acme, "now", data, at=t0 + timedelta(hours=3), pdq=PDQ, queue=True)

    claim = site.desk.claim("rv_a")
    assert claim is not None and claim.item.job_id == scoped_id(acme, "now")
    shown = site.desk.same_image(claim.item)
    assert shown is not None and shown["unavailable"] is False
    rows = shown["earlier"]
    # Newest first; never the item's own job, the other tenant's or an unrelated image.
    assert [r["job_id"] for r in rows] == ["old-review", "old-pdq", "old-block"]
    by_job = {r["job_id"]: r for r in rows}
    assert by_job["old-review"]["human"] == "allow"
    assert by_job["old-review"]["human_at"].startswith(human.decided_at.isoformat()[:19])
    assert by_job["old-review"]["verdict"] == "review"
    assert by_job["old-block"]["verdict"] == "block" and by_job["old-block"]["human"] is None
    assert by_job["old-pdq"]["matched_by"] == "pdq"
    assert by_job["old-block"]["matched_by"] == "sha256"
    assert by_job["old-block"]["category"] == "testworld/restricted_logo"
    # The other tenant sees its own job only, never acme's.
    theirs = site.history.earlier(
        evil,
        content_sha256=claim.item.content_sha256,
        content_pdq=PDQ,
        exclude_job=scoped_id(evil, "none"),
    )
    assert [e.job_id for e in theirs] == ["theirs"]


def test_a_lookup_that_fails_says_so_instead_of_failing_the_page(site: Site) -> None:
    from moderation.exceptions import DatabaseUnavailable

    class Down:
        def earlier(self, *args: object, **kwargs: object) -> list[object]:
            raise DatabaseUnavailable("connection refused")

    data = f"pic {uuid.uuid4()}".encode()
    _job(site, "acme", f"x{uuid.uuid4().hex[:8]}", data, at=datetime.now(UTC), queue=True)
    claim = site.desk.claim("rv_a")
    assert claim is not None
    assert same_image(Down(), claim.item) == {"unavailable": True, "earlier": []}  # type: ignore[arg-type]


def _decide(site: Site, reviewer: str, decision: ReviewDecision, *, queues: tuple[str, ...]):  # type: ignore[no-untyped-def]
    claim = site.desk.claim(reviewer, queues=queues)
    assert claim is not None, reviewer
    site.desk.reveal(reviewer, claim.item.review_id)  # a critical item needs one look
    done = site.desk.decide(
        reviewer,
        review_id=claim.item.review_id,
        token=claim.lease.token,
        decision=decision,
        reason_code="TW_CONTRABAND" if decision is ReviewDecision.REMOVE else None,
    )
    return claim, done


def test_two_reviewers_disagree_and_a_senior_settles_it_on_postgres(pg_site: Site) -> None:
    site = pg_site
    tenant = f"acme{uuid.uuid4().hex[:6]}"
    job = _job(
        site,
        tenant,
        "critical-1",
        f"critical {uuid.uuid4()}".encode(),
        category_id=CRITICAL,
        at=datetime.now(UTC),
        queue=True,
    )
    _, first = _decide(site, "rv_alice", ReviewDecision.REMOVE, queues=("review",))
    assert first.final is None and not first.disagreement  # waits for a second reviewer
    second_claim, second = _decide(site, "rv_bob", ReviewDecision.ALLOW, queues=("review",))
    assert second_claim.first is not None and disagreement_view(second_claim) is None  # blind
    # Bob disagrees: neither decision wins; nothing downstream, the item is an escalation.
    assert second.final is None and second.disagreement
    assert site.audit.records == [] and site.store.get_result(job.id).human is None  # type: ignore[union-attr]
    both = ("review", ESCALATION_QUEUE)
    assert site.desk.claim("rv_alice", queues=both) is None  # neither of the two settles it
    assert site.desk.claim("rv_bob", queues=both) is None
    escalations = {s.queue: s.waiting for s in site.desk.stats()}
    assert escalations.get(ESCALATION_QUEUE) == 1 and escalations.get("review") == 0

    senior = site.desk.claim("rv_sam", queues=both)
    assert senior is not None and senior.queue == ESCALATION_QUEUE
    shown = disagreement_view(senior)
    assert shown is not None
    assert [(v["reviewer"], v["decision"]) for v in shown] == [
        ("rv_alice", "remove"),
        ("rv_bob", "allow"),
    ]
    assert shown[0]["reason_label"].startswith("Contraband symbol")
    site.desk.reveal("rv_sam", senior.item.review_id)
    with pytest.raises(ReviewInvalidDecision, match="already in the escalation queue"):
        site.desk.decide(
            "rv_sam",
            review_id=senior.item.review_id,
            token=senior.lease.token,
            decision=ReviewDecision.ESCALATE,
            reason_code=None,
        )
    done = site.desk.decide(
        "rv_sam",
        review_id=senior.item.review_id,
        token=senior.lease.token,
        decision=ReviewDecision.REMOVE,
        reason_code="TW_CONTRABAND",
    )
    assert done.final is not None and done.delivered
    assert done.final.reviewers == ["rv_alice", "rv_bob", "rv_sam"]
    result = site.store.get_result(job.id)
    assert result is not None and result.human == done.final
    # Audited: one record per reviewer, each with both earlier decisions and its own.
    records = {r.actor: r for r in site.audit.records}
    assert set(records) == {"rv_alice", "rv_bob", "rv_sam"}
    own = {actor: r.details["own_decision"] for actor, r in records.items()}
    assert own == {"rv_alice": "remove", "rv_bob": "allow", "rv_sam": "remove"}
    for record in records.values():
        assert record.decision == "remove"
        assert [d["decision"] for d in record.details["disagreement"]] == ["remove", "allow"]
