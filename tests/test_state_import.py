"""``moderation db import-redis``: a Redis-only release's state, written through the Redis
adapters on a real valkey server, imported into a real PostgreSQL and read back through the
PostgreSQL adapters; a dry run writes nothing; a second run imports nothing twice; a run stopped
half-way is carried on by the next. The use case's bookkeeping over the twins too."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import numpy as np
import pytest
from psycopg_pool import ConnectionPool
from typer.testing import CliRunner

from moderation.adapters import redis_banks
from moderation.adapters.memory.legacy_state import MemoryLegacyState
from moderation.adapters.memory.reviewers import MemoryReviewerStore
from moderation.adapters.memory.state_import import MemoryStateImport
from moderation.adapters.postgres.banks import PostgresBankStore
from moderation.adapters.postgres.review import PostgresReviewQueue
from moderation.adapters.postgres.reviewers import PostgresReviewerStore
from moderation.adapters.redis_banks import RedisBankStore
from moderation.adapters.redis_review import RedisReviewQueue
from moderation.adapters.redis_reviewers import RedisReviewerStore
from moderation.adapters.support.redis import connect
from moderation.compose.state_import import open_state_importer
from moderation.core.banks import BankInfo, EntryData
from moderation.core.legacy_state import LegacyBankEntry, LegacyReviewRecord
from moderation.core.review import ReviewDecision
from moderation.core.reviewers import ReviewerAccount, Role
from moderation.exceptions import DatabaseUnavailable
from moderation.pipeline.state_import import ImportSummary, StateImporter
from moderation.ports import BankRequest
from moderation.settings import Settings
from tests.test_review_queue import make_item, world_policy

pytestmark = pytest.mark.xdist_group("postgres")

_TABLES = (
    "review_items, review_policies, review_leases, review_decisions, review_outbox,"
    " review_away, review_reveals, reviewer_accounts, banks, bank_segments, bank_entries,"
    " bank_requests"
)


@pytest.fixture
def pool(pg_url: str) -> Iterator[ConnectionPool]:
    """This module's database, emptied."""
    pool = ConnectionPool(pg_url, min_size=1, max_size=4, open=True)
    with pool.connection() as conn:
        conn.execute(f"TRUNCATE {_TABLES} CASCADE")
    try:
        yield pool
    finally:
        pool.close()


def _counts(pool: ConnectionPool) -> dict[str, int]:
    tables = [t.strip() for t in _TABLES.split(",")]
    with pool.connection() as conn:
        return {
            t: int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0])  # type: ignore[index]
            for t in tables
        }


def _hashes(n: int, seed: int) -> list[EntryData]:
    rng = np.random.default_rng(seed)
    return [
        EntryData(pdq=bytes(r).hex(), source="ncmec", label=f"l{k}", reference_id=f"ref-{k}")
        for k, r in enumerate(rng.integers(0, 256, (n, 32), np.uint8))
    ]


def _decide(q: RedisReviewQueue, reviewer: str, decision: ReviewDecision, reason: str | None):  # type: ignore[no-untyped-def]
    claim = q.claim(reviewer)
    assert claim is not None
    q.decide(
        claim.item.review_id,
        reviewer=reviewer,
        token=claim.lease.token,
        decision=decision,
        reason_code=reason,
    )
    return claim


