"""Reviewer wellbeing (issue 21): settings kept per reviewer, exposure recorded by the desk as
items are shown and unblurred, break prompts after N critical items or a time on shift, and the
admin's view of everyone's exposure. The use case over the twin, and every store (twin, Redis,
PostgreSQL) against the same contract."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from psycopg_pool import ConnectionPool

from moderation.adapters.memory import MemoryBlobStore, MemoryReviewQueue, MemoryWellbeingStore
from moderation.adapters.postgres.wellbeing import PostgresWellbeingStore
from moderation.adapters.redis_wellbeing import RedisWellbeingStore
from moderation.adapters.support.redis import connect
from moderation.core.wellbeing import ReviewerDay, WellbeingSettings, break_due, day_of
from moderation.exceptions import ReviewError
from moderation.pipeline.review_desk import ReviewDesk
from moderation.pipeline.review_evidence import ReviewEvidence
from moderation.pipeline.wellbeing import Wellbeing
from moderation.ports import WellbeingStore
from tests.test_review_queue import make_item, with_evidence, world_policy

T0 = 1_780_000_000.0  # a fixed day, 2026-05-28 UTC
DAY = day_of(T0)


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(params=["memory", "redis", "postgres"])
def store(request: pytest.FixtureRequest) -> Iterator[WellbeingStore]:
    if request.param == "memory":
        yield MemoryWellbeingStore()
    elif request.param == "redis":
        url = request.getfixturevalue("redis_url")
        client = connect(url, decode=True)
        yield RedisWellbeingStore(client, prefix="t:")
        client.close()
    else:
        pool = ConnectionPool(request.getfixturevalue("pg_url"), min_size=1, max_size=2)
        with pool.connection() as conn:
            conn.execute("TRUNCATE reviewer_wellbeing, reviewer_exposure, reviewer_breaks")
        yield PostgresWellbeingStore(pool)
        pool.close()


def test_settings_are_kept_per_reviewer_with_protective_defaults(store: WellbeingStore) -> None:
    assert store.settings("rv_a") is None
    wellbeing = Wellbeing(store)
    defaults = wellbeing.settings("rv_a")
    assert defaults.greyscale and not defaults.autoplay_video and defaults.blur_px == 36
    saved = wellbeing.save("rv_a", {"greyscale": False, "blur_px": 60, "break_after_critical": 3})
    assert store.settings("rv_a") == saved
    assert saved == WellbeingSettings(greyscale=False, blur_px=60, break_after_critical=3)
    assert store.settings("rv_b") is None  # another reviewer keeps the defaults


@pytest.mark.parametrize(
    "bad",
    [{"blur_px": 2}, {"blur_px": 500}, {"break_after_minutes": -1}, {"volume": 3}, [1, 2]],
)
def test_bad_settings_get_a_coded_error_naming_the_field(bad: object) -> None:
    wellbeing = Wellbeing(MemoryWellbeingStore())
    with pytest.raises(ReviewError) as caught:
        wellbeing.save("rv_a", bad)
    assert caught.value.code == "review_settings_invalid"
    if isinstance(bad, dict):
        assert next(iter(bad)) in str(caught.value)
    assert wellbeing.store.settings("rv_a") is None


def test_exposure_counts_each_item_once_and_reveals_mark_it(store: WellbeingStore) -> None:
    for review_id, critical in (("r1", True), ("r2", False), ("r1", True), ("r3", True)):
        store.record("rv_a", day=DAY, review_id=review_id, critical=critical, revealed=False, at=T0)
    store.record("rv_a", day=DAY, review_id="r1", critical=True, revealed=True, at=T0 + 5)
    store.record("rv_a", day=DAY, review_id="r1", critical=True, revealed=True, at=T0 + 6)
    store.record("rv_b", day=DAY, review_id="r2", critical=False, revealed=True, at=T0 + 7)
    a = store.day("rv_a", DAY)
    assert (a.shown, a.critical, a.revealed, a.critical_since_break) == (3, 2, 1, 2)
    assert a.first_at == T0 and a.last_break_at is None
    assert [d.reviewer for d in store.days(DAY)] == ["rv_a", "rv_b"]
    assert store.days("2001-01-01") == []
    assert store.day("rv_c", DAY) == ReviewerDay(reviewer="rv_c", day=DAY)


def test_answering_a_break_counts_it_and_restarts_the_count(store: WellbeingStore) -> None:
    store.record("rv_a", day=DAY, review_id="r1", critical=True, revealed=False, at=T0)
    store.answer_break("rv_a", day=DAY, taken=True, at=T0 + 10)
    store.record("rv_a", day=DAY, review_id="r2", critical=True, revealed=False, at=T0 + 20)
    store.answer_break("rv_a", day=DAY, taken=False, at=T0 + 15)
    a = store.day("rv_a", DAY)
    assert (a.breaks_taken, a.breaks_dismissed, a.last_break_at) == (1, 1, T0 + 15)
    assert (a.critical, a.critical_since_break) == (2, 1)


def test_a_break_is_due_after_n_critical_items_or_a_time_on_shift() -> None:
    settings = WellbeingSettings(break_after_critical=3, break_after_minutes=60)
    day = ReviewerDay(reviewer="rv_a", day=DAY, critical_since_break=2, first_at=T0)
    assert break_due(settings, day, T0 + 59 * 60) is None
    prompt = break_due(settings, ReviewerDay(reviewer="rv_a", day=DAY, critical_since_break=3), T0)
    assert prompt is not None and prompt.reason == "critical" and "3 critical" in prompt.message
    late = break_due(settings, day, T0 + 61 * 60)
    assert late is not None and late.reason == "time" and "61 minutes" in late.message
    rested = ReviewerDay(reviewer="rv_a", day=DAY, first_at=T0, last_break_at=T0 + 3000)
    assert break_due(settings, rested, T0 + 61 * 60) is None
    never = WellbeingSettings(break_after_critical=0, break_after_minutes=0)
    assert (
        break_due(never, ReviewerDay(reviewer="rv_a", day=DAY, critical_since_break=99), T0) is None
    )


def test_the_desk_records_what_it_shows_and_the_prompt_follows() -> None:
    """Exposure comes from the server's own acts: a claim (once, however often it is re-read)
    and a reveal; after N critical items the reviewer is prompted, and answering restarts it."""
    clock = Clock()
    queue = MemoryReviewQueue(lease_s=300, clock=clock)
    blobs = MemoryBlobStore()
    wellbeing = Wellbeing(MemoryWellbeingStore(), clock=clock)
    desk = ReviewDesk(
        queue,
        on_final=lambda final: None,
        evidence=ReviewEvidence(blobs, retention_s=3600),
        render_image=lambda data: data,
        wellbeing=wellbeing,
    )
    policy = world_policy()
    for i in range(3):
        queue.submit(
            with_evidence(
                make_item(policy, f"job-c{i}", category_id="contraband_symbol"), b"x%d" % i, blobs
            )
        )
    wellbeing.save("rv_a", {"break_after_critical": 2})
    first = desk.claim("rv_a")
    assert first is not None
    assert desk.claim("rv_a") is not None  # the same lease again: not counted twice
    assert wellbeing.state("rv_a").today.critical == 1
    assert wellbeing.state("rv_a").prompt is None
    desk.reveal("rv_a", first.item.review_id)
    queue.release(first.item.review_id, reviewer="rv_a", away_s=3600)
    second = desk.claim("rv_a")
    assert second is not None and second.item.review_id != first.item.review_id
    state = wellbeing.state("rv_a")
    assert (state.today.shown, state.today.critical, state.today.revealed) == (2, 2, 1)
    assert state.prompt is not None and state.prompt.reason == "critical"
    clock.t += 1
    after = wellbeing.answer_break("rv_a", taken=True)
    assert after.prompt is None and after.today.breaks_taken == 1
    [row] = wellbeing.exposure()
    assert (row.reviewer, row.critical, row.revealed) == ("rv_a", 2, 1)


def test_postgres_keeps_a_week_of_exposure(pg_url: str) -> None:
    pool = ConnectionPool(pg_url, min_size=1, max_size=2)
    try:
        store = PostgresWellbeingStore(pool)
        with pool.connection() as conn:
            conn.execute("TRUNCATE reviewer_wellbeing, reviewer_exposure, reviewer_breaks")
        old, today = "2001-01-01", day_of(time.time())
        for day in (old, today):
            store.record("rv_a", day=day, review_id="r1", critical=True, revealed=True, at=T0)
            store.answer_break("rv_a", day=day, taken=True, at=T0)
        assert store.prune() == 2
        assert store.days(old) == []
        assert store.day("rv_a", today).critical == 1
    finally:
        pool.close()
