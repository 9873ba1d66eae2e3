"""The review queue on PostgreSQL across a database restart: while the server is down every
call fails as transient (503 at the pages, a retry at the workers); once it is back the waiting
items, a reviewer's live lease and an undelivered decision are all there, once each. Also the
upkeep of the lease log."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from psycopg_pool import ConnectionPool

from moderation.adapters.postgres.embedded import EmbeddedPostgres
from moderation.adapters.postgres.migrate import upgrade
from moderation.adapters.postgres.review import PostgresReviewQueue
from moderation.core.review import ReviewDecision
from moderation.exceptions import DatabaseUnavailable
from tests.test_review_queue import make_item, make_queue, world_policy

pytestmark = pytest.mark.xdist_group("postgres")


def test_a_database_restart_loses_and_doubles_nothing() -> None:
    # Its own folder (short, outside pytest's basetemp): the server is stopped and started again
    # on it.
    root = Path(tempfile.mkdtemp(prefix="pg-restart-"))
    server = EmbeddedPostgres(data_dir=root / "pg")
    url = server.start()
    pool = ConnectionPool(url, min_size=1, max_size=4, timeout=5)
    try:
        upgrade(pool)
        queue = PostgresReviewQueue(pool, lease_s=600, age_doubling_s=900)
        policy = world_policy()
        for i in range(4):
            queue.submit(make_item(policy, f"restart-{i}", score=0.9 - i / 10))
        decided = queue.claim("rv_a")
        assert decided is not None
        queue.decide(
            decided.item.review_id,
            reviewer="rv_a",
            token=decided.lease.token,
            decision=ReviewDecision.ALLOW,
            reason_code=None,
        )
        held = queue.claim("rv_b")
        assert held is not None

        server.stop()
        with pytest.raises(DatabaseUnavailable) as down:
            queue.claim("rv_c")
        assert down.value.transient
        with pytest.raises(DatabaseUnavailable):
            queue.decide(
                held.item.review_id,
                reviewer="rv_b",
                token=held.lease.token,
                decision=ReviewDecision.ALLOW,
                reason_code=None,
            )

        assert server.start() == url and server.had_data
        # A fresh pool: when the old one reconnects depends on its backoff (psycopg_pool's
        # business); what is tested here is the state the restarted server holds.
        pool.close()
        pool = ConnectionPool(url, min_size=1, max_size=4, timeout=30)
        queue = PostgresReviewQueue(pool, lease_s=600, age_doubling_s=900)
        again = queue.claim("rv_b")  # the live lease survived: the same item, the same token
        assert again is not None and again.lease == held.lease
        assert [f.review_id for f in queue.undelivered()] == [decided.item.review_id]
        assert {s.policy_id: (s.waiting, s.in_review) for s in queue.stats()} == {policy.id: (2, 1)}
        result = queue.decide(  # the decision refused while down can be sent again
            held.item.review_id,
            reviewer="rv_b",
            token=held.lease.token,
            decision=ReviewDecision.ALLOW,
            reason_code=None,
        )
        assert not result.replay
        rest = [queue.claim(f"rv_{n}") for n in ("c", "d", "e")]
        assert sorted(c.item.job_id for c in rest if c is not None) == ["restart-2", "restart-3"]
        assert queue.decisions_on() == {"rv_a": 1, "rv_b": 1}
    finally:
        pool.close()
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_lease_rows_are_pruned_after_a_day(request: pytest.FixtureRequest) -> None:
    with make_queue("postgres", request) as queue:
        assert isinstance(queue, PostgresReviewQueue)
        for i in range(3):
            queue.submit(make_item(world_policy(), f"prune-{i}"))
            claim = queue.claim("rv_p")
            assert claim is not None
            queue.decide(
                claim.item.review_id,
                reviewer="rv_p",
                token=claim.lease.token,
                decision=ReviewDecision.ALLOW,
                reason_code=None,
            )
            queue.delivered(claim.item.review_id)
        with queue._pool.connection() as conn:
            conn.execute(
                "UPDATE review_leases SET claimed_at = claimed_at - 86400 - 60"
                " WHERE review_id IN (SELECT review_id FROM review_items WHERE job_id <> %s)",
                ("prune-2",),
            )
        assert queue.due() == []  # the delivery loop's first call of this process prunes
        assert queue.prune() == 0
        with queue._pool.connection() as conn:
            [(left,)] = conn.execute("SELECT count(*) FROM review_leases").fetchall()
        assert left == 1
        # The decisions themselves are kept (the labelled dataset, per-reviewer history).
        assert queue.decisions_on() == {"rv_p": 3} and len(list(queue.export())) == 3
