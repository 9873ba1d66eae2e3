"""The review model (pure) and the review queue's contract, over PostgreSQL and Redis (real
servers) and the in-memory twin."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from psycopg_pool import ConnectionPool

from moderation.adapters.memory import MemoryReviewerStore, MemoryReviewQueue
from moderation.adapters.passwords import hash_password, verify_password
from moderation.adapters.policy_files import load_policy_file
from moderation.adapters.postgres.review import PostgresReviewQueue
from moderation.adapters.postgres.reviewers import PostgresReviewerStore
from moderation.adapters.redis_review import RedisReviewQueue
from moderation.adapters.redis_reviewers import RedisReviewerStore
from moderation.adapters.support.redis import connect as _connect
from moderation.core.decision import CategoryResult, Decision, Evidence, PolicyRef, Verdict
from moderation.core.evidence import evidence_key
from moderation.core.image_ref import ImageRef
from moderation.core.policy import Action, Policy, Severity
from moderation.core.review import (
    FirstDecision,
    ReviewDecision,
    ReviewItem,
    apply_decision,
    item_from_verdict,
    priority,
    pseudonym,
    rank_key,
)
from moderation.core.reviewers import ReviewerAccount, Role
from moderation.exceptions import (
    ReviewAlreadyDecided,
    ReviewAuthError,
    ReviewError,
    ReviewInvalidDecision,
    ReviewLeaseExpired,
    ReviewNotLeaseHolder,
)
from moderation.ports import BlobStore, ReviewerStore, ReviewQueue
from moderation.testmodel import POLICY_PATH
from moderation.web.auth import SessionCodec

# --- helpers shared with the web and browser tests -----------------------------------------


def world_policy() -> Policy:
    return load_policy_file(POLICY_PATH)


def make_verdict(policy: Policy, category_id: str, score: float) -> Verdict:
    """A REVIEW verdict for one category of ``policy`` (what the pipeline would produce)."""
    category = policy.category(category_id)
    result = CategoryResult(
        policy_id=policy.id,
        policy_version=policy.version,
        category_id=category.id,
        signal="prompts",
        severity=category.severity,
        score=score,
        decision=Decision.REVIEW,
        review_threshold=category.thresholds.review,
        block_threshold=category.thresholds.block,
        margin_review=score - category.thresholds.review,
        margin_block=score - category.thresholds.block,
        action=Action.HUMAN_REVIEW,
        reason_code=category.actions.review.reason_code,
        evidence=[
            Evidence(
                "prompts", category.prompts[0], 0.55, {"kind": "positive", "similarity": 0.31}
            ),
            Evidence(
                "prompts",
                policy.benign_for(category)[0],
                0.3,
                {"kind": "benign", "similarity": 0.27},
            ),
        ],
    )
    return Verdict(
        decision=Decision.REVIEW,
        action=Action.HUMAN_REVIEW,
        reason_code=result.reason_code,
        policy_id=policy.id,
        category_id=category.id,
        severity=category.severity,
        score=score,
        categories=[result],
        scores={
            f"{policy.id}/{c.id}": (score if c.id == category_id else 0.05)
            for c in policy.categories
        },
        policies=[
            PolicyRef(
                id=policy.id, version=policy.version, policy_hash="p" * 64, compiled_hash="c" * 64
            )
        ],
        model="ModTest-RN-T@test",
    )


def make_item(
    policy: Policy,
    job_id: str,
    *,
    category_id: str = "restricted_logo",
    score: float = 0.5,
    created_at: float | None = None,
) -> ReviewItem:
    return item_from_verdict(
        job_id=job_id,
        image=ImageRef(uri=f"s3://uploads/{job_id}.png"),
        verdict=make_verdict(policy, category_id, score),
        policy=policy,
        created_at=created_at,
    )


def with_evidence(
    item: ReviewItem, data: bytes, blobs: BlobStore, *, tenant: str = "default"
) -> ReviewItem:
    """``item`` with ``data`` kept as its scored bytes (as the worker keeps them)."""
    digest = hashlib.sha256(data).hexdigest()
    key = evidence_key(tenant, item.review_id, digest)
    blobs.put(key, data)
    return item.model_copy(update={"content_sha256": digest, "evidence_key": key})


def connect(url: str):  # type: ignore[no-untyped-def]
    return _connect(url, decode=True, socket_timeout=5.0)


@contextmanager
def review_pool(request: pytest.FixtureRequest) -> Iterator[ConnectionPool]:
    """A pool on this module's real PostgreSQL database, the review tables emptied (the tests
    of a module share the database)."""
    url = request.getfixturevalue("pg_url")
    pool = ConnectionPool(url, min_size=1, max_size=24, open=True)
    with pool.connection() as conn:
        conn.execute(
            "TRUNCATE review_items, review_policies, review_leases, review_decisions,"
            " review_outbox, review_reveals, review_away, reviewer_accounts CASCADE"
        )
    try:
        yield pool
    finally:
        pool.close()


@contextmanager
def make_queue(
    kind: str, request: pytest.FixtureRequest, *, lease_s: float = 30
) -> Iterator[ReviewQueue]:
    """The review queue of ``kind`` (PostgreSQL, Redis on a real valkey server, or the twin)."""
    if kind == "memory":
        yield MemoryReviewQueue(lease_s=lease_s, age_doubling_s=900)
    elif kind == "postgres":
        with review_pool(request) as pool:
            yield PostgresReviewQueue(pool, lease_s=lease_s, age_doubling_s=900)
    else:
        client = connect(request.getfixturevalue("redis_url"))
        try:
            yield RedisReviewQueue(client, lease_s=lease_s, age_doubling_s=900)
        finally:
            client.close()


@pytest.fixture(params=["postgres", "redis", "memory"])
def queue(request: pytest.FixtureRequest) -> Iterator[ReviewQueue]:
    """The PostgreSQL review queue, the Redis one on a real valkey server, and the in-memory
    twin: the same contract."""
    with make_queue(request.param, request) as queue:
        yield queue


# --- pure model ---------------------------------------------------------------------------


def test_priority_orders_by_severity_score_and_age_and_rank_key_agrees() -> None:
    crit = priority(Severity.CRITICAL, 0.4, 0, age_doubling_s=900)
    low = priority(Severity.LOW, 0.4, 0, age_doubling_s=900)
    assert crit > low
    assert priority(Severity.LOW, 0.8, 0, age_doubling_s=900) > low
    # Age raises priority: a low item that waited log2(8) doublings catches a fresh critical one.
    assert priority(Severity.LOW, 0.4, 3 * 900 + 1, age_doubling_s=900) > crit
    cases = [
        (Severity.LOW, 0.9, 0.0),
        (Severity.CRITICAL, 0.35, 500.0),
        (Severity.MEDIUM, 0.6, 2000.0),
        (Severity.HIGH, 0.31, 4000.0),
    ]
    for now in (5000.0, 9000.0, 50000.0):
        by_priority = sorted(
            cases, key=lambda c: -priority(c[0], c[1], now - c[2], age_doubling_s=900)
        )
        by_rank = sorted(cases, key=lambda c: -rank_key(c[0], c[1], c[2], age_doubling_s=900))
        assert by_priority == by_rank


def test_pseudonym_is_stable_keyed_and_not_the_name() -> None:
    a = pseudonym("secret", "alice")
    assert a == pseudonym("secret", "alice")
    assert a.startswith("rv_") and len(a) == 19 and "alice" not in a
    assert a != pseudonym("other", "alice") and a != pseudonym("secret", "bob")


def test_second_reviewer_rule_in_the_pure_model() -> None:
    policy = world_policy()
    critical = make_item(policy, "j1", category_id="contraband_symbol")
    medium = make_item(policy, "j2", category_id="restricted_logo")
    code = critical.reason_codes[0]
    assert code == "TW_CONTRABAND"
    one = apply_decision(
        medium,
        None,
        reviewer="rv_a",
        decision=ReviewDecision.REMOVE,
        reason_code="TW_LOGO",
        token="t",
        now=1.0,
    )
    assert one.final is not None and one.final.reviewers == ["rv_a"]
    first = apply_decision(
        critical,
        None,
        reviewer="rv_a",
        decision=ReviewDecision.REMOVE,
        reason_code=code,
        token="t1",
        now=1.0,
    )
    assert first.final is None and isinstance(first.pending, FirstDecision)
    with pytest.raises(ReviewInvalidDecision, match="different reviewer"):
        apply_decision(
            critical,
            first.pending,
            reviewer="rv_a",
            decision=ReviewDecision.REMOVE,
            reason_code=code,
            token="t2",
            now=2.0,
        )
    agree = apply_decision(
        critical,
        first.pending,
        reviewer="rv_b",
        decision=ReviewDecision.REMOVE,
        reason_code=code,
        token="t2",
        now=2.0,
    )
    assert agree.final is not None and agree.final.decision is ReviewDecision.REMOVE
    assert agree.final.reviewers == ["rv_a", "rv_b"]
    disagree = apply_decision(
        critical,
        first.pending,
        reviewer="rv_b",
        decision=ReviewDecision.ALLOW,
        reason_code=None,
        token="t2",
        now=2.0,
    )
    # A disagreement is not final: it goes to the escalation queue with both decisions.
    assert disagree.final is None and disagree.disagreement
    assert disagree.moved_to == "escalation" and disagree.pending is not None
    assert disagree.pending.deciders() == ["rv_a", "rv_b"]
    with pytest.raises(ReviewInvalidDecision, match="decided this item before"):
        apply_decision(
            critical,
            disagree.pending,
            reviewer="rv_a",
            decision=ReviewDecision.ALLOW,
            reason_code=None,
            token="t3",
            now=3.0,
            queue="escalation",
        )
    settled = apply_decision(
        critical,
        disagree.pending,
        reviewer="rv_c",
        decision=ReviewDecision.REMOVE,
        reason_code=code,
        token="t3",
        now=3.0,
        queue="escalation",
    )
    assert settled.final is not None and settled.final.reviewers == ["rv_a", "rv_b", "rv_c"]
    assert [(v.reviewer, v.decision) for v in settled.final.votes] == [
        ("rv_a", ReviewDecision.REMOVE),
        ("rv_b", ReviewDecision.ALLOW),
    ]
    allow = apply_decision(
        critical,
        None,
        reviewer="rv_a",
        decision=ReviewDecision.ALLOW,
        reason_code=None,
        token="t",
        now=1.0,
    )
    assert allow.final is not None and allow.final.decision is ReviewDecision.ALLOW
    with pytest.raises(ReviewInvalidDecision, match="reason code"):
        apply_decision(
            medium,
            None,
            reviewer="rv_a",
            decision=ReviewDecision.REMOVE,
            reason_code="MADE_UP",
            token="t",
            now=1.0,
        )
    with pytest.raises(ReviewInvalidDecision):
        apply_decision(
            medium,
            None,
            reviewer="rv_a",
            decision=ReviewDecision.ALLOW,
            reason_code="TW_LOGO",
            token="t",
            now=1.0,
        )


def test_csrf_tokens_are_bound_to_their_session() -> None:
    codec = SessionCodec(session_secret="s1", pseudonym_secret="p1")
    codec.check_csrf("nonce-1", codec.csrf_token("nonce-1"))
    with pytest.raises(ReviewAuthError, match="CSRF"):
        codec.check_csrf("nonce-1", codec.csrf_token("another-nonce"))
    with pytest.raises(ReviewAuthError, match="CSRF"):
        codec.check_csrf("nonce-1", None)
    other = SessionCodec(session_secret="s2", pseudonym_secret="p1")
    with pytest.raises(ReviewAuthError, match="CSRF"):
        other.check_csrf("nonce-1", codec.csrf_token("nonce-1"))


# --- Redis queue --------------------------------------------------------------------------


def test_twenty_concurrent_reviewers_never_get_the_same_item(queue: ReviewQueue) -> None:
    policy = world_policy()
    n_items = 60
    for i in range(n_items):
        queue.submit(make_item(policy, f"job-{i}", score=0.3 + (i % 7) / 20))
    got: dict[str, list[str]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(20)

    def reviewer(name: str) -> None:
        try:
            start.wait()
            mine: list[str] = []
            while True:
                claim = queue.claim(name)
                if claim is None:
                    break
                mine.append(claim.item.review_id)
                queue.decide(
                    claim.item.review_id,
                    reviewer=name,
                    token=claim.lease.token,
                    decision=ReviewDecision.ALLOW,
                    reason_code=None,
                )
            got[name] = mine
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=reviewer, args=(f"rv_{i:02d}",)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    # What the queue guarantees, whatever the scheduler did (one thread may well take them all):
    # every item claimed by exactly one reviewer, and its decision recorded once, as that
    # reviewer's.
    claimed = [rid for ids in got.values() for rid in ids]
    assert len(claimed) == n_items and len(set(claimed)) == n_items
    claimer = {rid: name for name, ids in got.items() for rid in ids}
    finals = {f.review_id: f for f in queue.undelivered()}
    assert set(finals) == set(claimer)
    assert all(finals[rid].reviewers == [name] for rid, name in claimer.items())
    assert queue.decisions_on() == {name: len(ids) for name, ids in got.items() if ids}
    assert [s.waiting for s in queue.stats()] == [0]
    if isinstance(queue, PostgresReviewQueue):  # what the tables say: one lease, one decision
        with queue._pool.connection() as conn:
            leases = conn.execute(
                "SELECT count(*), count(DISTINCT review_id) FROM review_leases"
            ).fetchone()
            decided = conn.execute(
                "SELECT count(*), count(DISTINCT review_id) FROM review_decisions"
            ).fetchone()
        assert leases == (n_items, n_items) and decided == (n_items, n_items)


def test_highest_priority_first_and_resubmit_is_a_no_op(queue: ReviewQueue) -> None:
    policy = world_policy()
    now = queue.now()
    queue.submit(make_item(policy, "low", category_id="restricted_logo", score=0.4, created_at=now))
    queue.submit(
        make_item(policy, "crit", category_id="contraband_symbol", score=0.4, created_at=now)
    )
    queue.submit(
        make_item(policy, "old", category_id="restricted_logo", score=0.4, created_at=now - 5 * 900)
    )
    queue.submit(make_item(policy, "crit", category_id="contraband_symbol", score=0.4))
    order = []
    for name in ("rv_1", "rv_2", "rv_3"):
        claim = queue.claim(name)
        assert claim is not None
        order.append(claim.item.job_id)
    assert order == ["old", "crit", "low"]
    assert queue.claim("rv_4") is None


def test_a_batch_of_items_in_one_submit_many(queue: ReviewQueue) -> None:
    """What a worker's batch message queues at once: the same as one submit each (an id twice
    in the batch, or again later, is one item)."""
    policy = world_policy()
    now = queue.now()
    items = [
        make_item(policy, "many-low", score=0.4, created_at=now),
        make_item(policy, "many-crit", category_id="contraband_symbol", score=0.4, created_at=now),
        make_item(policy, "many-low", score=0.4, created_at=now),
    ]
    queue.submit_many(items)
    queue.submit_many([])
    queue.submit_many(items[:1])
    assert [(s.waiting, s.in_review) for s in queue.stats()] == [(2, 0)]
    claims = [queue.claim(name) for name in ("rv_m1", "rv_m2", "rv_m3")]
    assert [c.item.job_id if c else None for c in claims] == ["many-crit", "many-low", None]


@pytest.mark.parametrize("kind", ["postgres", "redis", "memory"])
def test_expired_lease_returns_and_late_decision_is_refused(
    kind: str, request: pytest.FixtureRequest
) -> None:
    with make_queue(kind, request, lease_s=0.5) as queue:
        _expired_lease_returns(queue)


def _expired_lease_returns(queue: ReviewQueue) -> None:
    queue.submit(make_item(world_policy(), "job-x"))
    first = queue.claim("rv_slow")
    assert first is not None
    assert queue.claim("rv_fast") is None  # leased, invisible to others
    time.sleep(0.7)
    with pytest.raises(ReviewLeaseExpired, match="expired"):
        queue.decide(
            first.item.review_id,
            reviewer="rv_slow",
            token=first.lease.token,
            decision=ReviewDecision.ALLOW,
            reason_code=None,
        )
    again = queue.claim("rv_fast")
    assert again is not None and again.item.review_id == first.item.review_id
    assert again.lease.token != first.lease.token
    with pytest.raises(ReviewLeaseExpired, match="went back to the queue"):
        queue.decide(
            first.item.review_id,
            reviewer="rv_slow",
            token=first.lease.token,
            decision=ReviewDecision.ALLOW,
            reason_code=None,
        )
    with pytest.raises(ReviewNotLeaseHolder):
        queue.decide(
            first.item.review_id,
            reviewer="rv_thief",
            token="guessed",
            decision=ReviewDecision.ALLOW,
            reason_code=None,
        )
    result = queue.decide(
        again.item.review_id,
        reviewer="rv_fast",
        token=again.lease.token,
        decision=ReviewDecision.ALLOW,
        reason_code=None,
    )
    assert result.outcome.final is not None and result.outcome.final.reviewers == ["rv_fast"]


def test_double_submit_is_harmless(queue: ReviewQueue) -> None:
    queue.submit(make_item(world_policy(), "job-d"))
    claim = queue.claim("rv_a")
    assert claim is not None
    args = {
        "reviewer": "rv_a",
        "token": claim.lease.token,
        "decision": ReviewDecision.REMOVE,
        "reason_code": "TW_LOGO",
    }
    one = queue.decide(claim.item.review_id, **args)  # type: ignore[arg-type]
    two = queue.decide(claim.item.review_id, **args)  # type: ignore[arg-type]
    assert not one.replay and two.replay
    assert one.outcome.final == two.outcome.final
    with pytest.raises(ReviewAlreadyDecided):
        queue.decide(
            claim.item.review_id,
            reviewer="rv_a",
            token=claim.lease.token,
            decision=ReviewDecision.ALLOW,
            reason_code=None,
        )
    assert [f.review_id for f in queue.undelivered()] == [claim.item.review_id]
    queue.delivered(claim.item.review_id)
    assert queue.undelivered() == []
    rows = list(queue.export())
    assert len(rows) == 1 and rows[0]["human_label"] == "remove"
    assert rows[0]["reason_code"] == "TW_LOGO" and rows[0]["category"] == "restricted_logo"
    assert rows[0]["image"] == "s3://uploads/job-d.png" and rows[0]["model_score"] == 0.5


def _claim_decide(
    queue: ReviewQueue, reviewer: str, decision: ReviewDecision, code: str | None
) -> object:
    claim = queue.claim(reviewer)
    assert claim is not None
    return queue.decide(
        claim.item.review_id,
        reviewer=reviewer,
        token=claim.lease.token,
        decision=decision,
        reason_code=code,
    )


def test_critical_removal_needs_a_second_independent_reviewer(queue: ReviewQueue) -> None:
    queue.submit(make_item(world_policy(), "job-c", category_id="contraband_symbol"))
    first = _claim_decide(queue, "rv_a", ReviewDecision.REMOVE, "TW_CONTRABAND")
    assert first.outcome.pending is not None  # type: ignore[attr-defined]
    assert queue.undelivered() == []  # not final: nothing downstream yet
    assert queue.claim("rv_a") is None  # the first reviewer cannot be the second
    second = queue.claim("rv_b")
    assert second is not None and second.first is not None and second.first.reviewer == "rv_a"
    result = queue.decide(
        second.item.review_id,
        reviewer="rv_b",
        token=second.lease.token,
        decision=ReviewDecision.REMOVE,
        reason_code="TW_CONTRABAND",
    )
    final = result.outcome.final
    assert final is not None and final.decision is ReviewDecision.REMOVE
    assert final.reviewers == ["rv_a", "rv_b"]
    assert [f.review_id for f in queue.undelivered()] == [second.item.review_id]


def test_a_disagreement_on_a_critical_removal_goes_to_the_escalation_queue(
    queue: ReviewQueue,
) -> None:
    queue.submit(make_item(world_policy(), "job-e", category_id="contraband_symbol"))
    _claim_decide(queue, "rv_a", ReviewDecision.REMOVE, "TW_CONTRABAND")
    claim = queue.claim("rv_b")
    assert claim is not None
    result = queue.decide(
        claim.item.review_id,
        reviewer="rv_b",
        token=claim.lease.token,
        decision=ReviewDecision.ALLOW,
        reason_code=None,
    )
    # Neither decision wins: nothing is final, nothing goes downstream.
    assert result.outcome.final is None and result.outcome.disagreement
    assert queue.undelivered() == []
    retry = queue.decide(
        claim.item.review_id,
        reviewer="rv_b",
        token=claim.lease.token,
        decision=ReviewDecision.ALLOW,
        reason_code=None,
    )
    assert retry.replay and retry.outcome.final is None
    # Gone from the first-review queue, waiting in the escalation queue (counted there).
    assert queue.claim("rv_x") is None
    waiting = {(s.queue, s.waiting) for s in queue.stats() if s.waiting}
    assert waiting == {("escalation", 1)}
    # Neither of the two settles it, even with access to the escalation queue.
    assert queue.claim("rv_a", queues=["escalation"]) is None
    assert queue.claim("rv_b", queues=["escalation"]) is None
    senior = queue.claim("rv_c", queues=["review", "escalation"])
    assert senior is not None and senior.queue == "escalation" and senior.first is not None
    assert [(v.reviewer, v.decision, v.reason_code) for v in senior.first.votes()] == [
        ("rv_a", ReviewDecision.REMOVE, "TW_CONTRABAND"),
        ("rv_b", ReviewDecision.ALLOW, None),
    ]
    settled = queue.decide(
        senior.item.review_id,
        reviewer="rv_c",
        token=senior.lease.token,
        decision=ReviewDecision.REMOVE,
        reason_code="TW_CONTRABAND",
    )
    final = settled.outcome.final
    assert final is not None and final.decision is ReviewDecision.REMOVE
    assert final.reviewers == ["rv_a", "rv_b", "rv_c"]
    assert [v.decision for v in final.votes] == [ReviewDecision.REMOVE, ReviewDecision.ALLOW]
    assert queue.undelivered() == [final]


def test_policy_filter_stats_and_release(queue: ReviewQueue) -> None:
    policy = world_policy()
    other = policy.model_copy(update={"id": "otherworld"})
    queue.submit(make_item(policy, "a1", created_at=queue.now() - 120))
    queue.submit(make_item(other, "b1"))
    claim = queue.claim("rv_a", policies=["otherworld"])
    assert claim is not None and claim.item.policy_id == "otherworld"
    assert queue.claim("rv_a").item.review_id == claim.item.review_id  # type: ignore[union-attr]
    stats = {s.policy_id: s for s in queue.stats()}
    assert stats["otherworld"].in_review == 1 and stats["otherworld"].waiting == 0
    assert stats["testworld"].waiting == 1 and stats["testworld"].oldest_age_s is not None
    assert stats["testworld"].oldest_age_s >= 119
    assert queue.release(claim.item.review_id, reviewer="rv_other") is False
    assert queue.release(claim.item.review_id, reviewer="rv_a") is True
    assert {s.policy_id: s.waiting for s in queue.stats()} == {"otherworld": 1, "testworld": 1}


@pytest.mark.parametrize("kind", ["postgres", "redis", "memory"])
def test_reviewer_accounts_hash_passwords(kind: str, request: pytest.FixtureRequest) -> None:
    with reviewer_store(kind, request) as store:
        _check_reviewer_accounts(store)


@contextmanager
def reviewer_store(kind: str, request: pytest.FixtureRequest) -> Iterator[ReviewerStore]:
    if kind == "memory":
        yield MemoryReviewerStore()
    elif kind == "postgres":
        with review_pool(request) as pool:
            yield PostgresReviewerStore(pool)
    else:
        client = connect(request.getfixturevalue("redis_url"))
        yield RedisReviewerStore(client)
        client.close()


def _check_reviewer_accounts(store: ReviewerStore) -> None:
    store.create(
        ReviewerAccount(
            username="alice",
            role=Role.ADMIN,
            password_hash=hash_password("correct horse"),
            disabled=False,
            created_at=1.0,
        )
    )
    with pytest.raises(ReviewError, match="exists"):
        store.create(
            ReviewerAccount(
                username="alice",
                role=Role.REVIEWER,
                password_hash="x",
                disabled=False,
                created_at=1.0,
            )
        )
    if isinstance(store, RedisReviewerStore):
        raw = store._r.hgetall("mod:review:user:alice")
        assert "correct horse" not in str(raw) and raw["password_hash"].startswith("$argon2id$")
    if isinstance(store, PostgresReviewerStore):
        with store._pool.connection() as conn:
            rows = conn.execute("SELECT * FROM reviewer_accounts").fetchall()
        assert "correct horse" not in str(rows) and rows[0][2].startswith("$argon2id$")
    assert verify_password(store.get("alice"), "correct horse").role is Role.ADMIN
    with pytest.raises(ReviewAuthError):
        verify_password(store.get("alice"), "wrong horse!")
    with pytest.raises(ReviewAuthError):
        verify_password(store.get("nobody"), "correct horse")
    store.set_disabled("alice", True)
    with pytest.raises(ReviewAuthError):
        verify_password(store.get("alice"), "correct horse")
    assert [a.username for a in store.all()] == ["alice"]
    with pytest.raises(ReviewError, match="no reviewer"):
        store.set_disabled("nobody", True)
    with pytest.raises(ReviewError):
        hash_password("short")


@pytest.mark.parametrize("kind", ["postgres", "redis"])
def test_cli_accounts_stats_and_export(
    kind: str,
    request: pytest.FixtureRequest,
    tmp_path,
    monkeypatch,  # type: ignore[no-untyped-def]
) -> None:
    """``moderation review`` against the store the settings name: the database when
    ``MODERATION_DATABASE__URL`` is set (sessions stay in Redis), else Redis. The queue the
    test fills is that store's, so the command's stats and export prove which one it read."""
    with make_queue(kind, request) as queue:
        monkeypatch.setenv("MODERATION_REDIS_URL", request.getfixturevalue("redis_url"))
        if kind == "postgres":
            monkeypatch.setenv("MODERATION_DATABASE__URL", request.getfixturevalue("pg_url"))
        else:
            monkeypatch.delenv("MODERATION_DATABASE__URL", raising=False)
        _cli_accounts_stats_and_export(queue, tmp_path)


def _cli_accounts_stats_and_export(queue: ReviewQueue, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import csv
    import json

    from typer.testing import CliRunner

    from moderation.cli.review import review_app

    runner = CliRunner()
    added = runner.invoke(
        review_app,
        ["user", "add", "carol", "--role", "admin", "--password-stdin"],
        input="long enough pw\n",
    )
    assert added.exit_code == 0, added.output
    listed = runner.invoke(review_app, ["user", "list"])
    assert "carol" in listed.output and "admin" in listed.output and "rv_" in listed.output
    assert (
        runner.invoke(
            review_app, ["user", "add", "carol", "--password-stdin"], input="long enough pw\n"
        ).exit_code
        == 1
    )
    assert runner.invoke(review_app, ["user", "disable", "carol"]).exit_code == 0
    assert "disabled" in runner.invoke(review_app, ["user", "list"]).output

    policy = world_policy()
    for i, decision in enumerate((ReviewDecision.ALLOW, ReviewDecision.REMOVE)):
        queue.submit(make_item(policy, f"cli-{i}", score=0.4 + i / 10))
        _claim_decide(
            queue, "rv_x", decision, "TW_LOGO" if decision is ReviewDecision.REMOVE else None
        )
    queue.submit(make_item(policy, "cli-open"))
    stats = json.loads(runner.invoke(review_app, ["stats", "--json"]).output)
    assert stats["queues"][0]["waiting"] == 1 and stats["decisions_today"] == {"rv_x": 2}

    jsonl = tmp_path / "labels.jsonl"
    assert runner.invoke(review_app, ["export", "--out", str(jsonl)]).exit_code == 0
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert sorted(r["human_label"] for r in rows) == ["allow", "remove"]
    assert all(
        r["category"] == "restricted_logo"
        and r["image"].startswith("s3://")
        and "testworld/restricted_logo" in r["scores"]
        for r in rows
    )
    as_csv = tmp_path / "labels.csv"
    assert runner.invoke(review_app, ["export", "--out", str(as_csv)]).exit_code == 0
    with as_csv.open() as fh:
        table = list(csv.DictReader(fh))
    assert [r["job_id"] for r in table] == [r["job_id"] for r in rows]
    assert json.loads(table[0]["scores"]) == rows[0]["scores"]


def test_the_outbox_hands_out_due_decisions_once_and_backs_off(queue: ReviewQueue) -> None:
    """What the delivery loop relies on: every due decision is handed to one caller (held back
    from the others meanwhile); a failed one comes back after its delay with its attempts
    counted; a delivered one is gone."""
    policy = world_policy()
    for i in range(3):
        queue.submit(make_item(policy, f"out-{i}", score=0.9 - i / 10))
        _claim_decide(queue, "rv_o", ReviewDecision.ALLOW, None)
    due = queue.due(limit=2, hold_s=300)
    assert [e.decision.job_id for e in due] == ["out-0", "out-1"]
    assert [e.attempts for e in due] == [0, 0]
    assert [e.decision.job_id for e in queue.due(limit=10, hold_s=300)] == ["out-2"]
    assert queue.due(limit=10) == []  # all three held by their takers
    first = due[0].decision.review_id
    assert queue.retry_later(first, delay_s=0.0, error="queue_unavailable: down") == 1
    again = queue.due(limit=10, hold_s=300)
    assert [(e.decision.review_id, e.attempts) for e in again] == [(first, 1)]
    assert queue.retry_later(first, delay_s=3600.0, error="queue_unavailable: down") == 2
    assert queue.due(limit=10) == []
    # Not due is not forgotten: the admin's view lists every undelivered decision.
    assert len(queue.undelivered()) == 3
    for entry in due:
        queue.delivered(entry.decision.review_id)
    assert queue.retry_later(first, delay_s=0.0, error="late") == 0  # delivered: nothing to do
    assert [f.job_id for f in queue.undelivered()] == ["out-2"]


def test_the_redis_queue_refuses_appeal_and_notice_items_with_a_code(
    request: pytest.FixtureRequest,
) -> None:
    """Redis-only mode has no appeals and no notices (the API answers 503 for both); the Redis
    queue itself refuses their items rather than queue an appeal an earlier decider could claim
    or a report that cannot jump the queue. Nothing of a refused batch is queued."""
    from moderation.core.review import QUEUE_APPEAL
    from moderation.core.sources import DecisionSource
    from moderation.exceptions import ReviewNeedsDatabase

    policy = world_policy()
    plain = make_item(policy, "redis-plain")
    refused = [
        make_item(policy, "redis-barred").model_copy(update={"barred": ["rv_a"]}),
        make_item(policy, "redis-appeal").model_copy(update={"queue": QUEUE_APPEAL}),
        make_item(policy, "redis-report").model_copy(
            update={"source": DecisionSource.TRUSTED_FLAGGER}
        ),
        make_item(policy, "redis-user").model_copy(update={"source": DecisionSource.USER_REPORT}),
    ]
    with make_queue("redis", request) as queue:
        for item in refused:
            with pytest.raises(ReviewNeedsDatabase) as caught:
                queue.submit_many([plain, item])
            assert caught.value.code == "review_needs_database"
            assert "database.url" in str(caught.value)
        assert queue.claim("rv_b") is None  # not even the plain item of those batches
        queue.submit(plain)
        claim = queue.claim("rv_b")
        assert claim is not None and claim.item.review_id == plain.review_id
