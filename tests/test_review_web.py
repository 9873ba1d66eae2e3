"""The reviewers' router over real HTTP: uvicorn on a free port, a real valkey server, httpx."""

from __future__ import annotations

import io
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from PIL import Image
from starlette.exceptions import HTTPException

from moderation.adapters.images import safe_png
from moderation.adapters.memory import (
    MemoryAuditSink,
    MemoryBankStore,
    MemoryBlobStore,
    MemoryEntryGuard,
)
from moderation.adapters.passwords import hash_password
from moderation.adapters.redis_review import RedisReviewQueue
from moderation.adapters.redis_reviewers import RedisReviewerStore
from moderation.adapters.redis_sessions import RedisLoginThrottle, RedisReviewerSessions
from moderation.adapters.redis_wellbeing import RedisWellbeingStore
from moderation.adapters.support.redis import connect as _connect
from moderation.compose.access import build_reviewer_auth
from moderation.core.review import HumanDecision, pseudonym
from moderation.core.reviewers import ReviewerAccount, Role
from moderation.pipeline.bank_guard import BankGuard
from moderation.pipeline.banks import BankService
from moderation.pipeline.review_desk import ReviewDesk
from moderation.pipeline.review_evidence import ReviewEvidence
from moderation.pipeline.signin import ReviewerAuth
from moderation.pipeline.wellbeing import Wellbeing
from moderation.settings import ReviewSettings, Settings
from moderation.testmodel import sample_images
from moderation.web import build_review_router
from tests.servers import free_port, wait_for_port
from tests.test_review_queue import make_item, with_evidence, world_policy

PASSWORD = "review-pass-123"


@dataclass
class ReviewSite:
    url: str
    queue: RedisReviewQueue
    users: RedisReviewerStore
    settings: Settings
    audit: MemoryAuditSink
    sessions: RedisReviewerSessions
    finals: list[HumanDecision] = field(default_factory=list)
    blobs: MemoryBlobStore = field(default_factory=MemoryBlobStore)
    auth: ReviewerAuth | None = None
    #: The desk behind the pages (its outbox stands in for the workers' maintenance).
    desk: ReviewDesk | None = None
    #: Bank entries' states behind the pages' bank-entry API (over in-memory twins).
    bank_guard: BankGuard | None = None
    #: Reviewer wellbeing behind the pages (on the same valkey server).
    wellbeing: Wellbeing | None = None

    def rv(self, username: str) -> str:
        return pseudonym(self.settings.review.pseudonym_secret.get_secret_value(), username)

    def add_items(self, n: int, *, category_id: str = "restricted_logo", seed: int = 7) -> None:
        policy = world_policy()
        for i, (image, _label) in enumerate(sample_images("review", n, seed)):
            job = f"job-{seed}-{i}"
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            self.queue.submit(
                with_evidence(
                    make_item(policy, job, category_id=category_id, score=0.35 + 0.05 * i),
                    buffer.getvalue(),
                    self.blobs,
                )
            )


@pytest.fixture
def review_settings() -> ReviewSettings:
    """Review settings of the site (tests override the sign-in throttle)."""
    return ReviewSettings(
        lease_s=60,
        session_secret="test-session-secret",
        pseudonym_secret="test-pseudonym-secret",
        undo_window_s=0.0,
    )


