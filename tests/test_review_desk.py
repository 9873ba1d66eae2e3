"""The review use case (ReviewDesk) over the in-memory twins: claims, decisions, the outbox of
final decisions, bank requests and who may see an image."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest

from moderation.adapters.memory import MemoryBankStore, MemoryBlobStore, MemoryReviewQueue
from moderation.core.review import HumanDecision, ReviewDecision, ReviewItem
from moderation.exceptions import (
    BankError,
    QueueUnavailable,
    ReviewInvalidDecision,
    ReviewNotFound,
)
from moderation.pipeline.banks import BankService
from moderation.pipeline.review_desk import ReviewDesk
from moderation.pipeline.review_evidence import ReviewEvidence
from tests.test_review_queue import make_item, with_evidence, world_policy


class CountingBlobs(MemoryBlobStore):
    """The blob twin, counting reads."""

    reads: int = 0

    def get(self, key: str) -> bytes:
        self.reads += 1
        return super().get(key)


class KeptQueue(MemoryReviewQueue):
    """The review queue twin whose items come with their scored bytes kept (as the worker
    keeps them): ``raw:`` + the image's URI."""

    blobs: CountingBlobs

    def submit(self, item: ReviewItem) -> None:
        super().submit(with_evidence(item, b"raw:" + item.image.uri.encode(), self.blobs))


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
) -> tuple[ReviewDesk, KeptQueue, Handed, CountingBlobs]:
    queue = KeptQueue()
    queue.blobs = blobs = CountingBlobs()
    handed = Handed()
    desk = ReviewDesk(
        queue,
        on_final=handed,
        evidence=ReviewEvidence(blobs, retention_s=3600),
        render_image=lambda data: b"png:" + data,
        banks=banks,
    )
    return desk, queue, handed, blobs


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
    desk, queue, _, blobs = _desk()
    queue.submit(make_item(world_policy(), "job-3"))
    claim = desk.claim("rv_a")
    assert claim is not None
    review_id = claim.item.review_id
    assert desk.image("rv_a", review_id) == b"png:raw:" + claim.item.image.uri.encode()
    for who, rid in (("rv_b", review_id), ("rv_a", "no-such-item")):
        with pytest.raises(ReviewNotFound):
            desk.image(who, rid)
    assert blobs.reads == 1  # nothing was read for the refused requests
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


# --- the scored bytes ----------------------------------------------------------------------------


def _claimed(desk: ReviewDesk, queue: KeptQueue, job_id: str) -> tuple[str, str, ReviewItem]:
    queue.submit(make_item(world_policy(), job_id))
    claim = desk.claim("rv_a")
    assert claim is not None
    return claim.item.review_id, claim.lease.token, claim.item


def test_the_reviewer_sees_the_scored_bytes_and_the_decision_records_their_hash() -> None:
    desk, queue, handed, blobs = _desk()
    review_id, token, item = _claimed(desk, queue, "job-e1")
    assert desk.evidence_problem(item) is None
    assert desk.image("rv_a", review_id) == b"png:raw:" + item.image.uri.encode()
    done = desk.decide(
        "rv_a", review_id=review_id, token=token, decision=ReviewDecision.ALLOW, reason_code=None
    )
    assert done.delivered
    assert handed.finals[0].seen_sha256 == item.content_sha256
    # Handed on: the bytes are marked for deletion after the retention, not deleted yet.
    assert item.evidence_key is not None and blobs.exists(item.evidence_key)
    assert desk.evidence.retired_waiting() == 1


@pytest.mark.parametrize("damage", ["gone", "altered"])
def test_bytes_gone_or_altered_are_not_shown_and_cannot_be_allowed(damage: str) -> None:
    from moderation.exceptions import ReviewEvidenceUnavailable

    desk, queue, handed, blobs = _desk()
    review_id, token, item = _claimed(desk, queue, f"job-{damage}")
    assert item.evidence_key is not None
    if damage == "gone":
        blobs.delete(item.evidence_key)
    else:
        blobs.put(item.evidence_key, b"raw:something else")
    assert desk.evidence_problem(item) is not None
    with pytest.raises(ReviewEvidenceUnavailable):
        desk.image("rv_a", review_id)
    with pytest.raises(ReviewInvalidDecision) as refused:
        desk.decide(
            "rv_a",
            review_id=review_id,
            token=token,
            decision=ReviewDecision.ALLOW,
            reason_code=None,
        )
    assert refused.value.code == "review_evidence_unavailable"
    done = desk.decide(
        "rv_a", review_id=review_id, token=token, decision=ReviewDecision.ESCALATE, reason_code=None
    )
    assert done.final is None and handed.finals == []  # waits in the escalation queue
    senior = desk.claim("rv_s", queues=("review", "escalation"))
    assert senior is not None and senior.queue == "escalation"
    removed = desk.decide(
        "rv_s",
        review_id=review_id,
        token=senior.lease.token,
        decision=ReviewDecision.REMOVE,
        reason_code=senior.item.reason_codes[0],
    )
    assert removed.final is not None and removed.final.seen_sha256 is None
    assert [f.decision for f in handed.finals] == [ReviewDecision.REMOVE]


def test_an_item_queued_without_its_bytes_says_so() -> None:
    desk, queue, _, _ = _desk()
    MemoryReviewQueue.submit(queue, make_item(world_policy(), "job-none"))  # no evidence kept
    claim = desk.claim("rv_a")
    assert claim is not None and claim.item.evidence_key is None
    assert "not kept" in (desk.evidence_problem(claim.item) or "")


