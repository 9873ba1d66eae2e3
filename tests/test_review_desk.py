"""The review use case (ReviewDesk) over the in-memory twins: claims, decisions, the outbox of
final decisions, bank requests and who may see an image."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from moderation.adapters.memory import MemoryBankStore, MemoryReviewQueue
from moderation.core.image_ref import ImageRef
from moderation.core.review import HumanDecision, ReviewDecision
from moderation.exceptions import (
    BankError,
    QueueUnavailable,
    ReviewInvalidDecision,
    ReviewNotFound,
)
from moderation.pipeline.banks import BankService
from moderation.pipeline.review_desk import ReviewDesk
from tests.test_review_queue import make_item, world_policy


@dataclass
class Handed:
    """``on_final`` that fails while ``down`` (the job store unreachable)."""

    finals: list[HumanDecision] = field(default_factory=list)
    down: bool = False

    def __call__(self, final: HumanDecision) -> None:
        if self.down:
            raise QueueUnavailable("job store down")
        self.finals.append(final)


def _desk(
    *, banks: BankService | None = None
) -> tuple[ReviewDesk, MemoryReviewQueue, Handed, list[ImageRef]]:
    queue = MemoryReviewQueue()
    handed = Handed()
    loaded: list[ImageRef] = []

    def load(ref: ImageRef, tenant: str) -> bytes:
        loaded.append(ref)
        return b"raw:" + ref.uri.encode()

    desk = ReviewDesk(
        queue,
        on_final=handed,
        load_image=load,
        render_image=lambda data: b"png:" + data,
        banks=banks,
    )
    return desk, queue, handed, loaded


def test_a_decision_is_handed_on_once_and_leaves_the_outbox() -> None:
    desk, queue, handed, _ = _desk()
    queue.submit(make_item(world_policy(), "job-1"))
    claim = desk.claim("rv_a")
    assert claim is not None
    done = desk.decide(
        "rv_a",
        review_id=claim.item.review_id,
        token=claim.lease.token,
        decision=ReviewDecision.ALLOW,
        reason_code=None,
    )
    assert done.final is not None and done.delivered is True and not done.replay
    assert [f.job_id for f in handed.finals] == ["job-1"]
    assert desk.undelivered() == 0
    again = desk.decide(
        "rv_a",
        review_id=claim.item.review_id,
        token=claim.lease.token,
        decision=ReviewDecision.ALLOW,
        reason_code=None,
    )
    assert again.replay and again.delivered is None and len(handed.finals) == 1
    assert desk.decisions_today("rv_a") == 1


def test_a_failed_hand_on_stays_in_the_outbox_until_delivered() -> None:
    desk, queue, handed, _ = _desk()
    queue.submit(make_item(world_policy(), "job-2"))
    claim = desk.claim("rv_a")
    assert claim is not None
    handed.down = True
    done = desk.decide(
        "rv_a",
        review_id=claim.item.review_id,
        token=claim.lease.token,
        decision=ReviewDecision.REMOVE,
        reason_code="TW_LOGO",
    )
    assert done.final is not None and done.delivered is False
    assert desk.undelivered() == 1 and desk.deliver_outbox(older_than_s=0.0) == (1, 0)
    handed.down = False
    assert desk.deliver_outbox(older_than_s=0.0) == (1, 1)
    assert desk.undelivered() == 0 and [f.job_id for f in handed.finals] == ["job-2"]
    assert desk.deliver_outbox(older_than_s=0.0) == (0, 0)


def test_only_the_lease_holder_sees_the_image() -> None:
    desk, queue, _, loaded = _desk()
    queue.submit(make_item(world_policy(), "job-3"))
    claim = desk.claim("rv_a")
    assert claim is not None
    review_id = claim.item.review_id
    assert desk.image("rv_a", review_id) == b"png:raw:" + claim.item.image.uri.encode()
    for who, rid in (("rv_b", review_id), ("rv_a", "no-such-item")):
        with pytest.raises(ReviewNotFound):
            desk.image(who, rid)
    assert len(loaded) == 1  # nothing was read for the refused requests
    assert desk.release(review_id, reviewer="rv_a")
    with pytest.raises(ReviewNotFound):
        desk.image("rv_a", review_id)


def test_a_bank_addition_needs_a_removal_and_a_configured_bank() -> None:
    banks = BankService(MemoryBankStore(), review_banks=["reviewer-removals"])
    desk, queue, _, _ = _desk(banks=banks)
    item = make_item(world_policy(), "job-4").model_copy(
        update={"content_pdq": "f" * 64, "content_pdq_quality": 90}
    )
    queue.submit(item)
    claim = desk.claim("rv_a")
    assert claim is not None and desk.bank_targets(claim.item) == ["reviewer-removals"]
    decide = {"review_id": item.review_id, "token": claim.lease.token}
    with pytest.raises(ReviewInvalidDecision):
        desk.decide(
            "rv_a",
            decision=ReviewDecision.ALLOW,
            reason_code=None,
            add_to_bank="reviewer-removals",
            **decide,
        )
    removal = {"decision": ReviewDecision.REMOVE, "reason_code": "TW_LOGO", **decide}
    with pytest.raises(BankError):
        desk.decide("rv_a", add_to_bank="elsewhere", **removal)
    done = desk.decide("rv_a", add_to_bank="reviewer-removals", **removal)
    assert done.final is not None
    request = banks.store.addition_request(item.review_id)
    assert request is not None and request.bank == "reviewer-removals"
    assert request.reviewer == "rv_a"


def test_without_banks_an_addition_is_refused() -> None:
    desk, queue, _, _ = _desk()
    queue.submit(make_item(world_policy(), "job-5"))
    claim = desk.claim("rv_a")
    assert claim is not None and desk.bank_targets(claim.item) == []
    with pytest.raises(ReviewInvalidDecision):
        desk.decide(
            "rv_a",
            review_id=claim.item.review_id,
            token=claim.lease.token,
            decision=ReviewDecision.REMOVE,
            reason_code="TW_LOGO",
            add_to_bank="reviewer-removals",
        )
    assert desk.undelivered() == 0 and desk.requeue(claim.item.review_id)
