"""The review outbox's automatic redelivery (ReviewOutbox): a final decision whose hand-on
failed is tried again by the delivery loop after a growing delay, without anyone clicking, and
leaves the outbox once handed on; over the in-memory twin (a clock of its own) and over a real
PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from moderation.adapters.memory import MemoryBlobStore, MemoryReviewQueue
from moderation.core.review import ReviewDecision, outbox_delay
from moderation.metrics import metrics
from moderation.pipeline.review_desk import ReviewDesk
from moderation.pipeline.review_evidence import ReviewEvidence
from moderation.pipeline.review_outbox import ReviewOutbox
from moderation.ports import ReviewQueue
from moderation.settings import Settings
from tests.test_review_desk import Handed
from tests.test_review_queue import make_item, make_queue, with_evidence, world_policy


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _decide(desk: ReviewDesk, job_id: str) -> str:
    item = make_item(world_policy(), job_id)
    desk.queue.submit(with_evidence(item, b"scored:" + job_id.encode(), desk.evidence.blobs))
    claim = desk.claim("rv_a")
    assert claim is not None
    done = desk.decide(
        "rv_a",
        review_id=claim.item.review_id,
        token=claim.lease.token,
        decision=ReviewDecision.ALLOW,
        reason_code=None,
    )
    assert done.final is not None
    return claim.item.review_id


def _desk(queue: ReviewQueue, handed: Handed, *, backoff_s: float) -> ReviewDesk:
    return ReviewDesk(
        queue,
        on_final=handed,
        evidence=ReviewEvidence(MemoryBlobStore(), retention_s=3600),
        render_image=lambda data: data,
        backoff_s=backoff_s,
        backoff_max_s=20.0,
    )


def test_backoff_doubles_up_to_its_maximum() -> None:
    delays = [outbox_delay(n, base_s=5.0, max_s=60.0) for n in range(7)]
    assert delays == [0.0, 5.0, 10.0, 20.0, 40.0, 60.0, 60.0]
    assert outbox_delay(10_000, base_s=5.0, max_s=60.0) == 60.0


def test_a_failed_hand_on_is_retried_with_backoff_until_it_works() -> None:
    handoffs = metrics().review_handoffs
    failed, delivered = (handoffs.labels(o)._value.get() for o in ("failed", "delivered"))
    clock = Clock(1_000_000.0)
    queue = MemoryReviewQueue(clock=clock)
    handed = Handed(down=True)
    desk = _desk(queue, handed, backoff_s=5.0)
    outbox = ReviewOutbox(queue, handed, backoff_s=5.0, backoff_max_s=20.0)
    review_id = _decide(desk, "job-1")  # the first hand-on fails: due again in 5 s
    assert outbox.deliver_due() == (0, 0)
    clock.now += 5.0
    assert outbox.deliver_due() == (1, 0)  # second failure: due again in 10 s
    clock.now += 9.0
    assert outbox.deliver_due() == (0, 0)
    clock.now += 1.0
    assert outbox.deliver_due() == (1, 0)  # third failure: 20 s (the maximum)
    handed.down = False
    clock.now += 19.0
    assert outbox.deliver_due() == (0, 0) and handed.finals == []
    clock.now += 1.0
    assert outbox.deliver_due() == (1, 1)
    assert [f.review_id for f in handed.finals] == [review_id]
    assert queue.undelivered() == [] and outbox.deliver_due() == (0, 0)
    assert handoffs.labels("failed")._value.get() - failed == 3
    assert handoffs.labels("delivered")._value.get() - delivered == 1


def test_a_decision_whose_process_died_before_handing_it_on_is_delivered() -> None:
    """A crash between recording the decision and ``on_final``: nothing failed, nothing was
    rescheduled; the loop finds it due at once."""
    queue = MemoryReviewQueue()
    queue.submit(make_item(world_policy(), "job-crash"))
    claim = queue.claim("rv_a")
    assert claim is not None
    queue.decide(
        claim.item.review_id,
        reviewer="rv_a",
        token=claim.lease.token,
        decision=ReviewDecision.ALLOW,
        reason_code=None,
    )  # the queue recorded it; the process "died" before on_final
    handed = Handed()
    assert ReviewOutbox(queue, handed).deliver_due() == (1, 1)
    assert [f.job_id for f in handed.finals] == ["job-crash"]


@pytest.fixture
def pg_queue(request: pytest.FixtureRequest) -> Iterator[ReviewQueue]:
    with make_queue("postgres", request) as queue:
        yield queue


def test_redelivery_over_postgres_records_attempts_and_shares_the_work(
    pg_queue: ReviewQueue,
) -> None:
    handed = Handed(down=True)
    desk = _desk(pg_queue, handed, backoff_s=3600.0)
    review_id = _decide(desk, "job-pg")
    assert pg_queue.due() == []  # failed once: not due for an hour
    pool = pg_queue._pool  # type: ignore[attr-defined]
    with pool.connection() as conn:
        attempts, error = conn.execute(
            "SELECT attempts, last_error FROM review_outbox WHERE review_id = %s", (review_id,)
        ).fetchone()
        assert attempts == 1 and error.startswith("queue_unavailable")
        conn.execute("UPDATE review_outbox SET due_at = 0")  # the hour has passed
    # Two delivery loops (two workers) at once: one takes it, the other finds nothing due.
    other = ReviewOutbox(pg_queue, handed)
    taken = pg_queue.due(limit=10, hold_s=60)
    assert [e.decision.review_id for e in taken] == [review_id] and taken[0].attempts == 1
    assert other.deliver_due() == (0, 0)
    handed.down = False
    assert desk.outbox.hand_on(taken[0].decision, attempts=taken[0].attempts)
    assert [f.review_id for f in handed.finals] == [review_id] and pg_queue.undelivered() == []


def test_the_workers_run_the_delivery_loop_unless_switched_off() -> None:
    from moderation.compose.worker import _outbox_delivery

    handed = Handed()
    queue = MemoryReviewQueue()
    evidence = ReviewEvidence(MemoryBlobStore(), retention_s=3600)
    tasks = _outbox_delivery(Settings(), queue, handed, evidence)
    assert [(every, what) for every, _, what in tasks] == [(10.0, "review outbox delivery")]
    off = Settings().model_copy(
        update={"review": Settings().review.model_copy(update={"outbox_retry_s": 0})}
    )
    assert _outbox_delivery(off, queue, handed, evidence) == []
    queue.submit(make_item(world_policy(), "job-w"))
    claim = queue.claim("rv_a")
    assert claim is not None
    queue.decide(
        claim.item.review_id,
        reviewer="rv_a",
        token=claim.lease.token,
        decision=ReviewDecision.ALLOW,
        reason_code=None,
    )
    tasks[0][1]()  # what the maintenance thread calls every outbox_retry_s
    assert [f.job_id for f in handed.finals] == ["job-w"]
