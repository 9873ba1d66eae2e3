"""Every metric the alerts and the dashboard name is one the code really exports: scraped from a
live API (``moderation api``) and a live worker (``moderation worker``), each in Prometheus
multiprocess mode as deployed (a metric then exists only once it has a sample), after traffic
that exercises what the rules watch: verdicts in every band, a shadow version, a corrupt image,
a retried fetch, an id conflict, callbacks, a human review decision, failed sign-ins and a
lockout."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from moderation import metrics as metrics_module
from moderation import testmodel
from moderation.adapters.redis_jobs import RedisJobStore
from moderation.client import ModerationClient
from moderation.exceptions import ModerationError
from moderation.settings import Settings
from tests.pipeline_support import ROOT, WorkerProcess, pipeline_settings, png_bytes
from tests.servers import free_port, wait_for_port

pytestmark = pytest.mark.slow
RULES = ROOT / "deploy" / "prometheus" / "alerts.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "moderation.json"
PASSWORD = "correct horse battery staple"


def named_metrics() -> set[str]:
    """``moderation_*`` metric names in the alerting rules and the dashboard's queries."""
    exprs = [r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    dashboard = json.loads(DASHBOARD.read_text())
    exprs += [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    return {name for expr in exprs for name in re.findall(r"\bmoderation_[a-z_]+", expr)}


def exported(text: str) -> dict[str, float]:
    """Sample name -> summed value, from Prometheus exposition text."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            name = series.split("{", 1)[0]
            out[name] = out.get(name, 0.0) + float(value)
    return out


class Origin:
    """Callbacks (204) and an image host that always answers 503 (a transient error)."""

    def __init__(self) -> None:
        self.callbacks: list[bytes] = []
        origin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self) -> None:
                origin.callbacks.append(self.rfile.read(int(self.headers["Content-Length"])))
                self.send_response(204)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://localhost:{self.server.server_address[1]}{path}"


@pytest.fixture
def origin() -> Iterator[Origin]:
    served = Origin()
    try:
        yield served
    finally:
        served.server.shutdown()


def _policies(tmp: Path) -> Path:
    """The test-world policy, live, and a shadow version of it (one more template)."""
    folder = tmp / "policies"
    folder.mkdir()
    live = testmodel.POLICY_PATH.read_text()
    (folder / "testworld.yaml").write_text(live)
    shadow = live.replace("version: 1\n", "version: 2\nmode: shadow\n", 1).replace(
        '"{}"]', '"{}", "a drawing of {}"]', 1
    )
    assert shadow != live and "mode: shadow" in shadow
    (folder / "testworld.v2.yaml").write_text(shadow)
    return folder


def _start_api(
    settings: Settings, metrics_dir: Path, log: Path
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = settings.to_env()
    env.update({"PYTHONPATH": str(ROOT), "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "moderation.cli",
                "api",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    wait_for_port(port, timeout=60)
    return proc, f"http://127.0.0.1:{port}"


def _login(client: httpx.Client, username: str, password: str) -> httpx.Response:
    form = client.get("/review/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf is not None
    return client.post(
        "/review/login", data={"username": username, "password": password, "csrf": csrf[1]}
    )


def _review_one(base: str) -> None:
    """A reviewer signs in, takes the next item and removes it (over HTTP, as the page does)."""
    with httpx.Client(base_url=base, timeout=10) as alice:
        assert _login(alice, "alice", PASSWORD).status_code == 303
        token = re.search(r'<meta name="csrf-token" content="([^"]+)"', alice.get("/review/").text)
        assert token is not None
        headers = {"X-CSRF-Token": token[1]}
        deadline = time.monotonic() + 30
        while (item := alice.post("/review/api/next", headers=headers).json()["item"]) is None:
            assert time.monotonic() < deadline, "no review item arrived"
            time.sleep(0.1)
        revealed = alice.post(  # a critical item: one look unblurred before a decision
            "/review/api/reveal", headers=headers, json={"review_id": item["review_id"]}
        )
        assert revealed.status_code == 200, revealed.text
        decided = alice.post(
            "/review/api/decide",
            headers=headers,
            json={
                "review_id": item["review_id"],
                "token": item["token"],
                "decision": "allow",
                "reason_code": None,
            },
        )
        assert decided.status_code == 200, decided.text


def test_every_metric_of_the_alerts_and_the_dashboard_is_exported_by_a_live_process(
    settings: Settings, redis_url: str, tmp_path: Path, origin: Origin
) -> None:
    from moderation.adapters.passwords import hash_password
    from moderation.compose.stores import open_reviewers
    from moderation.core.reviewers import ReviewerAccount, Role

    metrics_port, health_port = free_port(), free_port()
    s = pipeline_settings(
        settings,
        redis_url,
        worker_metrics_port=metrics_port,
        worker_health_port=health_port,
        allow_private_hosts=["localhost"],
        max_retries=1,
        callback_max_attempts=2,
    )
    s = s.model_copy(
        update={
            "policy_paths": [_policies(tmp_path)],
            "review": s.review.model_copy(
                update={"login_free_failures": 0, "login_delay_s": 0.0, "login_lockout_after": 2}
            ),
        }
    )
    reviewers = open_reviewers(s)
    reviewers.create(
        ReviewerAccount(
            username="alice",
            role=Role.REVIEWER,
            password_hash=hash_password(PASSWORD),
            disabled=False,
            created_at=time.time(),
        )
    )
    store = RedisJobStore.from_url(redis_url, s.queue)
    (tmp_path / "worker-metrics").mkdir()
    (tmp_path / "api-metrics").mkdir()
    api_settings = s.model_copy(
        update={"audit": s.audit.model_copy(update={"spool_dir": tmp_path / "api-spool"})}
    )
    worker = WorkerProcess(s, tmp_path / "worker.log", metrics_dir=tmp_path / "worker-metrics")
    worker.start()
    api: subprocess.Popen[bytes] | None = None
    try:
        worker.wait_ready(store)
        api, base = _start_api(api_settings, tmp_path / "api-metrics", tmp_path / "api.log")
        callback = origin.url("/callback")
        with ModerationClient(base) as client:
            ids = [
                client.submit(png_bytes(image), callback_url=callback)
                for band in ("block", "review", "allow")
                for image, _ in testmodel.sample_images(band, 2, 11)
            ]
            ids.append(client.submit(b"this is not an image" * 10))  # an error outcome
            ids.append(client.submit(origin.url("/image.png")))  # 503: retried, then an error
            client.submit(png_bytes(testmodel.sample_images("allow", 1, 12)[0][0]), id="dup")
            with pytest.raises(ModerationError):  # same id, other content: 409 id_conflict
                client.submit(png_bytes(testmodel.sample_images("block", 1, 12)[0][0]), id="dup")
            results = client.wait_many(ids, timeout=120)
        assert [r.error is not None for r in results] == [False] * 6 + [True, True]
        _review_one(base)
        with httpx.Client(base_url=base, timeout=10) as attacker:
            for attempt in range(3):  # two failures lock the account; the third is refused
                assert _login(attacker, "alice", f"wrong-{attempt}").status_code in (401, 429)
        deadline = time.monotonic() + 30
        while len(origin.callbacks) < 6:
            assert time.monotonic() < deadline, worker.log()
            time.sleep(0.1)
        api_text = httpx.get(f"{base}/metrics", timeout=10).text
        worker_text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    finally:
        if api is not None:
            api.terminate()
            api.wait(timeout=30)
        worker.stop()
    from_api, from_worker = exported(api_text), exported(worker_text)
    names = set(from_api) | set(from_worker)
    helped = set(re.findall(r"^# HELP (\S+)", api_text + worker_text, re.M))
    assert len(named_metrics()) >= 25
    # Per-bank series exist once the worker serves a bank (this one serves none): they are
    # declared in the code (exported at 0 from the first batch on; tests/test_bank_guard.py).
    per_bank = {"moderation_bank_entries_quarantined_total"}
    # The synced banks' health is rendered by an API with a database and banks.exchanges (this
    # one has neither; tests/test_exchange_sync.py reads them from a real sync loop).
    per_bank |= {
        "moderation_exchange_sync_failures",
        "moderation_exchange_sync_interval_seconds",
        "moderation_exchange_sync_last_success_age_seconds",
    }
    assert all(n in Path(metrics_module.__file__).read_text() for n in per_bank)
    missing = sorted(n for n in named_metrics() - per_bank if n not in names and n not in helped)
    assert missing == [], f"named in alerts or dashboard, exported by no live process: {missing}"
    # The gauges the API reads from Redis at scrape time, with real values.
    assert from_api["moderation_workers_alive"] == 1
    assert from_api["moderation_dead_letters"] == 0
    assert (
        from_api["moderation_queue_depth"] == 0
        and "moderation_queue_oldest_age_seconds" in from_api
    )
    assert "moderation_review_queue_depth" in from_api
    assert "moderation_review_oldest_age_seconds" in from_api
    assert from_api["moderation_review_decisions_total"] == 1
    assert from_api["moderation_login_failures_total"] >= 2
    assert from_api["moderation_login_lockouts_total"] >= 1
    assert from_api["moderation_jobs_rejected_total"] == 1  # the id conflict
    # What only the worker knows.
    assert from_worker["moderation_jobs_total"] >= 8
    assert from_worker["moderation_shadow_decisions_total"] >= 6
    assert from_worker["moderation_retries_total"] >= 1
    assert from_worker["moderation_callbacks_total"] >= 6
    assert from_worker["moderation_audit_spool_oldest_age_seconds"] >= 0
    assert "moderation_audit_spool_bytes" in from_worker
    assert "moderation_audit_spool_bytes" in from_api  # the API spools reviewers' decisions
