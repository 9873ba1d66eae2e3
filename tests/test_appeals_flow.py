"""Appeals end to end on real servers: a ``moderation worker`` process and the API on PostgreSQL,
valkey and an S3 server (moto, the audit log). A reviewer removes an item; the tenant appeals it
with the client; that reviewer is never offered the appeal, a second one sees the scored image,
the statement and the first decision, and overturns it; the tenant gets the signed
``job.appeal_decided`` callback; the audit log in S3 holds the overturn linked to the removal;
the statement-of-reasons export says it was reversed; the other tenant can neither appeal the job
nor read the appeal. An automated block is appealed too (its scored bytes were kept for it)."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from moderation import testmodel
from moderation.adapters.passwords import hash_password
from moderation.adapters.redis_jobs import RedisJobStore
from moderation.cli import app as cli_app
from moderation.client import ModerationClient
from moderation.core.callbacks import SIGNATURE_HEADER, verify
from moderation.core.review import ReviewDecision, pseudonym
from moderation.core.reviewers import ReviewerAccount, Role
from moderation.exceptions import JobNotFoundError, JobRejected
from moderation.settings import ApiKey, Settings, TenantSettings
from tests.pipeline_support import WorkerProcess, pipeline_settings, png_bytes, start_api, stop_api
from tests.servers import MotoServer, free_port, start_valkey

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("postgres")]

PASSWORD = "a long enough password"
SECRET = b"test-secret"
#: Strike rules of the site's policy: every block band of the test world is worth 2 or 3.
STRIKES = """
strikes:
  decay_days: 30
  points: {low: 1, medium: 2, high: 3, critical: 3}
  thresholds:
    - {at: 2, action: warn}
    - {at: 4, action: restrict}
    - {at: 6, action: suspend}
"""


@dataclass
class Receiver:
    """The tenant's callback endpoint: keeps each body with whether its signature verified."""

    got: list[tuple[dict[str, Any], bool]] = field(default_factory=list)

    def start(self) -> tuple[ThreadingHTTPServer, str]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                ok = verify(SECRET, body, self.headers.get(SIGNATURE_HEADER, ""))
                receiver.got.append((json.loads(body), ok))
                self.send_response(204)
                self.end_headers()

        server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server, f"http://localhost:{server.server_address[1]}/cb"

    def event(self, name: str, job_id: str, timeout: float = 60) -> tuple[dict[str, Any], bool]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for body, ok in list(self.got):
                if body["event"] == name and body["result"]["job_id"] == job_id:
                    return body, ok
            time.sleep(0.1)
        raise AssertionError(f"no {name} callback for {job_id}: {self.got}")


@dataclass
class Site:
    settings: Settings
    api_settings: Settings
    base: str
    acme: ModerationClient
    beta: ModerationClient
    receiver: Receiver
    callback: str
    server: Any