@pytest.fixture(name="site")
def review_site(redis_url: str, review_settings: ReviewSettings) -> Iterator[ReviewSite]:
    """The review router in a small FastAPI app, served by uvicorn on a free port."""
    from moderation.http.problems import handle_http_error

    settings = Settings(environment="development", review=review_settings)
    client = _connect(redis_url, decode=True)
    queue = RedisReviewQueue(
        client, lease_s=settings.review.lease_s, age_doubling_s=settings.review.age_doubling_s
    )
    users = RedisReviewerStore(client)
    for name, role in (
        ("alice", Role.REVIEWER),
        ("bob", Role.REVIEWER),
        ("sam", Role.SENIOR),
        ("root", Role.ADMIN),
    ):
        users.create(
            ReviewerAccount(
                username=name,
                role=role,
                password_hash=hash_password(PASSWORD),
                disabled=False,
                created_at=time.time(),
            )
        )
    audit = MemoryAuditSink()
    sessions = RedisReviewerSessions(
        client,
        idle_s=review_settings.session_idle_s,
        max_s=review_settings.session_ttl_s,
        prefix=review_settings.key_prefix,
    )
    auth = build_reviewer_auth(
        settings,
        users,
        sessions=sessions,
        throttle=RedisLoginThrottle(client, prefix=review_settings.key_prefix),
        audit=audit,
    )
    state = ReviewSite(
        url="",
        queue=queue,
        users=users,
        settings=settings,
        audit=audit,
        sessions=sessions,
        auth=auth,
    )
    state.wellbeing = Wellbeing(RedisWellbeingStore(client, prefix=review_settings.key_prefix))
    state.desk = ReviewDesk(
        queue,
        on_final=state.finals.append,
        evidence=ReviewEvidence(state.blobs, retention_s=3600),
        render_image=lambda data: safe_png(data, settings.images),
        undo_window_s=review_settings.undo_window_s,
        skip_away_s=review_settings.skip_away_s,
        wellbeing=state.wellbeing,
    )
    state.bank_guard = BankGuard(MemoryEntryGuard(), banks=BankService(MemoryBankStore()))
    app = FastAPI()
    app.add_exception_handler(HTTPException, handle_http_error)
    app.include_router(
        build_review_router(
            settings, state.desk, auth, bank_guard=state.bank_guard, wellbeing=state.wellbeing
        )
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for_port(port)
    state.url = f"http://127.0.0.1:{port}"
    try:
        yield state
    finally:
        server.should_exit = True
        thread.join(10)
        client.close()


def sign_in(site: ReviewSite, username: str) -> tuple[httpx.Client, str]:
    """A signed-in client and its CSRF token (read from the page, as the browser does)."""
    client = httpx.Client(base_url=site.url, timeout=10)
    form = client.get("/review/login")
    login_csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert login_csrf is not None
    answer = client.post(
        "/review/login",
        data={"username": username, "password": PASSWORD, "csrf": login_csrf.group(1)},
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/review/"
    page = client.get("/review/")
    assert page.status_code == 200
    token = re.search(r'<meta name="csrf-token" content="([^"]+)"', page.text)
    assert token is not None
    return client, token.group(1)


def test_unauthenticated_requests_are_refused(site: ReviewSite) -> None:
    site.add_items(1)
    with httpx.Client(base_url=site.url, timeout=10) as anon:
        page = anon.get("/review/")
        assert page.status_code == 303 and page.headers["location"] == "/review/login"
        assert anon.get("/review/overview").status_code == 303
        for method, path in (
            ("GET", "/review/api/overview"),
            ("POST", "/review/api/next"),
            ("GET", "/review/api/admin/stats"),
            ("GET", f"/review/api/image/{site.queue.policies()[0]}"),
        ):
            answer = anon.request(method, path)
            assert answer.status_code == 401, (method, path)
            assert answer.json()["code"] == "review_not_signed_in"
        anon.cookies.set("mr_session", "eyJ1IjoiYWxpY2UifQ.forged", path="/review")
        assert anon.post("/review/api/next").status_code == 401
        # Sign-in itself: wrong password, and a form without the pre-session CSRF token.
        form = anon.get("/review/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
        bad = anon.post(
            "/review/login", data={"username": "alice", "password": "nope-nope-nope", "csrf": csrf}
        )
        assert bad.status_code == 401 and "mr_session" not in bad.cookies
        assert (
            anon.post("/review/login", data={"username": "alice", "password": PASSWORD}).status_code
            == 403
        )


def test_security_headers_csrf_and_roles(site: ReviewSite) -> None:
    alice, csrf = sign_in(site, "alice")
    page = alice.get("/review/")
    assert page.headers["x-frame-options"] == "DENY"
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    assert "<script>" not in page.text and " style=" not in page.text  # CSP-clean markup
    assert alice.post("/review/api/next").status_code == 403
    assert alice.post("/review/api/next", headers={"X-CSRF-Token": "wrong"}).status_code == 403
    ok = alice.post("/review/api/next", headers={"X-CSRF-Token": csrf})
    assert ok.status_code == 200 and ok.json() == {"item": None}
    # Another session's token does not work for this one.
    bob, bob_csrf = sign_in(site, "bob")
    assert alice.post("/review/api/next", headers={"X-CSRF-Token": bob_csrf}).status_code == 403
    # Wrong role.
    assert alice.get("/review/api/admin/stats").status_code == 403
    assert (
        alice.post(
            "/review/api/admin/requeue", json={"review_id": "x"}, headers={"X-CSRF-Token": csrf}
        ).status_code
        == 403
    )
    root, root_csrf = sign_in(site, "root")
    stats = root.get("/review/api/admin/stats")
    assert stats.status_code == 200 and stats.json()["undelivered"] == 0
    assert root.post("/review/api/admin/requeue", json={"review_id": "x"}).status_code == 403
    # An admin can take an item back from its holder; the holder then loses the image.
    site.add_items(1)
    held = alice.post("/review/api/next", headers={"X-CSRF-Token": csrf}).json()["item"]
    assert alice.get(held["image_url"]).status_code == 200
    requeued = root.post(
        "/review/api/admin/requeue",
        json={"review_id": held["review_id"]},
        headers={"X-CSRF-Token": root_csrf},
    )
    assert requeued.status_code == 200 and requeued.json() == {"requeued": True}
    assert alice.get(held["image_url"]).status_code == 404
    # Disabling an account ends its sessions at once; signing out ends this one.
    site.users.set_disabled("bob", True)
    assert bob.post("/review/api/next", headers={"X-CSRF-Token": bob_csrf}).status_code == 401
    copied = alice.cookies.get("mr_session")
    out = alice.post("/review/logout", data={"csrf": csrf})
    assert out.status_code == 303
    assert alice.get("/review/api/overview").status_code == 401
    # The session ended on the server: a copy of the cookie taken before sign-out is worthless.
    with httpx.Client(base_url=site.url, timeout=10) as thief:
        thief.cookies.set("mr_session", copied or "", path="/review")
        stolen = thief.get("/review/api/overview")
        assert stolen.status_code == 401 and stolen.json()["code"] == "review_not_signed_in"
    for c in (alice, bob, root):
        c.close()


def test_an_admin_ends_every_session_of_an_account(site: ReviewSite) -> None:
    alice_1, csrf_1 = sign_in(site, "alice")
    alice_2, _ = sign_in(site, "alice")
    root, root_csrf = sign_in(site, "root")
    assert site.sessions.count("alice") == 2
    refused = alice_1.post(
        "/review/api/admin/sessions/end",
        json={"username": "alice"},
        headers={"X-CSRF-Token": csrf_1},
    )
    assert refused.status_code == 403  # reviewers cannot
    ended = root.post(
        "/review/api/admin/sessions/end",
        json={"username": "alice"},
        headers={"X-CSRF-Token": root_csrf},
    )
    assert ended.status_code == 200 and ended.json() == {"username": "alice", "ended": 2}
    for client in (alice_1, alice_2):
        assert client.get("/review/api/overview").status_code == 401
        assert client.get("/review/").status_code == 303  # pages send them to sign in
    assert root.get("/review/api/overview").status_code == 200
    unknown = root.post(
        "/review/api/admin/sessions/end",
        json={"username": "nobody"},
        headers={"X-CSRF-Token": root_csrf},
    )
    assert unknown.status_code == 404
    record = next(r for r in site.audit.records if r.decision == "sessions_ended")
    assert record.kind == "security" and record.actor == site.rv("alice")
    assert record.details == {"by": site.rv("root"), "sessions": 2}
    for c in (alice_1, alice_2, root):
        c.close()


def _login(client: httpx.Client, username: str, password: str) -> httpx.Response:
    form = client.get("/review/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf is not None
    return client.post(
        "/review/login", data={"username": username, "password": password, "csrf": csrf.group(1)}
    )


class ManualClock:
    """The sign-in's clock, moved only by the test: the throttle's waits are then exact,
    however long each request takes on a busy machine."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.mark.parametrize(
    "review_settings",
    [
        ReviewSettings(
            session_secret="test-session-secret",
            pseudonym_secret="test-pseudonym-secret",
            login_free_failures=2,
            login_delay_s=20.0,
            login_max_delay_s=40.0,
            login_lockout_after=4,
            login_lockout_s=600,
        )
    ],
)
def test_sign_in_slows_down_then_locks_out_over_http(site: ReviewSite) -> None:
    from moderation.metrics import metrics

    assert site.auth is not None
    clock = site.auth.clock = ManualClock()
    failures = metrics().login_failures
    before = failures.labels("bad_credentials")._value.get()
    with httpx.Client(base_url=site.url, timeout=10) as attacker:
        assert _login(attacker, "alice", "wrong-password-1").status_code == 401
        assert _login(attacker, "alice", "wrong-password-2").status_code == 401
        third = _login(attacker, "alice", "wrong-password-3")
        assert third.status_code == 401  # checked; the next attempt must wait 20 s
        early = _login(attacker, "alice", PASSWORD)
        assert early.status_code == 429 and early.headers["retry-after"] == "20"
        assert "too many failed sign-ins" in early.text
        clock.advance(20.05)
        assert _login(attacker, "alice", "wrong-password-4").status_code == 401  # 4th: locked
        locked = _login(attacker, "alice", PASSWORD)
        assert locked.status_code == 429 and int(locked.headers["retry-after"]) > 590
        assert "mr_session" not in attacker.cookies
    assert failures.labels("bad_credentials")._value.get() - before == 4
    events = [(r.decision, r.details.get("client")) for r in site.audit.records]
    assert events.count(("login_failed", "127.0.0.1")) == 4
    assert ("login_locked", "127.0.0.1") in events
    # Other accounts are not locked out; this address only waits its own delay (4 of its
    # failures, 2 free: 2 x 20 s, capped at login_max_delay_s), counted from its 4th failure.
    with httpx.Client(base_url=site.url, timeout=10) as other:
        wait = _login(other, "bob", PASSWORD)
        assert wait.status_code == 429 and 0 < int(wait.headers["retry-after"]) <= 40
    clock.advance(40.05)
    bob, _ = sign_in(site, "bob")
    bob.close()


def test_no_one_sees_another_reviewers_item_and_decisions_flow_once(site: ReviewSite) -> None:
    site.add_items(2)
    alice, a_csrf = sign_in(site, "alice")
    bob, b_csrf = sign_in(site, "bob")
    a_item = alice.post("/review/api/next", headers={"X-CSRF-Token": a_csrf}).json()["item"]
    b_item = bob.post("/review/api/next", headers={"X-CSRF-Token": b_csrf}).json()["item"]
    assert a_item["review_id"] != b_item["review_id"]
    assert "s3://" not in str(a_item)  # no bucket URL reaches the browser
    # Reloading gives the same lease, not a second item.
    again = alice.post("/review/api/next", headers={"X-CSRF-Token": a_csrf}).json()["item"]
    assert again["review_id"] == a_item["review_id"] and again["token"] == a_item["token"]
    image = alice.get(a_item["image_url"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert "no-store" in image.headers["cache-control"]
    assert Image.open(io.BytesIO(image.content)).size[0] > 0
    assert bob.get(a_item["image_url"]).status_code == 404
    stolen = bob.post(
        "/review/api/decide",
        headers={"X-CSRF-Token": b_csrf},
        json={"review_id": a_item["review_id"], "token": b_item["token"], "decision": "allow"},
    )
    assert stolen.status_code == 409 and stolen.json()["code"] == "review_not_lease_holder"
    decision = {
        "review_id": a_item["review_id"],
        "token": a_item["token"],
        "decision": "remove",
        "reason_code": a_item["reason_codes"][0],
    }
    first = alice.post("/review/api/decide", headers={"X-CSRF-Token": a_csrf}, json=decision)
    assert first.status_code == 200 and first.json()["status"] == "final"
    assert first.json()["delivered"] is True and not first.json()["replay"]
    second = alice.post("/review/api/decide", headers={"X-CSRF-Token": a_csrf}, json=decision)
    assert second.status_code == 200 and second.json()["replay"] is True
    assert len(site.finals) == 1
    final = site.finals[0]
    assert final.review_id == a_item["review_id"] and final.reviewers == [site.rv("alice")]
    assert final.decision.value == "remove" and final.reason_code == "TW_LOGO"
    assert alice.get(a_item["image_url"]).status_code == 404  # lease gone with the decision
    overview = alice.get("/review/api/overview").json()
    assert overview["my_decisions_today"] == 1
    assert overview["queues"][0]["in_review"] == 1  # bob's item
    for c in (alice, bob):
        c.close()


def test_critical_removal_over_http_needs_a_second_reviewer(site: ReviewSite) -> None:
    site.add_items(1, category_id="contraband_symbol")
    alice, a_csrf = sign_in(site, "alice")
    bob, b_csrf = sign_in(site, "bob")
    item = alice.post("/review/api/next", headers={"X-CSRF-Token": a_csrf}).json()["item"]
    assert item["severity"] == "critical" and not item["second_review"]
    assert item["revealed"] is False
    # Never looked at: the server refuses "remove" (and "allow"), whatever the page does.
    unseen = alice.post(
        "/review/api/decide",
        headers={"X-CSRF-Token": a_csrf},
        json={
            "review_id": item["review_id"],
            "token": item["token"],
            "decision": "remove",
            "reason_code": "TW_CONTRABAND",
        },
    )
    assert unseen.status_code == 400 and unseen.json()["code"] == "review_reveal_required"
    # Only the lease holder records a look (another reviewer's id answers 404).
    peek = bob.post(
        "/review/api/reveal",
        headers={"X-CSRF-Token": b_csrf},
        json={"review_id": item["review_id"]},
    )
    assert peek.status_code == 404
    looked = alice.post(
        "/review/api/reveal",
        headers={"X-CSRF-Token": a_csrf},
        json={"review_id": item["review_id"]},
    )
    assert looked.status_code == 200
    again = alice.post("/review/api/next", headers={"X-CSRF-Token": a_csrf}).json()["item"]
    assert again["token"] == item["token"] and again["revealed"] is True
    answer = alice.post(
        "/review/api/decide",
        headers={"X-CSRF-Token": a_csrf},
        json={
            "review_id": item["review_id"],
            "token": item["token"],
            "decision": "remove",
            "reason_code": "TW_CONTRABAND",
        },
    ).json()
    assert answer["status"] == "pending_second_review" and site.finals == []
    assert alice.post("/review/api/next", headers={"X-CSRF-Token": a_csrf}).json()["item"] is None
    second = bob.post("/review/api/next", headers={"X-CSRF-Token": b_csrf}).json()["item"]
    assert second["review_id"] == item["review_id"] and second["second_review"]
    # Alice's look is not Bob's: the second reviewer looks too.
    assert second["revealed"] is False
    assert (
        bob.post(
            "/review/api/reveal",
            headers={"X-CSRF-Token": b_csrf},
            json={"review_id": item["review_id"]},
        ).status_code
        == 200
    )
    done = bob.post(
        "/review/api/decide",
        headers={"X-CSRF-Token": b_csrf},
        json={
            "review_id": item["review_id"],
            "token": second["token"],
            "decision": "remove",
            "reason_code": "TW_CONTRABAND",
        },
    ).json()
    assert done["status"] == "final" and done["decision"] == "remove"
    assert [f.reviewers for f in site.finals] == [[site.rv("alice"), site.rv("bob")]]
    for c in (alice, bob):
        c.close()


def test_an_escalation_waits_in_its_own_queue_for_a_senior_reviewer(site: ReviewSite) -> None:
    site.add_items(1, category_id="contraband_symbol", seed=11)
    alice, a_csrf = sign_in(site, "alice")
    sam, s_csrf = sign_in(site, "sam")
    root, _ = sign_in(site, "root")
    item = alice.post("/review/api/next", headers={"X-CSRF-Token": a_csrf}).json()["item"]
    assert item["queue"] == "review"
    escalated = alice.post(
        "/review/api/decide",
        headers={"X-CSRF-Token": a_csrf},
        json={"review_id": item["review_id"], "token": item["token"], "decision": "escalate"},
    ).json()
    assert escalated["status"] == "escalated" and escalated["undo_s"] == 0
    assert site.finals == []
    # A reviewer neither gets it nor may ask for the escalation queue.
    assert alice.post("/review/api/next", headers={"X-CSRF-Token": a_csrf}).json()["item"] is None
    refused = alice.post(
        "/review/api/next", headers={"X-CSRF-Token": a_csrf}, json={"queues": ["escalation"]}
    )
    assert refused.status_code == 403 and refused.json()["code"] == "review_forbidden"
    mine = alice.get("/review/api/overview").json()
    assert mine["me"]["queues"] == ["review"]
    assert {q["queue"] for q in mine["queues"]} == {"review"}
    # The senior sees the count and the age, and may pick the queue.
    overview = sam.get("/review/api/overview").json()
    assert overview["me"]["queues"] == ["review", "escalation", "appeal"]
    (esc,) = [q for q in overview["queues"] if q["queue"] == "escalation"]
    assert esc["waiting"] == 1 and esc["oldest_age_s"] is not None
    page = sam.get("/review/")
    assert 'id="queue-picker"' in page.text and 'value="escalation"' in page.text
    assert 'id="queue-picker"' not in alice.get("/review/").text
    nothing = sam.post(
        "/review/api/next", headers={"X-CSRF-Token": s_csrf}, json={"queues": ["review"]}
    ).json()
    assert nothing["item"] is None
    senior = sam.post(
        "/review/api/next", headers={"X-CSRF-Token": s_csrf}, json={"queues": ["escalation"]}
    ).json()["item"]
    assert senior["review_id"] == item["review_id"] and senior["queue"] == "escalation"
    decide = {"review_id": item["review_id"], "token": senior["token"]}
    again = sam.post(
        "/review/api/decide",
        headers={"X-CSRF-Token": s_csrf},
        json={**decide, "decision": "escalate"},
    )
    assert again.status_code == 400 and again.json()["code"] == "review_already_escalated"
    sam.post(
        "/review/api/reveal",
        headers={"X-CSRF-Token": s_csrf},
        json={"review_id": item["review_id"]},
    )
    done = sam.post(
        "/review/api/decide",
        headers={"X-CSRF-Token": s_csrf},
        json={**decide, "decision": "remove", "reason_code": "TW_CONTRABAND"},
    ).json()
    # One senior's removal is final, even for a critical item.
    assert done["status"] == "final" and done["decision"] == "remove"
    assert [f.reviewers for f in site.finals] == [[site.rv("sam")]]
    assert "escalation" in root.get("/review/api/overview").json()["me"]["queues"]
    for c in (alice, sam, root):
        c.close()


def test_a_reviewer_confirms_or_disables_a_bank_entry(site: ReviewSite) -> None:
    from moderation.core.banks import EntryData

    guard = site.bank_guard
    assert guard is not None and guard.banks is not None
    guard.banks.create("imported")
    guard.banks.add("imported", [EntryData(pdq="ab" * 32), EntryData(pdq="cd" * 32)])
    guard.quarantine("imported", 0, by="flood")
    guard.quarantine("imported", 1, by="flood")
    client, csrf = sign_in(site, "alice")
    try:
        listed = client.get("/review/api/banks/entries").json()["entries"]
        assert [(e["entry_id"], e["state"]) for e in listed] == [
            (0, "quarantined"),
            (1, "quarantined"),
        ]
        body = {"bank": "imported", "entry_id": 0, "action": "confirm", "reason": "known bad"}
        assert client.post("/review/api/banks/entry", json=body).status_code == 403  # no CSRF
        headers = {"x-csrf-token": csrf}
        done = client.post("/review/api/banks/entry", json=body, headers=headers)
        assert done.status_code == 200 and done.json()["entry"]["by"] == site.rv("alice")
        off = {"bank": "imported", "entry_id": 1, "action": "disable"}
        assert client.post("/review/api/banks/entry", json=off, headers=headers).status_code == 200
        gone = {"bank": "imported", "entry_id": 7, "action": "disable"}
        assert client.post("/review/api/banks/entry", json=gone, headers=headers).status_code == 404
        # Past the database's bigint: refused as input (422), never a database error.
        huge = {"bank": "imported", "entry_id": 2**64, "action": "disable"}
        assert client.post("/review/api/banks/entry", json=huge, headers=headers).status_code == 422
        states = {
            e["entry_id"]: e["state"]
            for e in client.get("/review/api/banks/entries").json()["entries"]
        }
    finally:
        client.close()
    assert states == {0: "confirmed", 1: "disabled"}
    # The disabled entry is out of the bank (a tombstone), the confirmed one stays.
    assert [e.id for e in guard.banks.entries("imported")] == [0]
