"""End to end: a borderline image goes through the real pipeline (API -> Redis -> Celery worker)
into the human-review queue; a reviewer signs in over HTTP, sees it, decides; the decision flows
back like an automated one: job result updated, signed callback fired, audit records written."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from moderation import testmodel
from moderation.adapters.passwords import hash_password
from moderation.adapters.redis_jobs import RedisJobStore
from moderation.client import ModerationClient
from moderation.compose.stores import open_reviewers, open_segment_store
from moderation.core.callbacks import verify
from moderation.core.decision import Decision
from moderation.core.reviewers import ReviewerAccount, Role
from moderation.pipeline.audit import iter_records, verify_store
from moderation.settings import Settings
from tests.pipeline_support import WorkerProcess, pipeline_settings, png_bytes, start_api, stop_api
from tests.servers import free_port

SECRET = b"test-secret"
PASSWORD = "review-pass-123"


class Receiver:
    """A callback receiver on localhost."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.calls.append((dict(self.headers), body))
                self.send_response(204)
                self.end_headers()

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self, job_id: str) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for headers, body in self.calls:
            if headers.get("X-Moderation-Job-Id") == job_id:
                assert verify(SECRET, body, headers["X-Moderation-Signature"])
                out.append((headers["X-Moderation-Event"], json.loads(body)))
        return out


@pytest.fixture
def flow(settings: Settings, redis_url: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    base = settings.model_copy(
        update={
            "audit": settings.audit.model_copy(update={"segment_max_age_s": 0.3}),
        }
    )
    cfg = pipeline_settings(base, redis_url, allow_private_hosts=["localhost"])
    users = open_reviewers(cfg)
    users.create(
        ReviewerAccount(
            username="alice",
            role=Role.REVIEWER,
            password_hash=hash_password(PASSWORD),
            disabled=False,
            created_at=time.time(),
        )
    )
    receiver = Receiver()
    store = RedisJobStore.from_url(redis_url, cfg.queue)
    worker = WorkerProcess(cfg, tmp_path / "worker.log").start()
    server = None
    try:
        worker.wait_ready(store)
        server, url = start_api(cfg)
        yield {"settings": cfg, "url": url, "receiver": receiver, "worker": worker}
    finally:
        if server is not None:
            stop_api(server)
        worker.stop()
        receiver.server.shutdown()


def _sign_in(url: str) -> tuple[httpx.Client, str]:
    client = httpx.Client(base_url=url, timeout=20)
    form = client.get("/review/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
    assert (
        client.post(
            "/review/login", data={"username": "alice", "password": PASSWORD, "csrf": csrf}
        ).status_code
        == 303
    )
    token = re.search(r'<meta name="csrf-token" content="([^"]+)"', client.get("/review/").text)
    assert token is not None
    return client, token.group(1)


def test_borderline_image_is_reviewed_and_the_decision_flows_back(flow: dict[str, Any]) -> None:
    settings: Settings = flow["settings"]
    receiver: Receiver = flow["receiver"]
    image, label = testmodel.sample_images("review", 1, seed=31)[0]
    callback = f"http://localhost:{receiver.port}/hook"
    with ModerationClient(flow["url"]) as api:
        job_id = api.submit(png_bytes(image), id="borderline-1", callback_url=callback)
        result = api.wait(job_id, timeout=90)
        assert result.verdict is not None, result
        assert result.verdict.decision is Decision.REVIEW, (label, result.verdict.explain())

        reviewer, csrf = _sign_in(flow["url"])
        item = None
        deadline = time.monotonic() + 30
        while item is None and time.monotonic() < deadline:  # review submission is a side effect
            item = reviewer.post("/review/api/next", headers={"X-CSRF-Token": csrf}).json()["item"]
            if item is None:
                time.sleep(0.2)
        assert item is not None and item["job_id"] == job_id
        picture = reviewer.get(item["image_url"])  # inline bytes, served only to the holder
        assert picture.status_code == 200 and picture.headers["content-type"] == "image/png"
        revealed = reviewer.post(  # a critical item: one look unblurred before a decision
            "/review/api/reveal",
            headers={"X-CSRF-Token": csrf},
            json={"review_id": item["review_id"]},
        )
        assert revealed.status_code == 200, revealed.text
        answer = reviewer.post(
            "/review/api/decide",
            headers={"X-CSRF-Token": csrf},
            json={"review_id": item["review_id"], "token": item["token"], "decision": "allow"},
        )
        assert answer.status_code == 200 and answer.json()["status"] == "final", answer.text
        assert answer.json()["delivered"] is True

        updated = api.get(job_id)
        assert updated.human is not None and updated.human.decision.value == "allow"
        assert updated.human.reviewers[0].startswith("rv_")
        assert "alice" not in str(updated.human.reviewers)
        assert (updated.human.policy_id, updated.human.category_id) == (
            result.verdict.policy_id,
            result.verdict.category_id,
        )

    deadline = time.monotonic() + 30
    while len(receiver.events(job_id)) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    events = receiver.events(job_id)
    assert [e for e, _ in events] == ["job.finished", "job.human_decision"]
    assert events[1][1]["result"]["human"]["decision"] == "allow"

    store = open_segment_store(settings)
    since = datetime.now(UTC) - timedelta(hours=1)
    deadline = time.monotonic() + 30
    kinds: list[str] = []
    while time.monotonic() < deadline:
        records = [r for _, r in iter_records(store, since) if r.job_id == job_id]
        kinds = sorted(r.kind for r in records)
        if kinds == ["automated", "human"]:
            break
        time.sleep(0.3)
    assert kinds == ["automated", "human"]
    human = next(r for r in records if r.kind == "human")
    assert human.decision == "allow" and human.actor.startswith("rv_")
    automated = next(r for r in records if r.kind == "automated")
    assert automated.decision == "review" and automated.content_sha256
    assert automated.content_sha256 == human.content_sha256
    report = verify_store(store)
    assert report.ok, report