@pytest.fixture(autouse=True)
def _small_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis banks of several segments with a few thousand entries."""
    monkeypatch.setattr(redis_banks, "SEGMENT_ROWS", 1000)


def _populate(redis_url: str, settings: Settings) -> dict[str, object]:
    """The state a Redis-only release leaves: every kind of review item, accounts, banks."""
    client = connect(redis_url, decode=True)
    q = RedisReviewQueue(client, lease_s=600, age_doubling_s=900, prefix=settings.review.key_prefix)
    policy = world_policy()
    # Rank orders the claims: the highest score first, a critical item before all of them.
    q.submit(make_item(policy, "imp-final", score=0.99))  # decided, handed on
    q.submit(make_item(policy, "imp-outbox", score=0.98))  # decided, in the outbox (2 failures)
    q.submit(make_item(policy, "imp-leased", score=0.96))  # held by rv_hold
    for i in range(7):
        q.submit(make_item(policy, f"imp-wait-{i}", score=0.5 - i / 100))
    delivered = _decide(q, "rv_a", ReviewDecision.ALLOW, None)
    q.delivered(delivered.item.review_id)
    outbox = _decide(q, "rv_a", ReviewDecision.REMOVE, "TW_LOGO")
    q.retry_later(outbox.item.review_id, delay_s=30, error="callback 503")
    q.retry_later(outbox.item.review_id, delay_s=60, error="callback 503 again")
    held = q.claim("rv_hold")
    assert held is not None and held.item.job_id == "imp-leased"
    q.submit(make_item(policy, "imp-first", category_id="contraband_symbol", score=0.97))
    first = _decide(q, "rv_a", ReviewDecision.REMOVE, "TW_CONTRABAND")  # awaits a second review
    assert first.item.job_id == "imp-first"
    assert [d.job_id for d in q.undelivered()] == ["imp-outbox"]

    banks = RedisBankStore(connect(redis_url), prefix=settings.banks.key_prefix)
    banks.create("known-bad", description="imported")
    with banks.writing("known-bad"):
        banks.append("known-bad", _hashes(2500, 1))  # three segments
        banks.append("known-bad", _hashes(3, 2))  # a small append into the last segment
    banks.create("videos")
    frames = [
        e.model_copy(
            update={"video": "clip-1", "frame_number": k, "timestamp_s": k / 2, "video_frames": 4}
        )
        for k, e in enumerate(_hashes(4, 5))
    ]
    with banks.writing("videos"):
        banks.append("videos", frames)
    banks.remove("known-bad", [5, 17, 2501])
    banks.create("empty-bank")
    for rid in (outbox.item.review_id, first.item.review_id):
        banks.request_addition(
            BankRequest(review_id=rid, bank="known-bad", reviewer="rv_a", at=datetime.now(UTC)),
            ttl_s=3600,
        )

    reviewers = RedisReviewerStore(client, prefix=settings.review.key_prefix)
    for name, role, disabled in (("alice", Role.REVIEWER, False), ("root", Role.ADMIN, False)):
        reviewers.create(
            ReviewerAccount(
                username=name,
                role=role,
                password_hash=f"$argon2id$v=19$m=65536,t=3,p=4${name}",
                disabled=disabled,
                created_at=1_700_000_000.0,
            )
        )
    reviewers.set_disabled("alice", True)
    return {"queue": q, "banks": banks, "reviewers": reviewers, "held": held, "outbox": outbox}


def test_import_reads_back_the_same_state_and_a_rerun_imports_nothing(
    redis_url: str, pool: ConnectionPool, settings: Settings
) -> None:
    legacy = _populate(redis_url, settings)
    rq: RedisReviewQueue = legacy["queue"]  # type: ignore[assignment]
    rb: RedisBankStore = legacy["banks"]  # type: ignore[assignment]
    rr: RedisReviewerStore = legacy["reviewers"]  # type: ignore[assignment]
    importer = open_state_importer(settings, pool, redis_url=redis_url, batch=4)

    # A dry run counts exactly what a run imports, and writes nothing.
    dry = ImportSummary(dry_run=True)
    importer.reviewers(dry)
    importer.review(dry)
    importer.banks(dry)
    assert set(_counts(pool).values()) == {0}

    done = ImportSummary()
    advanced: list[int] = []
    importer.reviewers(done)
    assert importer.review_total() == 11
    importer.review(done, advance=advanced.append)
    importer.banks(done, advance=advanced.append)
    assert sum(advanced) == 11 + 2503 + 4
    expected = {
        "dry_run": False,
        "reviewers": {"read": 2, "imported": 2, "present": 0},
        "review_items": {"read": 11, "imported": 11, "present": 0},
        "bank_requests": {"read": 2, "imported": 2, "present": 0},
        "banks": {"read": 3, "imported": 3, "present": 0},
        "bank_entries": {"read": 2507, "imported": 2507, "present": 0},
    }
    assert done.as_dict() == expected
    assert dry.as_dict() == {**expected, "dry_run": True}

    # Reviewer accounts: the same hashes, roles and flags.
    assert PostgresReviewerStore(pool).all() == rr.all()

    # The review queue: the same stats, export, outbox and per-day counts...
    pq = PostgresReviewQueue(pool, lease_s=600, age_doubling_s=900)

    def stats(q: RedisReviewQueue | PostgresReviewQueue) -> list[tuple[str, int, int]]:
        return [(s.policy_id, s.waiting, s.in_review) for s in q.stats()]

    assert stats(pq) == stats(rq) == [(world_policy().id, 8, 1)]
    assert list(pq.export()) == list(rq.export())
    assert pq.decisions_on() == rq.decisions_on() == {"rv_a": 3}
    outbox_claim = legacy["outbox"]
    [undelivered] = pq.undelivered()
    assert undelivered.review_id == outbox_claim.item.review_id  # type: ignore[attr-defined]

    # ... the live lease still holds, and its holder's decision (same token) counts.
    held = legacy["held"]
    assert pq.holds("rv_hold", held.item.review_id)  # type: ignore[attr-defined]
    again = pq.claim("rv_hold")
    assert again is not None and again.lease.token == held.lease.token  # type: ignore[attr-defined]
    result = pq.decide(
        held.item.review_id,  # type: ignore[attr-defined]
        reviewer="rv_hold",
        token=held.lease.token,  # type: ignore[attr-defined]
        decision=ReviewDecision.ALLOW,
        reason_code=None,
    )
    assert not result.replay and result.outcome.final is not None

    # The critical item waits for a second, different reviewer, with its first decision.
    assert pq.claim("rv_a") is not None  # rv_a gets a plain waiting item, not the critical one
    second = pq.claim("rv_b")
    assert second is not None and second.first is not None and second.first.reviewer == "rv_a"

    # Banks: the same entries with the same ids, tombstones, segments and requests.
    pb = PostgresBankStore(pool)
    for name in ("known-bad", "empty-bank", "videos"):
        r_info, p_info = rb.info(name), pb.info(name)
        assert (p_info.entries, p_info.removed, p_info.description, p_info.created_at) == (
            r_info.entries,
            r_info.removed,
            r_info.description,
            r_info.created_at,
        )
        r_man, p_man = rb.manifest(name), pb.manifest(name)
        assert (p_man.segments, p_man.removed) == (r_man.segments, r_man.removed)
        assert list(pb.scan(name)) == list(rb.scan(name))
        for segment in r_man.segments:
            assert pb.read_hashes(name, segment) == rb.read_hashes(name, segment)
    assert [e.video_frames for e in pb.scan("videos")] == [4] * 4  # a video bank's frames
    assert pb.info("known-bad").removed == 3 and len(pb.manifest("known-bad").segments) == 3
    assert pb.entries("known-bad", [4, 5, 2502]) == rb.entries("known-bad", [4, 5, 2502])
    request = pb.addition_request(outbox_claim.item.review_id)  # type: ignore[attr-defined]
    assert request == rb.addition_request(outbox_claim.item.review_id)  # type: ignore[attr-defined]
    # A bank imported is a bank like any other: appends continue after the imported ids.
    with pb.writing("known-bad"):
        assert pb.append("known-bad", _hashes(1, 9)) == [2503]

    # A re-run imports nothing and changes nothing.
    before = _counts(pool)
    rerun = importer.run()
    assert _counts(pool) == before
    assert {k: v for k, v in rerun.as_dict().items() if k != "dry_run"} == {
        kind: {"read": c["read"], "imported": 0, "present": c["read"]}  # type: ignore[index]
        for kind, c in expected.items()
        if kind != "dry_run"
    }


def test_the_cli_imports_and_says_what_it_did(
    redis_url: str,
    pool: ConnectionPool,
    pg_url: str,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from moderation.cli import app

    _populate(redis_url, settings)
    monkeypatch.setenv("MODERATION_DATABASE__URL", pg_url)
    monkeypatch.setenv("MODERATION_REDIS_URL", redis_url)
    runner = CliRunner()
    dry = runner.invoke(app, ["db", "import-redis", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "review items: read 11, would import 11, already in PostgreSQL 0" in dry.output
    assert "dry run: nothing was written" in dry.output
    assert set(_counts(pool).values()) == {0}
    done = runner.invoke(app, ["db", "import-redis", "--json"])
    assert done.exit_code == 0, done.output
    assert '"bank_entries": {"read": 2507, "imported": 2507, "present": 0}' in done.output
    again = runner.invoke(app, ["db", "import-redis"])
    assert again.exit_code == 0, again.output
    assert "bank entries: read 2507, imported 0, already in PostgreSQL 2507" in again.output


# --- the use case over the twins ---------------------------------------------------------------


def _records(n: int) -> list[LegacyReviewRecord]:
    policy = world_policy()
    return [
        LegacyReviewRecord(item=make_item(policy, f"twin-{i}"), state="queued", rank=float(i))
        for i in range(n)
    ]


def _importer(source: MemoryLegacyState, target: MemoryStateImport) -> StateImporter:
    accounts = MemoryReviewerStore()
    accounts.create(
        ReviewerAccount(
            username="bob", role=Role.REVIEWER, password_hash="h", disabled=False, created_at=1.0
        )
    )
    return StateImporter(
        reviews=source,
        accounts=accounts,
        bank_source=source,
        target=target,
        lease_s=300,
        request_ttl_s=3600,
        batch=10,
    )


def test_a_run_stopped_half_way_is_carried_on_by_the_next() -> None:
    info = BankInfo(name="twin-bank", created_at=datetime.now(UTC), version=3)
    entries = [LegacyBankEntry(id=i, data=d, removed=i == 7) for i, d in enumerate(_hashes(250, 3))]
    source = MemoryLegacyState(_records(45), [(info, entries)])
    target = MemoryStateImport()
    target.fail_after = 2  # the database goes away after two batches of ten
    importer = _importer(source, target)
    with pytest.raises(DatabaseUnavailable):
        importer.run()
    assert len(target.items) == 20 and target.reviewers.keys() == {"bob"}

    target.fail_after = None
    resumed = importer.run()
    assert resumed.review_items.imported == 25 and resumed.review_items.present == 20
    assert resumed.reviewers.present == 1 and resumed.banks.imported == 1
    assert len(target.items) == 45
    _, rows = target.banks["twin-bank"]
    assert [e.id for e in rows] == list(range(250)) and [e.id for e in rows if e.removed] == [7]
    assert importer.run().review_items.imported == 0


def test_a_dry_run_over_the_twins_writes_nothing() -> None:
    info = BankInfo(name="twin-bank", created_at=datetime.now(UTC))
    source = MemoryLegacyState(_records(3), [(info, [])])
    target = MemoryStateImport()
    summary = _importer(source, target).run(dry_run=True)
    assert (summary.review_items.imported, summary.banks.imported, summary.reviewers.imported) == (
        3,
        1,
        1,
    )
    assert not target.items and not target.banks and not target.reviewers


def test_a_process_without_a_database_warns_that_redis_holds_durable_state(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from moderation.compose.database import warn_redis_only

    with caplog.at_level("WARNING", logger="moderation.compose.database"):
        assert warn_redis_only(Settings(redis_url="redis://localhost:1/0"), process="API")
    [record] = caplog.records
    assert "development only" in record.getMessage()
    assert "moderation db import-redis" in record.getMessage()
    caplog.clear()
    with_db = Settings(
        redis_url="redis://localhost:1/0",
        database={"url": "postgresql://localhost:1/x"},  # type: ignore[arg-type]
    )
    assert not warn_redis_only(with_db, process="API")
    assert not warn_redis_only(Settings(redis_url=None), process="API")
    assert caplog.records == []


def test_an_escalated_item_and_queue_grants_are_imported_as_they_are(
    redis_url: str, pool: ConnectionPool, settings: Settings
) -> None:
    client = connect(redis_url, decode=True)
    rq = RedisReviewQueue(
        client, lease_s=600, age_doubling_s=900, prefix=settings.review.key_prefix
    )
    rq.submit(make_item(world_policy(), "imp-escalated", score=0.9))
    claim = rq.claim("rv_a")
    assert claim is not None
    rq.move(claim.item.review_id, reviewer="rv_a", token=claim.lease.token, queue="escalation")
    users = RedisReviewerStore(client, prefix=settings.review.key_prefix)
    users.create(
        ReviewerAccount(
            username="carol",
            role=Role.REVIEWER,
            password_hash="$argon2id$v=19$m=65536,t=3,p=4$carol",
            disabled=False,
            created_at=1_700_000_000.0,
        )
    )
    users.set_queues("carol", ["appeals"])
    open_state_importer(settings, pool, redis_url=redis_url, batch=4).run()

    pq = PostgresReviewQueue(pool, lease_s=600, age_doubling_s=900)
    assert [(s.queue, s.waiting) for s in pq.stats()] == [("escalation", 1), ("review", 0)]
    assert pq.claim("rv_b") is None  # not in the review queue
    senior = pq.claim("rv_b", queues=("escalation",))
    assert senior is not None and senior.item.job_id == "imp-escalated"
    assert PostgresReviewerStore(pool).all() == users.all()
    client.close()