def test_retired_bytes_are_swept_after_the_retention() -> None:
    from datetime import UTC, datetime, timedelta

    desk, queue, _, blobs = _desk()
    review_id, token, item = _claimed(desk, queue, "job-sweep")
    desk.decide(
        "rv_a", review_id=review_id, token=token, decision=ReviewDecision.ALLOW, reason_code=None
    )
    assert item.evidence_key is not None
    now = datetime.now(UTC)
    assert desk.evidence.sweep(now) == 0  # decided today: kept for the retention
    assert blobs.exists(item.evidence_key)
    assert desk.evidence.sweep(now + timedelta(days=2)) == 1
    assert not blobs.exists(item.evidence_key)
    assert desk.evidence.retired_waiting() == 0


# --- a video's filmstrip --------------------------------------------------------------------


def _video_item(
    desk: ReviewDesk, queue: KeptQueue, job_id: str, *, keep: bool = True
) -> ReviewItem:
    """A video's review item (its verdict with findings), its sampled frames kept as the
    worker keeps them when ``keep``."""
    from moderation.core.decision import VideoFindings

    item = make_item(world_policy(), job_id)
    findings = VideoFindings(
        kind="video",
        duration_s=4.0,
        frames_scored=4,
        timestamps=[0.0, 1.0, 2.0, 3.0],
        segments=[],
        top_frame_s=2.0,
    )
    item = item.model_copy(update={"verdict": dataclasses.replace(item.verdict, video=findings)})
    queue.submit(item)
    kept = queue.item(item.review_id)
    if keep:
        assert kept.content_sha256 is not None
        desk.evidence.keep_filmstrip(
            tenant="default",
            review_id=kept.review_id,
            content_sha256=kept.content_sha256,
            timestamps=(0.0, 1.0, 2.0, 3.0),
            stills=(b"s0", b"s1", b"s2", b"s3"),
        )
    return kept


def test_a_video_shows_its_kept_frames_to_the_lease_holder_only() -> None:
    desk, queue, handed, blobs = _desk()
    item = _video_item(desk, queue, "job-v1")
    view = desk.filmstrip(item)
    assert view is not None and view.problem is None
    assert view.timestamps == (0.0, 1.0, 2.0, 3.0) and view.top_index == 2
    with pytest.raises(ReviewNotFound):
        desk.frame("rv_a", item.review_id, 0)  # not claimed yet
    claim = desk.claim("rv_a")
    assert claim is not None
    assert desk.frame("rv_a", item.review_id, 2) == b"png:s2"
    with pytest.raises(ReviewNotFound):
        desk.frame("rv_b", item.review_id, 2)
    with pytest.raises(ReviewNotFound):
        desk.frame("rv_a", item.review_id, 4)
    desk.decide(
        "rv_a",
        review_id=item.review_id,
        token=claim.lease.token,
        decision=ReviewDecision.ALLOW,
        reason_code=None,
    )
    assert handed.finals[0].seen_sha256 == item.content_sha256
    # the frames are retired with the bytes, and swept with them
    from datetime import UTC, datetime, timedelta

    assert desk.evidence.retired_waiting() == 2
    assert desk.evidence.sweep(datetime.now(UTC) + timedelta(days=2)) == 2
    assert [k for k in blobs.objects if k.startswith("review-evidence")] == []


@pytest.mark.parametrize("damage", ["never kept", "altered", "another video's"])
def test_a_video_without_usable_frames_cannot_be_allowed(damage: str) -> None:
    from moderation.core.evidence import filmstrip_key, pack_filmstrip
    from moderation.exceptions import ReviewEvidenceUnavailable

    desk, queue, _, blobs = _desk()
    item = _video_item(desk, queue, "job-" + damage.split()[0], keep=damage != "never kept")
    assert item.content_sha256 is not None
    key = filmstrip_key("default", item.review_id, item.content_sha256)
    if damage == "altered":
        blobs.put(key, blobs.get(key).replace(b"s2", b"x2"))
    elif damage == "another video's":
        blobs.put(key, pack_filmstrip("0" * 64, [0.0], [b"other"]))
    assert "removed or escalated" in (desk.evidence_problem(item) or "")
    claim = desk.claim("rv_a")
    assert claim is not None
    with pytest.raises(ReviewEvidenceUnavailable):
        desk.frame("rv_a", item.review_id, 0)
    with pytest.raises(ReviewInvalidDecision):
        desk.decide(
            "rv_a",
            review_id=item.review_id,
            token=claim.lease.token,
            decision=ReviewDecision.ALLOW,
            reason_code=None,
        )
    done = desk.decide(
        "rv_a",
        review_id=item.review_id,
        token=claim.lease.token,
        decision=ReviewDecision.REMOVE,
        reason_code="TW_LOGO",
    )
    assert done.final is not None and done.final.seen_sha256 is None


def test_a_filmstrip_object_is_checked_before_use() -> None:
    from moderation.core.evidence import pack_filmstrip, unpack_filmstrip

    sha = "a" * 64
    packed = pack_filmstrip(sha, [0.0, 1.5], [b"one", b"two!"])
    strip = unpack_filmstrip(packed, sha)
    assert strip.timestamps == (0.0, 1.5) and strip.stills == (b"one", b"two!")
    for bad in (packed[:-1], packed + b"x", b"junk", packed.replace(b"two!", b"two?")):
        with pytest.raises(ValueError):
            unpack_filmstrip(bad, sha)
    with pytest.raises(ValueError):
        unpack_filmstrip(packed, "b" * 64)
    with pytest.raises(ValueError):
        pack_filmstrip(sha, [0.0], [])