def _wait(check: Any, what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(what)


@pytest.fixture(scope="module")
def site(
    test_model_settings: Settings, tmp_path_factory: pytest.TempPathFactory, pg_url: str
) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("appeals-flow")
    valkey = start_valkey()
    s3 = MotoServer()
    s3.start()
    s3.client().create_bucket(Bucket="audit", ObjectLockEnabledForBucket=True)
    receiver = Receiver()
    http, callback = receiver.start()
    policies = tmp / "policies"
    policies.mkdir()
    (policies / "testworld.yaml").write_text(
        testmodel.POLICY_PATH.read_text().rstrip("\n") + "\n" + STRIKES
    )
    base = test_model_settings.model_copy(
        update={
            "policy_paths": [policies],
            "cache_dir": tmp / "cache",
            "database": test_model_settings.database.model_copy(
                update={"url": SecretStr(pg_url), "pool_max_size": 4}
            ),
            "blobs": test_model_settings.blobs.model_copy(update={"local_dir": tmp / "blobs"}),
            "s3": test_model_settings.s3.model_copy(
                update={
                    "endpoint_url": s3.url,
                    "access_key_id": SecretStr("testing"),
                    "secret_access_key": SecretStr("testing"),
                }
            ),
            "audit": test_model_settings.audit.model_copy(
                update={"bucket": "audit", "spool_dir": tmp / "spool", "retention_days": 1}
            ),
            # Decisions are handed on at once (no undo window); the workers retry the rest.
            "review": test_model_settings.review.model_copy(
                update={"outbox_retry_s": 0.5, "undo_window_s": 0.0}
            ),
            "api_keys": [
                ApiKey(tenant="acme", key=SecretStr("acme-key-0123456789")),
                ApiKey(tenant="beta", key=SecretStr("beta-key-0123456789")),
            ],
            "tenants": {"acme": TenantSettings(), "beta": TenantSettings()},
        }
    )
    settings = pipeline_settings(base, valkey.connection_url, allow_private_hosts=["localhost"])
    registry = RedisJobStore.from_url(valkey.connection_url, settings.queue)
    worker = WorkerProcess(settings, tmp / "worker.log").start()
    server = None
    try:
        worker.wait_ready(registry)
        api_settings = settings.model_copy(
            update={"audit": settings.audit.model_copy(update={"spool_dir": tmp / "api-spool"})}
        )
        server, url = start_api(api_settings)
        accounts = server.process.reviewers
        for name in ("alice", "bob", "carol"):
            accounts.create(
                ReviewerAccount(
                    username=name,
                    role=Role.REVIEWER,
                    password_hash=hash_password(PASSWORD),
                    disabled=False,
                    created_at=time.time(),
                    queues=("appeal",),  # a grant: reviewers work appeals only when granted
                )
            )
        with (
            ModerationClient(url, api_key="acme-key-0123456789") as acme,
            ModerationClient(url, api_key="beta-key-0123456789") as beta,
        ):
            yield Site(settings, api_settings, url, acme, beta, receiver, callback, server)
    finally:
        if server is not None:
            stop_api(server)
        worker.stop()
        http.shutdown()
        s3.stop()
        valkey.stop()


def _login(client: httpx.Client, username: str) -> dict[str, str]:
    form = client.get("/review/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf is not None
    signed_in = client.post(
        "/review/login", data={"username": username, "password": PASSWORD, "csrf": csrf[1]}
    )
    assert signed_in.status_code == 303, signed_in.text
    token = re.search(r'<meta name="csrf-token" content="([^"]+)"', client.get("/review/").text)
    assert token is not None
    return {"X-CSRF-Token": token[1]}


def _next(client: httpx.Client, headers: dict[str, str], queue: str) -> Any:
    answer = client.post("/review/api/next", headers=headers, json={"queues": [queue]})
    assert answer.status_code == 200, answer.text
    return answer.json()["item"]


def test_appeal_overturned_by_a_different_reviewer_end_to_end(site: Site, tmp_path: Path) -> None:
    image = png_bytes(testmodel.sample_images("review", 1, 31)[0][0])
    job_id = site.acme.submit(image, callback_url=site.callback)
    assert site.acme.wait(job_id, 60).verdict is not None
    alice, bob, carol = (httpx.Client(base_url=site.base, timeout=10) for _ in range(3))
    with alice, bob, carol:
        alice_h, bob_h, carol_h = _login(alice, "alice"), _login(bob, "bob"), _login(carol, "carol")
        item = _wait(lambda: _next(alice, alice_h, "review"), "no review item arrived")
        assert item["queue"] == "review" and item["appeal"] is None
        deciders = [_remove(alice, alice_h, item, "alice")]
        if item["severity"] == "critical":  # a critical removal needs a second reviewer
            second = _next(bob, bob_h, "review")
            assert second is not None and second["review_id"] == item["review_id"]
            deciders.append(_remove(bob, bob_h, second, "bob"))
        _wait(lambda: site.acme.get(job_id).human is not None, "the removal never reached the job")

        # The other tenant cannot appeal this job, nor see its appeals.
        with pytest.raises(JobNotFoundError):
            site.beta.appeal(job_id, "not mine")
        appeal = site.acme.appeal(job_id, "This is a news photo, not an endorsement.")
        assert appeal.job_id == job_id and appeal.status.value == "open"
        assert appeal.appealed_decision == "remove"
        with pytest.raises(JobNotFoundError):
            site.beta.get_appeal(appeal.appeal_id)
        with pytest.raises(JobRejected) as again:  # once per decision
            site.acme.appeal(job_id, "please")
        assert again.value.status == 409 and again.value.code == "appeal_limit_reached"
        assert site.acme.appeal(job_id, "This is a news photo, not an endorsement.") == appeal

        # Whoever decided it is never offered its appeal; carol is, with what she needs.
        assert _next(alice, alice_h, "appeal") is None
        if len(deciders) == 2:
            assert _next(bob, bob_h, "appeal") is None
        reviewer, headers = (carol, carol_h) if len(deciders) == 2 else (bob, bob_h)
        taken = _next(reviewer, headers, "appeal")
        assert taken is not None and taken["review_id"] == appeal.appeal_id
        assert taken["appeal"]["statement"] == "This is a news photo, not an endorsement."
        [earlier] = taken["appeal"]["earlier"]
        assert earlier["decision"] == "remove"
        assert earlier["reviewers"] == [_pseudonym(site, name) for name in deciders]
        assert taken["image_problem"] is None and taken["explanation"]
        shown = reviewer.get(f"/review/api/image/{appeal.appeal_id}")
        assert shown.status_code == 200 and shown.content[:8] == b"\x89PNG\r\n\x1a\n"
        _reveal(reviewer, headers, appeal.appeal_id)
        overturned = reviewer.post(
            "/review/api/decide",
            headers=headers,
            json={
                "review_id": appeal.appeal_id,
                "token": taken["token"],
                "decision": "overturn",
                "reason_code": "APPEAL_CONTEXT",
            },
        )
        assert overturned.status_code == 200, overturned.text

    result = site.acme.get(job_id)
    assert result.human is not None and result.human.decision is ReviewDecision.OVERTURN
    assert result.decision is not None and result.decision.value == "allow"
    decided = site.acme.get_appeal(appeal.appeal_id)
    assert decided.status.value == "overturned" and decided.reason_code == "APPEAL_CONTEXT"
    body, signed = site.receiver.event("job.appeal_decided", job_id)
    assert signed and body["appeal"]["status"] == "overturned"
    assert body["result"]["human"]["decision"] == "overturn"

    # An automated block, appealed: its scored bytes were kept for the appeal's reviewer.
    blocked_image = png_bytes(testmodel.sample_images("block", 1, 32)[0][0])
    blocked_id = site.acme.submit(blocked_image, callback_url=site.callback)
    blocked = site.acme.wait(blocked_id, 60)
    assert blocked.decision is not None and blocked.decision.value == "block"
    site.receiver.event("job.finished", blocked_id)  # its effects (the bytes kept) have run
    blocked_appeal = site.acme.appeal(blocked_id, "It is a toy.")
    assert blocked_appeal.appealed_kind == "automated"
    with httpx.Client(base_url=site.base, timeout=10) as alice:
        alice_h = _login(alice, "alice")
        taken = _next(alice, alice_h, "appeal")
        assert taken is not None and taken["review_id"] == blocked_appeal.appeal_id
        assert taken["image_problem"] is None
        _reveal(alice, alice_h, blocked_appeal.appeal_id)
        upheld = alice.post(
            "/review/api/decide",
            headers=alice_h,
            json={
                "review_id": blocked_appeal.appeal_id,
                "token": taken["token"],
                "decision": "uphold",
                "reason_code": "APPEAL_VIOLATION_CONFIRMED",
            },
        )
        assert upheld.status_code == 200, upheld.text
    assert site.acme.get(blocked_id).decision.value == "block"  # type: ignore[union-attr]
    body, signed = site.receiver.event("job.appeal_decided", blocked_id)
    assert signed and body["appeal"]["status"] == "upheld"

    # The API's audit records reach S3 once it flushes; the overturn links to the removal.
    assert site.server.process.audit.flush(timeout=30)
    env = site.api_settings.to_env(base={})
    shown = CliRunner().invoke(cli_app, ["audit", "show", f"acme/{job_id}", "--json"], env=env)
    assert shown.exit_code == 0, shown.output
    records = [json.loads(line) for line in shown.stdout.splitlines() if line.startswith("{")]
    by_decision = {r["decision"]: r for r in records}
    assert {"remove", "overturn"} <= set(by_decision)
    assert by_decision["overturn"]["details"]["appeal_of"] == by_decision["remove"]["record_id"]
    assert by_decision["overturn"]["actor"] != by_decision["remove"]["actor"]
    out = tmp_path / "sor.jsonl"

    def statements() -> list[dict[str, Any]]:
        # (the worker's records of the automated block reach S3 within segment_max_age_s)
        exported = CliRunner().invoke(
            cli_app, ["audit", "export", "--format", "dsa", "--out", str(out)], env=env
        )
        assert exported.exit_code == 0, exported.output
        found = [json.loads(line) for line in out.read_text().splitlines()]
        return found if any(s["puid"] == f"acme/{blocked_id}" for s in found) else []

    found = _wait(statements, "the block's statement of reasons never reached the audit log")
    mine = [s for s in found if s["puid"] == f"acme/{job_id}"]
    assert mine and all("overturned on appeal" in s["decision_facts"] for s in mine)
    theirs = [s for s in found if s["puid"] == f"acme/{blocked_id}"]
    assert theirs and all("upheld on appeal" in s["decision_facts"] for s in theirs)


def _reveal(client: httpx.Client, headers: dict[str, str], review_id: str) -> None:
    """Look at the item's image unblurred (a critical item needs it before a decision)."""
    looked = client.post("/review/api/reveal", headers=headers, json={"review_id": review_id})
    assert looked.status_code == 200, looked.text


def _pseudonym(site: Site, name: str) -> str:
    return pseudonym(site.settings.review.pseudonym_secret.get_secret_value(), name)


def _remove(client: httpx.Client, headers: dict[str, str], item: dict[str, Any], name: str) -> str:
    """Remove ``item`` (its first reason code), having looked at it; returns who did."""
    _reveal(client, headers, item["review_id"])
    removed = client.post(
        "/review/api/decide",
        headers=headers,
        json={
            "review_id": item["review_id"],
            "token": item["token"],
            "decision": "remove",
            "reason_code": item["reason_codes"][0],
        },
    )
    assert removed.status_code == 200, removed.text
    return name


def test_strikes_reach_suspension_and_an_overturn_lifts_it_end_to_end(site: Site) -> None:
    """An uploader's blocked images accrue strikes until it is suspended (warned first), each
    step a signed uploader.action callback; overturning the last block lifts the suspension."""
    actions: list[dict[str, Any]] = []

    def seen_actions() -> list[dict[str, Any]]:
        return [
            body
            for body, ok in list(site.receiver.got)
            if ok and body["event"] == "uploader.action" and body["uploader_id"] == "u-flow"
        ]

    blocked: list[str] = []
    for n, (image, _) in enumerate(testmodel.sample_images("block", 6, 41)):
        job_id = site.acme.submit(
            png_bytes(image), callback_url=site.callback, uploader_id="u-flow"
        )
        result = site.acme.wait(job_id, 60)
        assert result.decision is not None and result.decision.value == "block", n
        site.receiver.event("job.finished", job_id)  # its effects (the strike) have run
        blocked.append(job_id)
        actions = seen_actions()
        if actions and actions[-1]["action"] == "suspend":
            break
    assert actions and actions[0]["action"] == "warn"
    assert actions[-1]["action"] == "suspend" and not actions[-1]["lifted"]
    levels = ["none", "warn", "restrict", "suspend"]
    assert [levels.index(a["action"]) for a in actions] == sorted(
        levels.index(a["action"]) for a in actions
    )
    # Another tenant's uploader of the same id is someone else: no strikes shared.
    other = site.beta.submit(
        png_bytes(testmodel.sample_images("block", 1, 49)[0][0]),
        callback_url=site.callback,
        uploader_id="u-flow",
    )
    site.beta.wait(other, 60)
    site.receiver.event("job.finished", other)
    beta_actions = [a for a in seen_actions() if a["job_id"] == other]
    assert [a["action"] for a in beta_actions] in ([], ["warn"])

    appeal = site.acme.appeal(blocked[-1], "Not mine: my account was hijacked.")
    with httpx.Client(base_url=site.base, timeout=10) as bob:
        headers = _login(bob, "bob")
        taken = _wait(lambda: _next(bob, headers, "appeal"), "no appeal to take")
        assert taken["review_id"] == appeal.appeal_id
        assert taken["uploader"]["uploader_id"] == "u-flow"
        assert taken["uploader"]["action"] == "suspend"
        assert {p["job_id"] for p in taken["uploader"]["prior"]} == set(blocked[:-1])
        _reveal(bob, headers, appeal.appeal_id)
        decided = bob.post(
            "/review/api/decide",
            headers=headers,
            json={
                "review_id": appeal.appeal_id,
                "token": taken["token"],
                "decision": "overturn",
                "reason_code": "APPEAL_MODEL_ERROR",
            },
        )
        assert decided.status_code == 200, decided.text
    lifted = _wait(
        lambda: [a for a in seen_actions() if a["lifted"]], "the suspension was never lifted"
    )
    assert lifted[-1]["action"] in ("warn", "restrict") and lifted[-1]["job_id"] == blocked[-1]
