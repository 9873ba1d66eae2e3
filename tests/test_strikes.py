"""Uploader strikes: the policy's ``strikes:`` block (validated with file:line errors), strikes
accruing by severity and decaying, thresholds mapping them to warn / restrict / suspend with a
warning first, every change audited and called back, overturns removing strikes and lifting
actions, repeat-offender context without other tenants' data; over the twins and on a real
PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from psycopg_pool import ConnectionPool

from moderation.adapters.memory import (
    MemoryAuditSink,
    MemoryCallbacks,
    MemoryJobStore,
    MemoryStrikeStore,
)
from moderation.adapters.policy_files import load_policy_file
from moderation.adapters.postgres.strikes import PostgresStrikeStore
from moderation.core.image_ref import ImageRef
from moderation.core.jobs import Job, request_fingerprint, scoped_id
from moderation.core.policy import Policy
from moderation.core.review import item_from_verdict
from moderation.core.strikes import EnforcementAction, Strike, StrikeRules, is_uploader_id
from moderation.exceptions import PolicyValidationError
from moderation.pipeline.strikes import Enforcement
from moderation.ports import StrikeStore
from moderation.testmodel import POLICY_PATH
from tests.test_review_queue import make_verdict

T0 = datetime(2026, 11, 1, tzinfo=UTC).timestamp()
DAY = 86400.0

STRIKES = """
strikes:
  decay_days: 30
  points: {low: 1, medium: 2, high: 3, critical: 10}
  thresholds:
    - {at: 2, action: warn}
    - {at: 4, action: restrict}
    - {at: 6, action: suspend}
