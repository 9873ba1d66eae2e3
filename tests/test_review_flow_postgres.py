"""Reviewing end to end with a database: a real ``moderation worker`` process and the API on a
real PostgreSQL and valkey. The account made with ``moderation review user add`` signs in to
the API; the worker's review item is a PostgreSQL row; the reviewer's decision reaches the job's
result; Redis holds no review item; and a decision left in the outbox (its API died before
marking it handed on) is handed on again by the worker, on its own."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import psycopg
import pytest
import redis
from pydantic import SecretStr
from typer.testing import CliRunner

from moderation import testmodel
from moderation.adapters.redis_jobs import RedisJobStore
from moderation.cli import app as cli_app
from moderation.client import ModerationClient
from moderation.core.review import ReviewDecision
from moderation.settings import Settings
from tests.pipeline_support import WorkerProcess, pipeline_settings, png_bytes, start_api, stop_api
from tests.servers import start_valkey

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("postgres")]

PASSWORD = "a long enough password"


@dataclass
class Site:
    settings: Settings
    redis: redis.Redis
    client: ModerationClient
    base: str
    pg_url: str


@pytest.fixture(scope="module")
def site(
    test_model_settings: Settings, tmp_path_factory: pytest.TempPathFactory, pg_url: str
) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("review-flow")
    valkey = start_valkey()
    base = test_model_settings.model_copy(
        update={
            "cache_dir": tmp / "cache",
            "database": test_model_settings.database.model_copy(
                update={"url": SecretStr(pg_url), "pool_max_size": 4}
            ),
            "blobs": test_model_settings.blobs.model_copy(update={"local_dir": tmp / "blobs"}),
            "audit": test_model_settings.audit.model_copy(
                update={"local_dir": tmp / "audit", "spool_dir": tmp / "spool"}
            ),
            # The workers look for due outbox entries every half second.
            "review": test_model_settings.review.model_copy(update={"outbox_retry_s": 0.5}),
        }
    )
    settings = pipeline_settings(base, valkey.connection_url)
    registry = RedisJobStore.from_url(valkey.connection_url, settings.queue)
    worker = WorkerProcess(settings, tmp / "worker.log").start()
    server = None
    try:
        worker.wait_ready(registry)
        api_settings = settings.model_copy(
            update={"audit": settings.audit.model_copy(update={"spool_dir": tmp / "api-spool"})}
        )
        server, url = start_api(api_settings)
        with ModerationClient(url) as client:
            yield Site(settings, redis.Redis.from_url(valkey.connection_url), client, url, pg_url)
    finally:
        if server is not None:
            stop_api(server)
        worker.stop()
        valkey.stop()


def _login(client: httpx.Client) -> dict[str, str]:
    form = client.get("/review/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf is not None
    signed_in = client.post(
        "/review/login", data={"username": "alice", "password": PASSWORD, "csrf": csrf[1]}
    )
    assert signed_in.status_code == 303, signed_in.text
    token = re.search(r'<meta name="csrf-token" content="([^"]+)"', client.get("/review/").text)
    assert token is not None
    return {"X-CSRF-Token": token[1]}


def _outbox(pg_url: str) -> list[str]:
    with psycopg.connect(pg_url) as conn:
        return [r[0] for r in conn.execute("SELECT review_id FROM review_outbox").fetchall()]


def test_a_review_in_postgres_from_the_worker_to_the_result(site: Site) -> None:
    added = CliRunner().invoke(
        cli_app,
        ["review", "user", "add", "alice", "--password-stdin"],
        input=PASSWORD + "\n",
        env=site.settings.to_env(base={}),
    )
    assert added.exit_code == 0, added.output
    image = png_bytes(testmodel.sample_images("review", 1, 23)[0][0])
    job_id = site.client.submit(image)
    result = site.client.wait(job_id, 60)
    assert result.verdict is not None and result.verdict.decision.value == "review"
    # The result is written first; the job's effects (the review item among them) follow it.
    deadline = time.monotonic() + 30
    rows: list[tuple[str, str]] = []
    while not rows and time.monotonic() < deadline:
        with psycopg.connect(site.pg_url) as conn:
            rows = conn.execute("SELECT review_id, state FROM review_items").fetchall()
        if not rows:
            time.sleep(0.1)
    assert [state for _, state in rows] == ["queued"]
    review_id = rows[0][0]
    assert not list(site.redis.scan_iter(f"{site.settings.review.key_prefix}item:*"))

    with httpx.Client(base_url=site.base, timeout=10) as alice:
        headers = _login(alice)
        item = alice.post("/review/api/next", headers=headers).json()["item"]
        assert item is not None and item["review_id"] == review_id
        revealed = alice.post(  # a critical item: one look unblurred before a decision
            "/review/api/reveal", headers=headers, json={"review_id": review_id}
        )
        assert revealed.status_code == 200, revealed.text
        decided = alice.post(
            "/review/api/decide",
            headers=headers,
            json={
                "review_id": review_id,
                "token": item["token"],
                "decision": "allow",
                "reason_code": None,
            },
        )
        assert decided.status_code == 200, decided.text
        kept = alice.put(  # wellbeing settings: a PostgreSQL row when there is a database
            "/review/api/wellbeing/settings", headers=headers, json={"blur_px": 20}
        )
        assert kept.status_code == 200 and kept.json()["settings"]["blur_px"] == 20, kept.text
    human = site.client.get(job_id).human
    assert human is not None and human.decision is ReviewDecision.ALLOW
    assert human.reviewers[0].startswith("rv_")
    with psycopg.connect(site.pg_url) as conn:
        [(state,)] = conn.execute("SELECT state FROM review_items").fetchall()
        decisions = conn.execute("SELECT reviewer, decision FROM review_decisions").fetchall()
    assert state == "final" and decisions == [(human.reviewers[0], "allow")]
    with psycopg.connect(site.pg_url) as conn:
        exposure = conn.execute(
            "SELECT reviewer, review_id, critical, revealed FROM reviewer_exposure"
        ).fetchall()
        [(blur,)] = conn.execute("SELECT settings->>'blur_px' FROM reviewer_wellbeing").fetchall()
    # the desk recorded what it showed (a critical item) and the reveal, in the database
    assert exposure == [(human.reviewers[0], review_id, True, True)] and blur == "20"
    assert _outbox(site.pg_url) == []

    # The API "died" after on_final but before marking the decision handed on: the row is back
    # in the outbox. The worker's maintenance hands it on again, with no one clicking.
    with psycopg.connect(site.pg_url) as conn:
        conn.execute(
            "INSERT INTO review_outbox (review_id, decided_at, due_at)"
            " SELECT review_id, decided_at, 0 FROM review_items WHERE review_id = %s",
            (review_id,),
        )
    deadline = time.monotonic() + 30
    while _outbox(site.pg_url):
        assert time.monotonic() < deadline, "the worker did not hand the decision on"
        time.sleep(0.1)
    again = site.client.get(job_id).human
    assert again == human  # handing on is idempotent: the result is unchanged
