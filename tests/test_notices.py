"""Notices from outside (EU DSA Art. 16, 22): a report puts the item into review, a trusted
flagger's first; duplicates collapse; the reporter's outcome callback; the source kept in the
audit record and the statement of reasons; tenants apart. Over the twins and over the real
PostgreSQL notice store and review queue (pgserver)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from psycopg_pool import ConnectionPool
from pydantic import SecretStr

from moderation.adapters.memory import (
    MemoryAuditSink,
    MemoryBlobStore,
    MemoryCallbacks,
    MemoryDeliveryLog,
    MemoryJobStore,
    MemoryNoticeStore,
    MemoryPublisher,
    MemoryReviewQueue,
)
from moderation.adapters.postgres.notices import PostgresNoticeStore
from moderation.adapters.postgres.review import PostgresReviewQueue
from moderation.client import ModerationClient
from moderation.core.admission import Tenant
from moderation.core.audit import AuditRecord, dsa_statement
from moderation.core.decision import Decision
from moderation.core.image_ref import ImageRef
from moderation.core.jobs import Job, JobError, scoped_id
from moderation.core.notices import NoticeState, ReporterType
from moderation.core.policy import Action, Policy
from moderation.core.review import NOTICE_BOOST, ReviewDecision, review_id_for
from moderation.core.sources import DecisionSource
from moderation.exceptions import JobNotFoundError, JobRejected
from moderation.pipeline.notices import NoticeDesk, Rescoring
from moderation.pipeline.outcomes import Outcomes
from moderation.ports import NoticeStore, ReviewQueue
from moderation.settings import ApiKey, Settings, TenantSettings
from tests.pipeline_support import start_api, stop_api
from tests.test_review_queue import make_verdict, world_policy

pytestmark = pytest.mark.xdist_group("postgres")

ACME = Tenant(name="acme", trusted_flagger_notices=True)
GLOBEX = Tenant(name="globex")


@dataclass
class World:
    store: MemoryJobStore
    review: ReviewQueue
    notices: NoticeStore
    callbacks: MemoryCallbacks
    audit: MemoryAuditSink
    outcomes: Outcomes
    desk: NoticeDesk
    policy: Policy

    def job(
        self,
        tenant: Tenant,
        job_id: str,
        *,
        decision: Decision = Decision.ALLOW,
        score: float = 0.1,
        category: str = "restricted_logo",
        callback_url: str | None = None,
    ) -> Job:
        """A job of ``tenant`` that ended with a verdict (REVIEW ones are queued for review by
        the outcomes, as in the worker)."""
        job = Job(
            id=scoped_id(tenant.name, job_id),
            image=ImageRef(uri=f"s3://uploads/{job_id}.png"),
            tenant=tenant.name,
            callback_url=callback_url,
        )
        self.store.create_many([(job, None)])
        verdict = make_verdict(self.policy, category, score)
        if decision is Decision.ALLOW:
            verdict = dataclasses.replace(verdict, decision=Decision.ALLOW, action=Action.NONE)
        self.outcomes.finish_verdict(job, verdict, content_sha256="ab" * 32)
        return job

    def report(
        self,
        tenant: Tenant,
        job_id: str,
        *,
        reporter: str = "u-1",
        reporter_type: ReporterType = ReporterType.USER,
        reason: str = "restricted_logo",
        callback_url: str | None = "https://reports.example/outcome",
    ):  # type: ignore[no-untyped-def]
        return self.desk.file(
            tenant=tenant,
            job_id=job_id,
            reporter_type=reporter_type,
            reporter=reporter,
            reason=reason,
            text="this is not ok",
            callback_url=callback_url,
        )

    def decide_next(self, decision: ReviewDecision, reason_code: str | None = None) -> str:
        """A reviewer claims the next item and decides it; the decision is handed on as the
        review desk does. The decided job id."""
        claim = self.review.claim("rv_reviewer01")
        assert claim is not None
        outcome = self.review.decide(
            claim.item.review_id,
            reviewer="rv_reviewer01",
            token=claim.lease.token,
            decision=decision,
            reason_code=reason_code,
        )
        final = outcome.outcome.final
        assert final is not None
        self.outcomes.record_human_decision(final)
        return claim.item.job_id


def _world(review: ReviewQueue, notices: NoticeStore) -> World:
    store = MemoryJobStore()
    callbacks = MemoryCallbacks()
    audit = MemoryAuditSink()
    policy = world_policy()
    outcomes = Outcomes(
        store,
        deliveries=MemoryDeliveryLog(store),
        audit=audit,
        callbacks=callbacks,
        review=review,
        policies=lambda: {policy.id: policy},
        notices=notices,
    )
    desk = NoticeDesk(
        store=store,
        notices=notices,
        review=review,
        callbacks=callbacks,
        policies=lambda: {policy.id: policy},
    )
    return World(store, review, notices, callbacks, audit, outcomes, desk, policy)


@pytest.fixture(params=["memory", "postgres"])
def world(request: pytest.FixtureRequest) -> Iterator[World]:
    """The use case over the twins, and over the real PostgreSQL notice store and queue."""
    if request.param == "memory":
        yield _world(MemoryReviewQueue(lease_s=60, age_doubling_s=900), MemoryNoticeStore())
        return
    pool = ConnectionPool(request.getfixturevalue("pg_url"), min_size=1, max_size=4, open=True)
    with pool.connection() as conn:
        conn.execute(
            "TRUNCATE notices, review_items, review_policies, review_leases,"
            " review_decisions, review_outbox, review_reveals CASCADE"
        )
    try:
        yield _world(
            PostgresReviewQueue(pool, lease_s=60, age_doubling_s=900), PostgresNoticeStore(pool)
        )
    finally:
        pool.close()


def test_a_trusted_flaggers_report_jumps_the_queue(world: World) -> None:
    # The model sent three items to review, the worst (critical, high score) first.
    for i, (category, score) in enumerate(
        [("contraband_symbol", 0.95), ("hate_symbol_analogue", 0.9), ("restricted_logo", 0.8)]
    ):
        world.job(ACME, f"model-{i}", decision=Decision.REVIEW, category=category, score=score)
    # Two allowed items reported: one by a user, one by a trusted flagger (later).
    world.job(ACME, "allowed-user")
    world.job(ACME, "allowed-tf")
    by_user = world.report(ACME, "allowed-user", reason="hate_symbol_analogue")
    by_tf = world.report(
        ACME, "allowed-tf", reporter="tf-europol", reporter_type=ReporterType.TRUSTED_FLAGGER
    )
    assert by_user.new and by_tf.new and by_tf.notice.review_id is not None

    order = []
    for _ in range(5):
        claim = world.review.claim("rv_reviewer01")
        assert claim is not None
        order.append((claim.item.job_id, claim.item.source))
        world.review.release(claim.item.review_id, reviewer="rv_reviewer01", away_s=3600)
    assert order[0] == (scoped_id("acme", "allowed-tf"), DecisionSource.TRUSTED_FLAGGER)
    # The user's report is reviewed under the category it names, after the model's worst items.
    sources = dict(order)
    assert sources[scoped_id("acme", "allowed-user")] is DecisionSource.USER_REPORT
    assert sources[scoped_id("acme", "model-0")] is DecisionSource.AUTOMATED
    user_item = world.review.item(by_user.notice.review_id or "")
    assert user_item.category_id == "hate_symbol_analogue"


def test_a_trusted_flagger_raises_an_item_already_waiting(world: World) -> None:
    world.job(ACME, "first", decision=Decision.REVIEW, category="contraband_symbol", score=0.95)
    world.job(ACME, "low", decision=Decision.REVIEW, category="restricted_logo", score=0.3)
    world.report(ACME, "low", reporter="tf-1", reporter_type=ReporterType.TRUSTED_FLAGGER)
    claim = world.review.claim("rv_reviewer01")
    assert claim is not None
    assert claim.item.job_id == scoped_id("acme", "low")
    # The model started it: its source stays automated; only its place in the queue changed.
    assert claim.item.source is DecisionSource.AUTOMATED


def test_duplicate_reports_collapse(world: World) -> None:
    world.job(ACME, "dup")
    first = world.report(ACME, "dup")
    again = world.report(ACME, "dup", reason="  Restricted_Logo ")
    assert first.new and not again.new
    assert again.notice.notice_id == first.notice.notice_id
    assert again.notice.reports == 2
    other = world.report(ACME, "dup", reporter="u-2")
    assert other.new and other.notice.notice_id != first.notice.notice_id
    assert other.notice.review_id == first.notice.review_id
    # One review item for the job, whatever the number of reports.
    assert world.review.claim("rv_reviewer01") is not None
    assert world.review.claim("rv_reviewer02") is None


def test_the_reporter_gets_the_outcome_and_the_source_is_audited(world: World) -> None:
    world.job(ACME, "bad", callback_url="https://tenant.example/jobs")
    filed = world.report(ACME, "bad", reporter="tf-9", reporter_type=ReporterType.TRUSTED_FLAGGER)
    user = world.report(ACME, "bad", reporter="u-5", callback_url=None)
    world.callbacks.sent.clear()
    reason = world.policy.category("restricted_logo").actions.block.reason_code
    world.decide_next(ReviewDecision.REMOVE, reason_code=reason)

    bodies = {url: json.loads(body) for _, url, body in world.callbacks.sent}
    outcome = bodies["https://reports.example/outcome"]
    assert outcome["event"] == "notice.outcome"
    assert outcome["notice"]["notice_id"] == filed.notice.notice_id
    assert outcome["notice"]["job_id"] == "bad"  # the tenant's own id
    assert (outcome["notice"]["state"], outcome["notice"]["outcome"]) == ("answered", "remove")
    # The user gave no callback URL: the job's own gets the notice's outcome too.
    assert bodies["https://tenant.example/jobs"]["event"] in {
        "notice.outcome",
        "job.human_decision",
    }
    events = [
        json.loads(body)["event"]
        for _, url, body in world.callbacks.sent
        if url == "https://tenant.example/jobs"
    ]
    assert sorted(events) == ["job.human_decision", "notice.outcome"]
    stored = world.desk.get(tenant=ACME, notice_id=user.notice.notice_id)
    assert stored.state is NoticeState.ANSWERED and stored.outcome == "remove"

    human: list[AuditRecord] = [r for r in world.audit.records if r.kind == "human"]
    assert [r.source for r in human] == [DecisionSource.TRUSTED_FLAGGER]
    statement = dsa_statement(human[0])
    assert statement is not None
    assert statement["source_type"] == "SOURCE_TRUSTED_FLAGGER"
    assert statement["automated_detection"] == "No"
    assert statement["automated_decision"] == "AUTOMATED_DECISION_NOT_AUTOMATED"

    # Answered once: the decision handed on again (the outbox's retry) calls nobody back.
    world.callbacks.sent.clear()
    final = world.store.get_result(scoped_id("acme", "bad"))
    assert final is not None and final.human is not None
    world.outcomes.record_human_decision(final.human)
    assert [json.loads(b)["event"] for _, _, b in world.callbacks.sent] == ["job.human_decision"]


def test_a_report_on_a_decided_item_is_answered_at_once(world: World) -> None:
    world.job(ACME, "done", decision=Decision.REVIEW, score=0.6)
    world.decide_next(ReviewDecision.ALLOW)
    world.callbacks.sent.clear()
    filed = world.report(ACME, "done")
    assert filed.notice.state is NoticeState.ANSWERED and filed.notice.outcome == "allow"
    assert [json.loads(b)["event"] for _, _, b in world.callbacks.sent] == ["notice.outcome"]
    assert world.review.claim("rv_reviewer01") is None


def test_tenants_cannot_report_or_read_each_others(world: World) -> None:
    world.job(ACME, "mine")
    filed = world.report(ACME, "mine")
    with pytest.raises(JobNotFoundError):
        world.report(GLOBEX, "mine")
    with pytest.raises(JobNotFoundError):
        world.desk.get(tenant=GLOBEX, notice_id=filed.notice.notice_id)
    assert world.desk.get(tenant=ACME, notice_id=filed.notice.notice_id).reports == 1


def test_only_a_tenant_allowed_to_files_trusted_flaggers_notices(world: World) -> None:
    """A trusted flagger's notice goes ahead of every tenant's items in the shared queue, so a
    tenant may file one only when the operator allows it (else any tenant could lift its own
    items by saying so)."""
    world.job(GLOBEX, "theirs", decision=Decision.REVIEW)
    with pytest.raises(JobRejected) as refused:
        world.report(GLOBEX, "theirs", reporter_type=ReporterType.TRUSTED_FLAGGER)
    assert (refused.value.status, refused.value.code) == (403, "trusted_flagger_not_allowed")
    assert world.notices.for_tenant("globex") == []
    filed = world.report(GLOBEX, "theirs")  # as a user's notice it is taken
    assert filed.new and filed.notice.reporter_type is ReporterType.USER


def test_a_tenant_reports_at_most_at_its_rate(world: World) -> None:
    """Notices are admitted in a bucket of their own at the tenant's job rate: a tenant cannot
    flood the shared review queue with reports, and another tenant is not held back."""
    from moderation.adapters.memory.limits import MemoryRateLimiter
    from moderation.exceptions import RateLimited

    slow = Tenant(name="acme", rate_per_s=0.001, burst=2)
    world.desk.limiter = MemoryRateLimiter(clock=lambda: 1000.0)
    world.job(slow, "mine")
    world.job(GLOBEX, "theirs")
    world.report(slow, "mine", reporter="u-1")
    world.report(slow, "mine", reporter="u-2")
    with pytest.raises(RateLimited) as refused:
        world.report(slow, "mine", reporter="u-3")
    assert refused.value.code == "rate_limited" and refused.value.retry_after_s > 0
    assert world.report(GLOBEX, "theirs").new
    # The refused report was not kept.
    assert {n.reporter for n in world.notices.for_tenant("acme")} == {"u-1", "u-2"}


@pytest.mark.parametrize(
    "bad", ["https://a.example/x\r\nX-Evil: 1", "https://a.example/\x00", "https://a.example/ x"]
)
def test_a_callback_url_with_control_characters_is_refused(world: World, bad: str) -> None:
    """A CR/LF (or other control character, or a space) in the callback URL is refused when
    the notice is filed (400 bad_callback_url), not left to fail in the callback sender."""
    from moderation.compose.registries import check_callback_url

    world.desk.check_callback_url = check_callback_url
    world.job(ACME, "mine")
    with pytest.raises(JobRejected) as refused:
        world.report(ACME, "mine", callback_url=bad)
    assert refused.value.code == "bad_callback_url"
    assert world.notices.for_tenant("acme") == []


def test_a_job_without_a_verdict_is_refused(world: World) -> None:
    job = Job(id=scoped_id("acme", "queued"), image=ImageRef(uri="s3://u/q.png"), tenant="acme")
    world.store.create_many([(job, None)])
    with pytest.raises(JobRejected) as refused:
        world.report(ACME, "queued")
    assert (refused.value.status, refused.value.code) == (409, "notice_not_reviewable")
    with pytest.raises(JobNotFoundError):
        world.report(ACME, "never-submitted")


def _failed(world: World, job_id: str, uri: str = "s3://uploads/failed.png") -> Job:
    """A job of acme that ended in an error (no verdict): its image could not be fetched."""
    job = Job(id=scoped_id("acme", job_id), image=ImageRef(uri=uri), tenant="acme")
    world.store.create_many([(job, None)])
    world.outcomes.finish_error(job, JobError(code="fetch_failed", message="HTTP 503"))
    return job


def test_a_job_that_ended_without_a_verdict_is_scored_again_into_review(world: World) -> None:
    publisher = MemoryPublisher()
    world.desk.rescoring = Rescoring(world.store, world.outcomes.deliveries, publisher)
    job = _failed(world, "failed")
    filed = world.report(ACME, "failed")
    assert filed.new and filed.notice.review_id == review_id_for(job.id)
    again = world.store.get_job(job.id)
    assert again is not None and again.reported is DecisionSource.USER_REPORT
    result = world.store.get_result(job.id)
    assert result is not None and not result.status.final
    assert publisher.published == [job.id]
    # Another reporter while it is scored again: kept, answered with the same decision.
    second = world.report(ACME, "failed", reporter="u-2")
    assert second.new and publisher.published == [job.id]  # not published twice

    # The worker's new run: the model allows it, and it still goes to review, as reported.
    verdict = dataclasses.replace(
        make_verdict(world.policy, "restricted_logo", 0.1),
        decision=Decision.ALLOW,
        action=Action.NONE,
    )
    world.outcomes.finish_verdict(again, verdict, content_sha256="cd" * 32)
    item = world.review.item(review_id_for(job.id))
    assert item.source is DecisionSource.USER_REPORT
    assert item.priority_boost == NOTICE_BOOST[DecisionSource.USER_REPORT]
    reason = world.policy.category("restricted_logo").actions.block.reason_code
    assert world.decide_next(ReviewDecision.REMOVE, reason_code=reason) == job.id
    for notice in (filed.notice, second.notice):
        answered = world.notices.get("acme", notice.notice_id)
        assert answered is not None and answered.state is NoticeState.ANSWERED
        assert answered.outcome == "remove"


def test_a_job_scored_again_that_fails_again_answers_its_notices_not_reviewable(
    world: World,
) -> None:
    """The re-run ends in an error again: no reviewer can decide it, so every open notice on
    the job is answered ``not_reviewable`` with the error's code, audited per notice, and each
    reporter is called back; the job keeps its error result."""
    publisher = MemoryPublisher()
    world.desk.rescoring = Rescoring(world.store, world.outcomes.deliveries, publisher)
    job = _failed(world, "failed-twice")
    first = world.report(ACME, "failed-twice")
    second = world.report(ACME, "failed-twice", reporter="u-2", callback_url=None)
    again = world.store.get_job(job.id)
    assert again is not None and again.reported is DecisionSource.USER_REPORT
    world.callbacks.sent.clear()

    world.outcomes.finish_error(again, JobError(code="fetch_failed", message="HTTP 404"))
    result = world.store.get_result(job.id)
    assert result is not None and result.error is not None and result.verdict is None
    for notice in (first.notice, second.notice):
        answered = world.notices.get("acme", notice.notice_id)
        assert answered is not None and answered.state is NoticeState.ANSWERED
        assert (answered.outcome, answered.outcome_reason) == ("not_reviewable", "fetch_failed")
        assert answered.answered_at is not None
    records = [
        r for r in world.audit.records if r.decision == "not_reviewable" and r.job_id == job.id
    ]
    assert sorted(r.details["notice_id"] for r in records) == sorted(
        (first.notice.notice_id, second.notice.notice_id)
    )
    assert {(r.reason_code, r.source, r.tenant) for r in records} == {
        ("fetch_failed", DecisionSource.USER_REPORT, "acme")
    }
    from moderation.core.audit import dedupe
    from moderation.core.audit.transparency_report import transparency_report

    # each run's error has a record of its own (not deduplicated as a retried write)
    runs = [
        r.details["error"]
        for r in dedupe(world.audit.records)
        if r.job_id == job.id and r.decision == "error"
    ]
    assert runs == ["HTTP 503", "HTTP 404"]

    # no decision on the content: the transparency report does not count it as one
    assert "not_reviewable" not in transparency_report(world.audit.records)["automated_decisions"]
    # The first reporter's callback URL is called with the outcome; the second gave none and
    # the job has none: no callback.
    outcomes = [
        (url, json.loads(body))
        for _, url, body in world.callbacks.sent
        if b"notice.outcome" in body
    ]
    assert [(url, body["notice"]["notice_id"]) for url, body in outcomes] == [
        ("https://reports.example/outcome", first.notice.notice_id)
    ]
    assert outcomes[0][1]["notice"]["outcome"] == "not_reviewable"
    assert outcomes[0][1]["notice"]["job_id"] == "failed-twice"
    # Answered once: running the job's side effects again answers and calls back nothing more.
    world.callbacks.sent.clear()
    world.outcomes.complete_effects(again)
    assert not [b for _, _, b in world.callbacks.sent if b"notice.outcome" in b]
    assert len([r for r in world.audit.records if r.decision == "not_reviewable"]) == 2
    # A later notice tries again (the job is scored a third time).
    third = world.report(ACME, "failed-twice", reporter="u-3")
    assert third.new and publisher.published == [job.id, job.id]


def test_a_job_without_a_verdict_whose_bytes_are_gone_is_a_coded_refusal(world: World) -> None:
    world.desk.rescoring = Rescoring(world.store, world.outcomes.deliveries, MemoryPublisher())
    _failed(world, "inline", uri="inline:acme/abc")
    with pytest.raises(JobRejected) as gone:
        world.report(ACME, "inline")
    assert (gone.value.status, gone.value.code) == (409, "notice_source_gone")
    assert "submit the image again" in str(gone.value)
    world.desk.rescoring = None  # a deployment that cannot run jobs again
    _failed(world, "no-rescoring")
    with pytest.raises(JobRejected) as refused:
        world.report(ACME, "no-rescoring")
    assert (refused.value.status, refused.value.code) == (409, "notice_not_reviewable")


def test_a_job_without_a_verdict_whose_spilled_bytes_were_swept_is_a_coded_refusal(
    world: World,
) -> None:
    """Spilled or streamed bytes (``spill:``) stay for a while after the job; once swept, a
    report is refused at once rather than accepted and failed again."""
    from moderation.adapters.memory import MemoryBlobStore

    blobs = MemoryBlobStore()
    publisher = MemoryPublisher()
    world.desk.rescoring = Rescoring(world.store, world.outcomes.deliveries, publisher)
    world.desk.blobs = blobs
    blobs.put("spill/2026-12-07/u-kept", b"bytes")
    _failed(world, "kept", uri="spill:spill/2026-12-07/u-kept")
    assert world.report(ACME, "kept").new and publisher.published == [scoped_id("acme", "kept")]
    _failed(world, "swept", uri="spill:spill/2026-12-07/u-swept")
    with pytest.raises(JobRejected) as gone:
        world.report(ACME, "swept")
    assert (gone.value.status, gone.value.code) == (409, "notice_source_gone")
    assert publisher.published == [scoped_id("acme", "kept")]


# --- over HTTP: the API and the Python client ---------------------------------------------


def test_the_api_and_client_take_notices_per_tenant(settings: Settings, redis_url: str) -> None:
    keys = {"acme": "a" * 40, "globex": "g" * 40}
    s = settings.model_copy(
        update={
            "redis_url": redis_url,
            "api_keys": [ApiKey(tenant=t, key=SecretStr(k)) for t, k in keys.items()],
            "tenants": {"acme": TenantSettings(trusted_flagger_notices=True)},
        }
    )
    world = _world(MemoryReviewQueue(lease_s=60, age_doubling_s=900), MemoryNoticeStore())
    twins = {
        "store": world.store,
        "deliveries": MemoryDeliveryLog(world.store),
        "publisher": MemoryPublisher(),
        "callbacks": world.callbacks,
        "audit": world.audit,
        "review_queue": world.review,
        "blobs": MemoryBlobStore(),
    }
    world.job(ACME, "pic-1")
    body = {"reporter_type": "trusted_flagger", "reporter": "tf-1", "reason": "restricted_logo"}
    server, base = start_api(s, notices=world.notices, **twins)
    try:
        with (
            ModerationClient(base, api_key=keys["acme"]) as acme,
            httpx.Client(base_url=base, timeout=10) as http,
        ):
            mine = {"authorization": f"Bearer {keys['acme']}"}
            first = http.post("/v1/jobs/pic-1/notices", json=body, headers=mine)
            assert first.status_code == 201, first.text
            assert first.json()["duplicate"] is False and first.json()["job_id"] == "pic-1"
            again = acme.report(
                "pic-1", reporter="tf-1", reason="restricted_logo", reporter_type="trusted_flagger"
            )
            assert again["duplicate"] is True and again["reports"] == 2
            assert acme.notice(first.json()["notice_id"])["state"] == "open"
            claim = world.review.claim("rv_reviewer01")
            assert claim is not None and claim.item.source is DecisionSource.TRUSTED_FLAGGER
            # Another tenant: the same job id is not theirs, nor is the notice.
            other = {"authorization": f"Bearer {keys['globex']}"}
            as_user = {**body, "reporter_type": "user"}
            assert (
                http.post("/v1/jobs/pic-1/notices", json=as_user, headers=other).status_code == 404
            )
            # Nor may globex call its own notices a trusted flagger's: not allowed to it.
            world.job(GLOBEX, "theirs")
            lifted = http.post("/v1/jobs/theirs/notices", json=body, headers=other)
            assert (lifted.status_code, lifted.json()["code"]) == (
                403,
                "trusted_flagger_not_allowed",
            )
            notice_url = f"/v1/notices/{first.json()['notice_id']}"
            assert http.get(notice_url, headers=other).status_code == 404
            wrong = {**body, "reporter_type": "moderator"}
            assert http.post("/v1/jobs/pic-1/notices", json=wrong, headers=mine).status_code == 422
    finally:
        stop_api(server)
    # Without a notice store (no database): 503 notices_unavailable.
    server, base = start_api(s, **twins)
    try:
        with httpx.Client(base_url=base, timeout=10) as http:
            down = http.post(
                "/v1/jobs/pic-1/notices",
                json=body,
                headers={"authorization": f"Bearer {keys['acme']}"},
            )
            assert (down.status_code, down.json()["code"]) == (503, "notices_unavailable")
    finally:
        stop_api(server)
