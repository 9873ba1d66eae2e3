"""Hash lists that do not flood: the flood rule, a flooding bank entry quarantined (its matches
sent to review, not blocked, and the verdict says why), a person confirming or disabling it,
and the entry states on the real PostgreSQL store (pgserver) as on the twin."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from moderation.adapters.memory import MemoryEntryGuard
from moderation.adapters.postgres.bank_guard import PostgresEntryGuard
from moderation.core.bank_guard import EntryRate, EntryState, FloodRule
from moderation.core.decision import Decision, Verdict
from moderation.exceptions import BankEntryNotFound
from moderation.pipeline.bank_guard import BankGuard, matched_entries
from moderation.ports import EntryGuardStore
from tests.test_banks import _jpeg, banked  # noqa: F401  (the fixture)

pytestmark = pytest.mark.xdist_group("postgres")

RULE = FloodRule(window_s=600, min_matches=5, factor=3.0, floor=1.0, alpha=0.5)


def test_the_flood_rule_judges_a_burst_against_the_entrys_usual_rate() -> None:
    rate = None
    for window in range(4):  # one match per window: the usual rate
        rate = RULE.observe(rate, 1, window * 600 + 10)
        assert not RULE.floods(rate)
    assert rate is not None and rate.count == 1 and 0.5 < rate.baseline < 1.0
    burst = RULE.observe(rate, 4, 4 * 600 + 1)
    assert (burst.count, RULE.floods(burst)) == (4, False)  # below min_matches
    burst = RULE.observe(burst, 1, 4 * 600 + 2)
    assert burst.count == 5 and RULE.floods(burst)  # 5 > 3 × max(baseline, 1)
    # A busy entry's usual rate is no flood: 40 per window, every window.
    busy = EntryRate(0.0, 40, 40.0)
    assert not RULE.floods(RULE.observe(busy, 40, 600))
    # Quiet windows in between lower the baseline (each counts as zero).
    quiet = RULE.observe(EntryRate(0.0, 40, 40.0), 1, 10 * 600)
    assert quiet.baseline < 1.0 and quiet.count == 1


@pytest.fixture(params=["memory", "postgres"])
def guard_store(request: pytest.FixtureRequest) -> Iterator[EntryGuardStore]:
    if request.param == "memory":
        yield MemoryEntryGuard()
        return
    pool = ConnectionPool(request.getfixturevalue("pg_url"), min_size=1, max_size=4, open=True)
    with pool.connection() as conn:
        conn.execute("TRUNCATE bank_entry_states, bank_entry_rates")
    try:
        yield PostgresEntryGuard(pool)
    finally:
        pool.close()


def test_a_flooding_bank_entry_is_quarantined_until_a_person_decides(
    banked: dict[str, Any],  # noqa: F811
    guard_store: EntryGuardStore,
) -> None:
    moderator = banked["moderator"]
    now = [0.0]
    guard = BankGuard(
        guard_store,
        banks=banked["service"],
        loaded=banked["sync"].banks,
        rule=RULE,
        clock=lambda: now[0],
    )

    def moderate() -> Verdict:
        verdict: Verdict = moderator.moderate([moderator.prepare(_jpeg(banked["image"], 50))])[0]
        return verdict

    blocked = moderate()
    assert blocked.decision is Decision.BLOCK and blocked.category_id == "banked"
    assert matched_entries([blocked, blocked]) == {"known-bad": {0: 2}}
    # Its usual rate: one match per window for a while.
    for window in range(3):
        now[0] = window * 600 + 5
        assert guard.observe([blocked]) == []
    # Then a burst in one window: quarantined on the match that makes it a flood.
    now[0] = 3 * 600 + 5
    assert guard.observe([blocked] * 4) == []
    (status,) = guard.observe([blocked])
    assert (status.bank, status.entry_id, status.state, status.by) == (
        "known-bad",
        0,
        EntryState.QUARANTINED,
        "flood",
    )
    assert status.count == 5 and "5 matches in 600 s" in status.reason

    # Its matches now go to review, with the score unchanged and the reason in the verdict.
    held = moderate()
    assert held.decision is Decision.REVIEW and held.category_id == "banked"
    assert held.scores["known/banked"] == blocked.scores["known/banked"]
    evidence = held.deciding.evidence[0] if held.deciding else None
    assert evidence is not None and evidence.details["quarantined"] is True
    assert "quarantined" in evidence.label and "quarantined" in held.explain()

    # Every process follows the store: a fresh guard over the same store loads the state.
    other = BankGuard(guard_store, loaded=banked["sync"].banks, rule=RULE)
    banked["sync"].banks.set_quarantined({})
    assert moderate().decision is Decision.BLOCK
    other.refresh()
    assert moderate().decision is Decision.REVIEW

    # A person confirms it: it blocks again, and further bursts leave it be.
    guard.confirm("known-bad", 0, by="rv_reviewer01", reason="really bad")
    assert moderate().decision is Decision.BLOCK
    now[0] = 10 * 600
    assert guard.observe([blocked] * 50) == []
    assert [s.state for s in guard.statuses("known-bad")] == [EntryState.CONFIRMED]

    # Disabling removes it from the bank: no match at all after the bank refresh.
    with pytest.raises(BankEntryNotFound):
        guard.disable("known-bad", 99, by="rv_reviewer01")
    guard.disable("known-bad", 0, by="rv_reviewer01", reason="benign meme")
    banked["sync"].refresh()
    after = moderate()
    assert after.scores["known/banked"] == 0.0 and after.decision is Decision.ALLOW
    assert guard_store.status("known-bad", 0) is not None
    assert guard_store.status("known-bad", 0).state is EntryState.DISABLED  # type: ignore[union-attr]
