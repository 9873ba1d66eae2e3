"""The reviewer console's queue rules (issue 21) on every store (PostgreSQL, Redis on a real
valkey server, the twin) and the desk over the twin with a controlled clock.

Taking a decision back: the queue's ``undo``; the desk's undo window (a decision is recorded
at once but handed on only once the window has passed, by the outbox maintenance the workers
run, so closing the tab loses nothing). Skips: a skipped item goes to others at once and stays
away from the reviewer who skipped it for ``review.skip_away_s``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from moderation.core.review import ReviewDecision
from moderation.exceptions import (
    ReviewAlreadyDecided,
    ReviewInvalidDecision,
    ReviewLeaseExpired,
    ReviewNotFound,
    ReviewNotLeaseHolder,
    ReviewTakenBack,
    ReviewUndoTooLate,
)
from moderation.pipeline.review_desk import UNDO_MARGIN_S, ReviewDesk
from moderation.pipeline.review_evidence import ReviewEvidence
from moderation.ports import Claim, ReviewQueue
from tests.test_review_desk import CountingBlobs, Handed, KeptQueue
from tests.test_review_queue import make_item, make_queue, world_policy


@pytest.fixture(name="store", params=["postgres", "redis", "memory"])
def _store(request: pytest.FixtureRequest) -> Iterator[ReviewQueue]:
    """The PostgreSQL review queue, the Redis one on a real valkey server, and the twin."""
    with make_queue(request.param, request) as queue:
        yield queue


def _claim(queue: ReviewQueue, reviewer: str, queues: tuple[str, ...] = ("review",)) -> Claim:
    claim = queue.claim(reviewer, queues=queues)
    assert claim is not None
    return claim


def _decide(queue: ReviewQueue, claim: Claim, decision: ReviewDecision, code: str | None) -> None:
    queue.decide(
        claim.item.review_id,
        reviewer=claim.lease.reviewer,
        token=claim.lease.token,
        decision=decision,
        reason_code=code,
    )


def test_a_final_decision_is_undone_and_the_item_leased_again(store: ReviewQueue) -> None:
    queue = store
    queue.submit(make_item(world_policy(), "undo-1"))
    claim = _claim(queue, "rv_u")
    rid = claim.item.review_id
    _decide(queue, claim, ReviewDecision.ALLOW, None)
    assert queue.decisions_on() == {"rv_u": 1}
    # Someone else cannot take it back, nor with another lease's token.
    with pytest.raises(ReviewUndoTooLate):
        queue.undo(rid, reviewer="rv_other", token=claim.lease.token, within_s=3600)
    with pytest.raises(ReviewUndoTooLate):
        queue.undo(rid, reviewer="rv_u", token="not-the-token", within_s=3600)

    back = queue.undo(rid, reviewer="rv_u", token=claim.lease.token, within_s=3600)
    assert back.item.review_id == rid and back.lease.reviewer == "rv_u"
    assert back.lease.token != claim.lease.token and back.first is None
    assert queue.holds("rv_u", rid)
    assert queue.undelivered() == [] and queue.due() == []  # nothing left to hand on
    assert queue.decisions_on().get("rv_u", 0) == 0
    assert [s.in_review for s in queue.stats()] == [1]
    held = queue.claim("rv_u")  # the reviewer's next claim is this lease again
    assert held is not None and held.lease.token == back.lease.token
    # The same undo again: the decision is gone.
    with pytest.raises(ReviewUndoTooLate):
        queue.undo(rid, reviewer="rv_u", token=claim.lease.token, within_s=3600)

    # Decided again under the new lease; once handed on it can no longer be undone.
    _decide(queue, back, ReviewDecision.REMOVE, "TW_LOGO")
    (final,) = queue.undelivered()
    assert final.decision is ReviewDecision.REMOVE and final.reviewers == ["rv_u"]
    queue.delivered(rid)
    with pytest.raises(ReviewUndoTooLate):
        queue.undo(rid, reviewer="rv_u", token=back.lease.token, within_s=3600)


def test_a_critical_first_removal_is_undone_only_before_the_second_reviewer_has_it(
    store: ReviewQueue,
) -> None:
    queue = store
    policy = world_policy()
    queue.submit(make_item(policy, "undo-c1", category_id="contraband_symbol"))
    claim = _claim(queue, "rv_a")
    _decide(queue, claim, ReviewDecision.REMOVE, "TW_CONTRABAND")
    back = queue.undo(claim.item.review_id, reviewer="rv_a", token=claim.lease.token, within_s=3600)
    assert back.first is None  # the pending removal is forgotten
    _decide(queue, back, ReviewDecision.REMOVE, "TW_CONTRABAND")
    second = _claim(queue, "rv_b")  # a second reviewer has it now
    assert second.first is not None and second.first.reviewer == "rv_a"
    with pytest.raises(ReviewUndoTooLate):
        queue.undo(claim.item.review_id, reviewer="rv_a", token=back.lease.token, within_s=3600)
    # The second reviewer disagrees (the item goes to the escalation queue) and takes that
    # back before a senior has it: the first removal waits for its second review again.
    _decide(queue, second, ReviewDecision.ALLOW, None)
    again = queue.undo(
        claim.item.review_id, reviewer="rv_b", token=second.lease.token, within_s=3600
    )
    assert again.first is not None and again.first.reviewer == "rv_a"
    assert again.first.disputes is None and again.queue == "review"
    assert queue.undelivered() == []
    # Disagreeing again, then a senior takes it: too late to undo.
    _decide(queue, again, ReviewDecision.ALLOW, None)
    senior = _claim(queue, "rv_c", queues=("escalation",))
    assert senior.first is not None and senior.first.deciders() == ["rv_a", "rv_b"]
    with pytest.raises(ReviewUndoTooLate):
        queue.undo(claim.item.review_id, reviewer="rv_b", token=again.lease.token, within_s=3600)


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


def _desk(undo_s: float) -> tuple[ReviewDesk, KeptQueue, Handed, Clock]:
    clock = Clock()
    queue = KeptQueue(clock=clock)
    queue.blobs = blobs = CountingBlobs()
    handed = Handed()
    desk = ReviewDesk(
        queue,
        on_final=handed,
        evidence=ReviewEvidence(blobs, retention_s=3600),
        render_image=lambda data: data,
        undo_window_s=undo_s,
    )
    return desk, queue, handed, clock


def test_the_undo_window_defers_the_effects_until_it_has_passed() -> None:
    desk, queue, handed, clock = _desk(10.0)
    policy = world_policy()
    for i in range(2):
        queue.submit(make_item(policy, f"w-{i}", score=0.9 - i / 10))
    first = desk.claim("rv_w")
    assert first is not None
    done = desk.decide(
        "rv_w",
        review_id=first.item.review_id,
        token=first.lease.token,
        decision=ReviewDecision.ALLOW,
        reason_code=None,
    )
    assert done.final is not None and done.delivered is False
    assert handed.finals == []  # recorded, not handed on
    nxt = desk.claim("rv_w")
    assert nxt is not None and nxt.item.review_id != first.item.review_id

    # Within the window: undone; the item shown next goes back to the queue.
    clock.t += 9.0
    back = desk.undo(
        "rv_w", review_id=first.item.review_id, token=first.lease.token, holding=nxt.item.review_id
    )
    assert back.item.review_id == first.item.review_id
    assert not queue.holds("rv_w", nxt.item.review_id)
    assert desk.outbox.deliver_due() == (0, 0)
    assert handed.finals == []

    # Decided again, and the tab closed: the maintenance hands it on after the window, once.
    desk.decide(
        "rv_w",
        review_id=back.item.review_id,
        token=back.lease.token,
        decision=ReviewDecision.REMOVE,
        reason_code="TW_LOGO",
    )
    clock.t += 10.0 + UNDO_MARGIN_S - 0.5
    assert desk.outbox.deliver_due() == (0, 0)  # still inside window + margin
    clock.t += 0.5
    assert desk.outbox.deliver_due() == (1, 1)
    assert [(f.job_id, f.decision) for f in handed.finals] == [("w-0", ReviewDecision.REMOVE)]
    with pytest.raises(ReviewUndoTooLate):
        desk.undo("rv_w", review_id=back.item.review_id, token=back.lease.token)
    assert desk.outbox.deliver_due() == (0, 0)


def test_after_the_window_an_undo_is_refused_even_before_the_hand_on() -> None:
    desk, queue, handed, clock = _desk(10.0)
    queue.submit(make_item(world_policy(), "late-1"))
    claim = desk.claim("rv_l")
    assert claim is not None
    desk.decide(
        "rv_l",
        review_id=claim.item.review_id,
        token=claim.lease.token,
        decision=ReviewDecision.REMOVE,
        reason_code="TW_LOGO",
    )
    clock.t += 10.5  # past the window, inside the margin: nothing handed on yet
    with pytest.raises(ReviewUndoTooLate):
        desk.undo("rv_l", review_id=claim.item.review_id, token=claim.lease.token)
    assert handed.finals == []
    clock.t += UNDO_MARGIN_S
    assert desk.outbox.deliver_due() == (1, 1)


def test_without_a_window_decisions_are_handed_on_at_once_and_cannot_be_undone() -> None:
    desk, queue, handed, _ = _desk(0.0)
    queue.submit(make_item(world_policy(), "now-1"))
    claim = desk.claim("rv_n")
    assert claim is not None
    done = desk.decide(
        "rv_n",
        review_id=claim.item.review_id,
        token=claim.lease.token,
        decision=ReviewDecision.ALLOW,
        reason_code=None,
    )
    assert done.delivered is True and len(handed.finals) == 1
    with pytest.raises(ReviewUndoTooLate):
        desk.undo("rv_n", review_id=claim.item.review_id, token=claim.lease.token)


def test_a_skipped_item_goes_to_others_and_stays_away_from_the_skipper(
    store: ReviewQueue,
) -> None:
    queue = store
    policy = world_policy()
    queue.submit(make_item(policy, "skip-hi", score=0.9))
    queue.submit(make_item(policy, "skip-lo", score=0.4))
    hi = _claim(queue, "rv_s")
    assert hi.item.job_id == "skip-hi"
    assert queue.release(hi.item.review_id, reviewer="rv_s", away_s=3600)
    lo = _claim(queue, "rv_s")  # not the skipped one again, though it ranks higher
    assert lo.item.job_id == "skip-lo"
    assert queue.release(lo.item.review_id, reviewer="rv_s", away_s=3600)
    assert queue.claim("rv_s") is None  # both skipped: nothing for rv_s
    other = _claim(queue, "rv_t")  # everyone else gets the skipped item at once
    assert other.item.job_id == "skip-hi"
    # A skip without a time away (skip_away_s = 0) hands the item back at once.
    assert queue.release(other.item.review_id, reviewer="rv_t")
    again = _claim(queue, "rv_t")
    assert again.item.job_id == "skip-hi"


def test_a_skipped_item_comes_back_to_the_skipper_after_the_time_away() -> None:
    desk, queue, _, clock = _desk(0.0)
    desk.skip_away_s = 600.0
    queue.submit(make_item(world_policy(), "away-1"))
    claim = desk.claim("rv_k")
    assert claim is not None
    assert desk.release(claim.item.review_id, reviewer="rv_k")
    clock.t += 599.0
    assert desk.claim("rv_k") is None
    clock.t += 1.0
    back = desk.claim("rv_k")
    assert back is not None and back.item.review_id == claim.item.review_id


def test_a_lease_is_renewed_only_by_its_holder_while_it_lasts(store: ReviewQueue) -> None:
    queue = store
    queue.submit(make_item(world_policy(), "keep-1"))
    claim = _claim(queue, "rv_x")
    rid = claim.item.review_id
    renewed = queue.extend(rid, reviewer="rv_x", token=claim.lease.token)
    assert renewed.token == claim.lease.token
    assert renewed.expires_at >= claim.lease.expires_at
    assert queue.holds("rv_x", rid)
    with pytest.raises(ReviewNotLeaseHolder):
        queue.extend(rid, reviewer="rv_y", token=claim.lease.token)
    with pytest.raises(ReviewNotLeaseHolder):
        queue.extend(rid, reviewer="rv_x", token="not-a-token")
    assert queue.release(rid)  # an admin takes it back: it cannot be renewed any more
    with pytest.raises(ReviewTakenBack, match="an admin took this item back"):
        queue.extend(rid, reviewer="rv_x", token=claim.lease.token)
    # ... and the holder's decision is refused saying so (not "your lease expired").
    with pytest.raises(ReviewTakenBack, match="an admin took this item back"):
        queue.decide(
            rid,
            reviewer="rv_x",
            token=claim.lease.token,
            decision=ReviewDecision.ALLOW,
            reason_code=None,
        )
    # A skip by the holder itself is no admin's doing.
    mine = _claim(queue, "rv_x")
    assert queue.release(rid, reviewer="rv_x")
    with pytest.raises(ReviewLeaseExpired) as refused:
        queue.extend(rid, reviewer="rv_x", token=mine.lease.token)
    assert not isinstance(refused.value, ReviewTakenBack)


def test_a_renewed_lease_outlives_the_first_one_and_an_expired_one_stays_expired() -> None:
    desk, queue, _, clock = _desk(0.0)
    queue.submit(make_item(world_policy(), "keep-2"))
    claim = desk.claim("rv_x")
    assert claim is not None
    clock.t += queue.lease_s - 10
    assert desk.extend("rv_x", review_id=claim.item.review_id, token=claim.lease.token) == (
        queue.lease_s
    )
    clock.t += 20  # past the first lease's end: still held
    assert queue.holds("rv_x", claim.item.review_id)
    clock.t += queue.lease_s
    with pytest.raises(ReviewLeaseExpired) as refused:
        desk.extend("rv_x", review_id=claim.item.review_id, token=claim.lease.token)
    assert refused.value.code == "review_lease_expired"  # ran out: not "taken back"


def test_an_admin_redelivery_does_not_cut_an_undo_window_short() -> None:
    desk, queue, handed, clock = _desk(60.0)
    queue.submit(make_item(world_policy(), "redeliver-1"))
    claim = desk.claim("rv_r")
    assert claim is not None
    desk.decide(
        "rv_r",
        review_id=claim.item.review_id,
        token=claim.lease.token,
        decision=ReviewDecision.ALLOW,
        reason_code=None,
    )
    clock.t += 45.0  # older than the admin button's 30 s, still inside the 60 s window
    assert desk.deliver_outbox(older_than_s=30.0) == (0, 0)
    assert handed.finals == []
    clock.t += 60.0 + UNDO_MARGIN_S - 45.0
    assert desk.deliver_outbox(older_than_s=30.0) == (1, 1)


def test_reveals_are_kept_per_reviewer_and_item(store: ReviewQueue) -> None:
    queue = store
    queue.submit(make_item(world_policy(), "seen-1", category_id="contraband_symbol"))
    claim = _claim(queue, "rv_v")
    rid = claim.item.review_id
    assert not queue.revealed(rid, reviewer="rv_v")
    queue.reveal(rid, reviewer="rv_v")
    queue.reveal(rid, reviewer="rv_v")  # again: harmless
    assert queue.revealed(rid, reviewer="rv_v")
    assert not queue.revealed(rid, reviewer="rv_w")  # one reviewer's look is not another's
    with pytest.raises(ReviewNotFound):
        queue.reveal("rev_nope", reviewer="rv_v")
    assert not queue.revealed("rev_nope", reviewer="rv_v")


def test_the_desk_refuses_allow_or_remove_on_a_critical_item_never_looked_at() -> None:
    desk, queue, _, _ = _desk(0.0)
    policy = world_policy()
    queue.submit(make_item(policy, "look-1", category_id="contraband_symbol"))
    queue.submit(make_item(policy, "look-2", category_id="restricted_logo", score=0.1))
    claim = desk.claim("rv_a")
    assert claim is not None and claim.item.critical
    rid, token = claim.item.review_id, claim.lease.token
    for decision, code in ((ReviewDecision.ALLOW, None), (ReviewDecision.REMOVE, "TW_CONTRABAND")):
        with pytest.raises(ReviewInvalidDecision) as refused:
            desk.decide("rv_a", review_id=rid, token=token, decision=decision, reason_code=code)
        assert refused.value.code == "review_reveal_required"
    assert queue.holds("rv_a", rid)  # nothing recorded: still leased to rv_a
    # Only the lease holder records a look.
    with pytest.raises(ReviewNotFound):
        desk.reveal("rv_b", rid)
    desk.reveal("rv_a", rid)
    done = desk.decide(
        "rv_a",
        review_id=rid,
        token=token,
        decision=ReviewDecision.REMOVE,
        reason_code="TW_CONTRABAND",
    )
    assert done.final is None  # waits for a second reviewer, who must look too
    second = desk.claim("rv_b")
    assert second is not None and second.item.review_id == rid
    with pytest.raises(ReviewInvalidDecision):
        desk.decide(
            "rv_b",
            review_id=rid,
            token=second.lease.token,
            decision=ReviewDecision.REMOVE,
            reason_code="TW_CONTRABAND",
        )
    # Escalating needs no look; a non-critical item needs none either.
    desk.decide(
        "rv_b",
        review_id=rid,
        token=second.lease.token,
        decision=ReviewDecision.ESCALATE,
        reason_code=None,
    )
    low = desk.claim("rv_b")
    assert low is not None and not low.item.critical
    desk.decide(
        "rv_b",
        review_id=low.item.review_id,
        token=low.lease.token,
        decision=ReviewDecision.ALLOW,
        reason_code=None,
    )


def test_an_escalation_moves_the_item_to_a_queue_only_its_workers_claim(
    store: ReviewQueue,
) -> None:
    queue = store
    policy = world_policy()
    queue.submit(make_item(policy, "esc-1", category_id="contraband_symbol", score=0.9))
    queue.submit(make_item(policy, "esc-2", score=0.3))
    claim = _claim(queue, "rv_a")
    rid = claim.item.review_id
    assert claim.item.job_id == "esc-1" and claim.queue == "review"
    with pytest.raises(ReviewNotLeaseHolder):
        queue.move(rid, reviewer="rv_b", token=claim.lease.token, queue="escalation")
    assert queue.move(rid, reviewer="rv_a", token=claim.lease.token, queue="escalation") is False
    # A retried submit is a replay; another decision under that lease is refused.
    assert queue.move(rid, reviewer="rv_a", token=claim.lease.token, queue="escalation") is True
    with pytest.raises(ReviewAlreadyDecided):
        _decide(queue, claim, ReviewDecision.ALLOW, None)
    assert not queue.holds("rv_a", rid)
    rows = {(s.policy_id, s.queue): s for s in queue.stats()}
    assert rows[("testworld", "escalation")].waiting == 1
    assert rows[("testworld", "escalation")].oldest_age_s is not None
    assert rows[("testworld", "review")].waiting == 1
    # Claims from the review queue never see it, whatever its rank.
    other = _claim(queue, "rv_b")
    assert other.item.job_id == "esc-2"
    senior = queue.claim("rv_s", queues=("review", "escalation"))
    assert senior is not None and senior.item.review_id == rid and senior.queue == "escalation"
    with pytest.raises(ReviewInvalidDecision):  # already there
        queue.move(rid, reviewer="rv_s", token=senior.lease.token, queue="escalation")
    # In the escalation queue one senior's removal is final, critical or not.
    result = queue.decide(
        rid,
        reviewer="rv_s",
        token=senior.lease.token,
        decision=ReviewDecision.REMOVE,
        reason_code="TW_CONTRABAND",
    )
    assert result.outcome.final is not None and result.outcome.final.reviewers == ["rv_s"]
    assert [s.queue for s in queue.stats()] == ["review"]  # nothing open in escalation


def test_an_item_starts_in_the_queue_its_workflow_names(store: ReviewQueue) -> None:
    queue = store
    item = make_item(world_policy(), "appeal-1").model_copy(update={"queue": "appeals"})
    queue.submit(item)
    assert queue.claim("rv_a") is None
    claim = queue.claim("rv_a", queues=("appeals",))
    assert claim is not None and claim.queue == "appeals"
    assert queue.release(claim.item.review_id, reviewer="rv_a")
    again = queue.claim("rv_b", queues=("review", "appeals"))
    assert again is not None and again.item.review_id == item.review_id


def test_reasons_carry_readable_labels_and_the_evidence_reads_as_plain_words() -> None:
    from moderation.core.review import plain_reasons, reason_labels_for, reason_options

    policy = world_policy()
    item = make_item(policy, "words-1", category_id="contraband_symbol")
    labelled = reason_labels_for(policy, "contraband_symbol")
    # The same codes in the same order as the codes a removal accepts, this category's first.
    assert [r.code for r in labelled] == item.reason_codes
    assert labelled[0].category_id == "contraband_symbol"
    assert labelled[0].label.startswith("Contraband symbol: ")
    assert all(r.label and r.label != r.code for r in labelled)
    assert reason_options(item) == labelled
    # An item queued before labels existed still offers every code.
    old = item.model_copy(update={"reasons": []})
    assert [r.code for r in reason_options(old)] == item.reason_codes
    lines = plain_reasons(item)
    assert lines and lines[0].startswith("matches “") and "%" in lines[0]