"""


def strike_policy(tmp_path: Path, block: str = STRIKES) -> Policy:
    path = tmp_path / "testworld.yaml"
    path.write_text(POLICY_PATH.read_text().rstrip("\n") + "\n" + block)
    return load_policy_file(path)


def test_the_policy_loader_validates_the_strikes_block_with_file_and_line(tmp_path: Path) -> None:
    policy = strike_policy(tmp_path)
    assert policy.strikes is not None and policy.strikes.action_for(5) is EnforcementAction.RESTRICT
    bad = STRIKES.replace("    - {at: 2, action: warn}\n", "")
    with pytest.raises(PolicyValidationError) as refused:
        strike_policy(tmp_path, bad)
    text = str(refused.value)
    assert "testworld.yaml:" in text and "warning step" in text
    line = int(text.split("testworld.yaml:", 1)[1].split(":", 1)[0])
    assert (
        (tmp_path / "testworld.yaml")
        .read_text()
        .splitlines()[line - 1]
        .startswith(("strikes", "  thresholds"))
    )
    unordered = STRIKES.replace("at: 4, action: restrict", "at: 1, action: restrict")
    with pytest.raises(PolicyValidationError, match="ascending"):
        strike_policy(tmp_path, unordered)
    with pytest.raises(PolicyValidationError, match="unknown severities"):
        strike_policy(tmp_path, STRIKES.replace("low: 1", "lowest: 1"))
    # A policy without strikes keeps its hash: the block is optional.
    assert load_policy_file(POLICY_PATH).strikes is None


def test_uploader_ids_are_pseudonymous_tokens_and_part_of_the_request_fingerprint() -> None:
    assert is_uploader_id("u-5f2c") and is_uploader_id("A" * 128)
    for bad in ("", "a" * 129, "me@example.com", "a/b", "-x", "x y"):
        assert not is_uploader_id(bad)
    base = {"image": "x", "policies": None, "metadata": {}, "callback_url": None}
    assert request_fingerprint(**base) == request_fingerprint(**base, uploader_id=None)
    assert request_fingerprint(**base, uploader_id="u1") != request_fingerprint(**base)


class World:
    def __init__(self, policy: Policy, strikes: StrikeStore | None = None) -> None:
        self.store = MemoryJobStore()
        self.strikes = strikes or MemoryStrikeStore()
        self.audit = MemoryAuditSink()
        self.callbacks = MemoryCallbacks()
        self.clock = [T0]
        self.policy = policy
        self.enforcement = Enforcement(
            strikes=self.strikes,
            store=self.store,
            audit=self.audit,
            callbacks=self.callbacks,
            policies=lambda: {policy.id: policy},
            clock=lambda: self.clock[0],
        )

    def job(self, tenant: str, job_id: str, uploader: str | None) -> Job:
        job = Job(
            id=scoped_id(tenant, job_id),
            image=ImageRef(uri=f"s3://u/{job_id}.png"),
            tenant=tenant,
            uploader_id=uploader,
            callback_url="https://tenant.example/cb",
        )
        self.store.create(job)
        return job

    def block(self, tenant: str, job_id: str, uploader: str | None, category: str) -> object:
        job = self.job(tenant, job_id, uploader)
        return self.enforcement.on_decision(
            job,
            decision="block",
            source="automated",
            policy_id=self.policy.id,
            category_id=category,
            severity=self.policy.category(category).severity.value,
            at=datetime.fromtimestamp(self.clock[0], UTC),
        )

    def actions(self) -> list[tuple[str, str, bool]]:
        out = []
        for _, _, body in self.callbacks.sent:
            sent = json.loads(body)
            if sent["event"] == "uploader.action":
                out.append((sent["uploader_id"], sent["action"], sent["lifted"]))
        return out


def test_strikes_accrue_to_suspension_and_an_overturn_lifts_it(tmp_path: Path) -> None:
    w = World(strike_policy(tmp_path))
    medium = "restricted_logo"  # severity medium: 2 points
    assert w.policy.category(medium).severity.value == "medium"
    w.block("acme", "j1", "u1", medium)  # 2: warn
    w.block("acme", "j2", "u1", medium)  # 4: restrict
    w.block("acme", "j3", "u1", medium)  # 6: suspend
    assert w.actions() == [
        ("u1", "warn", False),
        ("u1", "restrict", False),
        ("u1", "suspend", False),
    ]
    assert [r.decision for r in w.audit.records] == ["warn", "restrict", "suspend"]
    assert all(r.kind == "enforcement" and r.tenant == "acme" for r in w.audit.records)
    assert w.enforcement.standing("acme", "u1").action is EnforcementAction.SUSPEND
    # The same decision again (a redelivery) changes nothing.
    w.block("acme", "j3", "u1", medium)
    assert len(w.actions()) == 3
    # An overturn removes j3's strike: 4 points, back to restrict; j2's too: warn.
    change = w.enforcement.on_overturn(scoped_id("acme", "j3"))
    assert change is not None and change.lifted and change.after is EnforcementAction.RESTRICT
    w.enforcement.on_overturn(scoped_id("acme", "j2"))
    assert w.actions()[-2:] == [("u1", "restrict", True), ("u1", "warn", True)]
    standing = w.enforcement.standing("acme", "u1")
    assert standing.points == 2 and standing.action is EnforcementAction.WARN
    assert sum(s.removed_at is not None for s in standing.strikes) == 2
    # An overturned decision's strike does not come back with a redelivered decision.
    w.block("acme", "j3", "u1", medium)
    assert w.enforcement.standing("acme", "u1").points == 2


def test_a_warning_comes_before_any_suspension(tmp_path: Path) -> None:
    w = World(strike_policy(tmp_path))
    critical = "contraband_symbol"  # 10 points: past the suspension threshold at once
    assert w.policy.category(critical).severity.value == "critical"
    w.block("acme", "c1", "u2", critical)
    assert w.actions() == [("u2", "warn", False)]
    w.block("acme", "c2", "u2", critical)
    assert w.actions() == [("u2", "warn", False), ("u2", "suspend", False)]


def test_strikes_decay_and_stay_within_their_tenant(tmp_path: Path) -> None:
    w = World(strike_policy(tmp_path))
    w.block("acme", "d1", "same-id", "restricted_logo")
    w.block("beta", "d1", "same-id", "restricted_logo")  # another tenant's "same-id"
    assert w.enforcement.standing("acme", "same-id").points == 2
    assert w.enforcement.standing("beta", "same-id").points == 2
    assert len(w.enforcement.standing("acme", "same-id").strikes) == 1
    w.clock[0] = T0 + 31 * DAY  # past decay_days
    assert w.enforcement.standing("acme", "same-id").points == 0
    w.block("acme", "d2", "same-id", "restricted_logo")
    # 2 points in force again, the action already warn: no new callback for acme.
    assert [a for a in w.actions() if a[0] == "same-id"] == [
        ("same-id", "warn", False),
        ("same-id", "warn", False),
    ]
    assert {t for t in w.callbacks.tenants} == {"acme", "beta"}


def test_no_uploader_or_no_rules_no_strike(tmp_path: Path) -> None:
    w = World(strike_policy(tmp_path))
    assert w.block("acme", "n1", None, "restricted_logo") is None
    plain = World(load_policy_file(POLICY_PATH))
    assert plain.block("acme", "n2", "u9", "restricted_logo") is None
    assert plain.enforcement.standing("acme", "u9").strikes == []


def test_repeat_offender_context_and_priority_for_the_review_page(tmp_path: Path) -> None:
    w = World(strike_policy(tmp_path))
    w.block("acme", "p1", "u3", "restricted_logo")
    w.block("beta", "p1", "u3", "restricted_logo")  # never shown to acme's reviewers
    verdict = make_verdict(w.policy, "restricted_logo", 0.5)
    item = item_from_verdict(
        job_id=scoped_id("acme", "p2"),
        image=ImageRef(uri="s3://u/p2.png"),
        verdict=verdict,
        policy=w.policy,
        uploader_id="u3",
    )
    context = w.enforcement.context(item)
    assert context is not None and context["strike_points"] == 2 and context["action"] == "warn"
    assert [p["job_id"] for p in context["prior"]] == ["p1"]
    assert w.enforcement.boost("acme", "u3") == 1.0
    assert w.enforcement.boost("acme", "someone-else") == 0.0
    w.block("acme", "p3", "u3", "restricted_logo")  # restrict
    assert w.enforcement.boost("acme", "u3") == 2.0
    no_uploader = item.model_copy(update={"uploader_id": None})
    assert w.enforcement.context(no_uploader) is None


def test_rules_map_points_to_actions() -> None:
    rules = StrikeRules.model_validate(
        {"thresholds": [{"at": 3, "action": "warn"}, {"at": 9, "action": "suspend"}]}
    )
    assert [rules.action_for(p).value for p in (0, 2, 3, 8, 9, 50)] == [
        "none",
        "none",
        "warn",
        "warn",
        "suspend",
        "suspend",
    ]
    assert rules.points_for("critical") == 5 and rules.decay == timedelta(days=90)


@pytest.fixture
def pg_strikes(pg_url: str) -> Iterator[PostgresStrikeStore]:
    pool = ConnectionPool(pg_url, min_size=1, max_size=4, open=True)
    with pool.connection() as conn:
        conn.execute("TRUNCATE uploader_strikes, uploader_actions")
    try:
        yield PostgresStrikeStore(pool)
    finally:
        pool.close()


@pytest.mark.xdist_group("postgres")
def test_strikes_on_postgres_reach_suspension_and_are_lifted_by_overturns(
    tmp_path: Path, pg_strikes: PostgresStrikeStore
) -> None:
    w = World(strike_policy(tmp_path), strikes=pg_strikes)
    for n in range(3):
        w.block("acme", f"g{n}", "u1", "restricted_logo")
    w.block("beta", "g0", "u1", "restricted_logo")
    assert [a for _, a, _ in w.actions()] == ["warn", "restrict", "suspend", "warn"]
    assert pg_strikes.action("acme", "u1") == (EnforcementAction.SUSPEND, True)
    assert pg_strikes.action("beta", "u1") == (EnforcementAction.WARN, True)
    # Compare and set: a stale writer does not overwrite.
    at = datetime.fromtimestamp(T0, UTC)
    assert not pg_strikes.set_action(
        "acme", "u1", expected=EnforcementAction.WARN, action=EnforcementAction.NONE, at=at
    )
    for n in (2, 1, 0):
        w.enforcement.on_overturn(scoped_id("acme", f"g{n}"))
    assert pg_strikes.action("acme", "u1")[0] is EnforcementAction.NONE
    assert [a for a in w.actions()[-3:]] == [
        ("u1", "restrict", True),
        ("u1", "warn", True),
        ("u1", "none", True),
    ]
    strikes = pg_strikes.strikes("acme", "u1")
    assert len(strikes) == 3 and all(s.removed_at is not None for s in strikes)
    assert pg_strikes.remove("acme", scoped_id("acme", "g0"), at=at) is None  # once
    # A strike the overturn removed is never restored by a redelivered decision.
    assert not pg_strikes.add(
        Strike.model_validate({**strikes[0].model_dump(), "removed_at": None})
    )
    assert pg_strikes.strikes("beta", "u1")[0].removed_at is None
