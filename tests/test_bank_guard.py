"""Hash lists that do not flood: the flood rule, a flooding bank entry quarantined (its matches
sent to review, not blocked, and the verdict says why), a person confirming or disabling it,
and the entry states on the real PostgreSQL store (pgserver) as on the twin."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from moderation import testmodel
from moderation.adapters.memory import MemoryAuditSink, MemoryEntryGuard
from moderation.adapters.policy_files import load_policy_text
from moderation.adapters.postgres.bank_guard import PostgresEntryGuard
from moderation.core.bank_guard import EntryRate, EntryState, FloodRule
from moderation.core.banks import EntryData
from moderation.core.compiled import compile_policy
from moderation.core.decision import Decision, Verdict
from moderation.core.policy import PolicySet
from moderation.exceptions import BankEntryNotFound
from moderation.pipeline.bank_guard import BankGuard, matched_entries
from moderation.pipeline.moderator import Moderator
from moderation.pipeline.policies import ActivePolicies
from moderation.ports import EntryGuardStore
from moderation.signals import AllowListRule, LoadedBanks, builtin_signals
from tests.test_banks import (  # noqa: F401  (banked: the fixture)
    BANK_POLICY,
    DECODER,
    _jpeg,
    _png,
    banked,
)

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
    audit = MemoryAuditSink()
    guard = BankGuard(
        guard_store,
        banks=banked["service"],
        loaded=banked["sync"].banks,
        rule=RULE,
        clock=lambda: now[0],
        audit=audit,
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

    # Every change is in the audit log: who, which entry, why (the flood rule's, then a
    # person's); an unknown entry changed nothing and wrote nothing.
    rows = [(r.kind, r.job_id, r.decision, r.actor, r.details["reason"]) for r in audit.records]
    assert rows == [
        ("bank", "bank/known-bad/0", "bank_quarantined", "system", status.reason),
        ("bank", "bank/known-bad/0", "bank_confirmed", "rv_reviewer01", "really bad"),
        ("bank", "bank/known-bad/0", "bank_disabled", "rv_reviewer01", "benign meme"),
    ]
    assert audit.records[0].details["count"] == 5
    assert all(
        r.details["entry_id"] == 0 and r.details["bank"] == "known-bad" for r in audit.records
    )


# --- allow-lists (negative banks) -----------------------------------------------------------


def _moderator_with(
    scoring: Any, loaded: LoadedBanks, allow: dict[str, AllowListRule]
) -> Moderator:
    """The test world and the bank policy, with allow-lists over ``loaded``."""
    encoder = scoring.model.encoder
    signals = builtin_signals(loaded, allow_lists=allow)
    known = load_policy_text(BANK_POLICY, signals=set(signals))
    world = scoring.policies.current.policies["testworld"]
    policies = ActivePolicies(
        load=lambda: PolicySet([(world, "testworld.yaml"), (known, "known.yaml")]),
        compile=lambda ps: [compile_policy(ps[pid], encoder) for pid in ps],
        fingerprint=lambda: "fixed",
        signals=signals,
    )
    return Moderator(encoder=encoder, decoder=DECODER, policies=policies)


def test_an_allow_list_suppresses_a_bank_match_and_a_prompt_category(
    banked: dict[str, Any],  # noqa: F811
    scoring: Any,
) -> None:
    service, sync = banked["service"], banked["sync"]
    loaded: LoadedBanks = sync.banks
    image = banked["image"]
    # A borderline image the prompts send to review (critical category).
    borderline = testmodel.sample_images("review", 3, seed=1)[2][0]
    plain = _moderator_with(scoring, loaded, {})
    assert plain.moderate([plain.prepare(_jpeg(image, 50))])[0].decision is Decision.BLOCK
    before = plain.moderate([plain.prepare(_png(borderline))])[0]
    assert before.decision is Decision.REVIEW and before.category_id == "contraband_symbol"

    # Both images are known-benign: one in an allow-list of the bank, one of the category.
    service.create("memes")
    service.create("stock")
    memes = plain.prepare(_jpeg(image, 50)).fingerprints["pdq"]
    stock = plain.prepare(_png(borderline)).fingerprints["pdq"]
    service.add("memes", [EntryData(pdq=memes, label="meme template")])
    service.add("stock", [EntryData(pdq=stock, label="stock photo")])
    sync.refresh()
    allowing = _moderator_with(
        scoring,
        loaded,
        {
            "memes": AllowListRule(suppresses=("bank:known-bad",)),
            "stock": AllowListRule(suppresses=("testworld/contraband_symbol",)),
        },
    )
    banked_copy = allowing.moderate([allowing.prepare(_jpeg(image, 50))])[0]
    assert banked_copy.decision is Decision.ALLOW
    assert banked_copy.scores["known/banked"] > 0.85  # the score stands; the band is capped
    shown = next(c for c in banked_copy.categories if c.category_id == "banked")
    assert shown.evidence[0].label == "suppressed by allow-list memes #0"
    assert shown.evidence[0].details["suppressed"] is True
    assert "suppressed by allow-list memes" in banked_copy.explain()

    star = allowing.moderate([allowing.prepare(_png(borderline))])[0]
    assert star.decision is Decision.ALLOW
    top = next(c for c in star.categories if c.category_id == "contraband_symbol")
    assert top.evidence[0].label.startswith("suppressed by allow-list stock #0")
    # An allow-list suppresses only what it names: "stock" limited to the bank's categories
    # leaves the prompt category alone.
    narrow = _moderator_with(
        scoring, loaded, {"stock": AllowListRule(suppresses=("bank:known-bad",))}
    )
    assert narrow.moderate([narrow.prepare(_png(borderline))])[0].decision is Decision.REVIEW
