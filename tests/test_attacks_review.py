"""Issue 17, attack 3: reviewer bait-and-switch. The reviewer must see exactly the bytes that
were scored, whatever the image's host serves later.

Against a production-like start: ``moderation api`` and ``moderation worker`` as their own
processes in production mode, a real valkey server, the object store on a moto S3 server over
HTTP, and a hostile image host served in-process on a free port. The host serves image A (a
borderline image: the verdict is ``review``) to the worker, then switches to image B. Before,
the review page fetched the URL again and showed B; the reviewer's "allow" was recorded as the
human decision on A. Now:

- the worker keeps A's exact bytes in the object store (tenant-namespaced key ending in their
  SHA-256) before the item is queued; the page shows those bytes, verified, and never asks the
  host again; the human decision's audit record carries the hash of what the reviewer saw;
- an item whose kept bytes are gone, or were altered in the store, shows no image (410 with a
  clear problem, and the page says why) and cannot be allowed: only removed or escalated.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from moderation import testmodel
from moderation.adapters.images import safe_png
from moderation.compose.stores import open_blob_store, open_segment_store
from moderation.pipeline.audit import iter_records
from moderation.pipeline.review_evidence import ReviewEvidence
from moderation.settings import Settings
from tests.attack_support import KEY_A, PASSWORD, Site, started_site
from tests.pipeline_support import WorkerProcess, png_bytes
from tests.servers import MotoServer, valkey_url

pytestmark = pytest.mark.xdist_group("attacks_review")

BUCKET = "moderation-blobs"


@dataclass
class SwitchingHost:
    """An image host that serves ``first`` until :meth:`switch`, then ``then``."""

    first: bytes
    then: bytes
    switched: bool = False
    hits: list[str] = field(default_factory=list)

    def start(self) -> SwitchingHost:
        host = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                host.hits.append(self.path)
                body = host.then if host.switched else host.first
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{name}"

    def stop(self) -> None:
        self.server.shutdown()


@dataclass
class Running:
    site: Site
    worker: WorkerProcess
    s3: Any


def _review_images(n: int) -> list[bytes]:
    return [png_bytes(image) for image, _ in testmodel.sample_images("review", n, seed=31)]


@pytest.fixture(scope="module")
def running(
    test_model_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    root = tmp_path_factory.mktemp("attacks_review")
    moto = MotoServer()
    moto.start()
    s3 = moto.client()
    s3.create_bucket(Bucket=BUCKET)
    settings = test_model_settings.model_copy(
        update={
            "s3": test_model_settings.s3.model_copy(
                update={
                    "endpoint_url": moto.url,
                    "access_key_id": SecretStr("testing"),
                    "secret_access_key": SecretStr("testing"),
                    "max_attempts": 1,
                }
            ),
            "blobs": test_model_settings.blobs.model_copy(update={"bucket": BUCKET}),
            "audit": test_model_settings.audit.model_copy(update={"segment_max_age_s": 0.3}),
            "queue": test_model_settings.queue.model_copy(
                update={"allow_private_hosts": ["127.0.0.1/32"]}
            ),
        }
    )
    try:
        with valkey_url() as url, started_site(settings, url, root) as site:
            worker = WorkerProcess(site.settings, root / "worker.log").start()
            try:
                worker.wait_ready(site.store)
                yield Running(site, worker, s3)
            finally:
                worker.stop()
    finally:
        moto.stop()


def _sign_in(site: Site) -> tuple[httpx.Client, str]:
    client = site.browser()  # production cookies are Secure: a browser sends them to 127.0.0.1
    form = client.get("/review/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf is not None, form.text
    signed = client.post(
        "/review/login", data={"username": "alice", "password": PASSWORD, "csrf": csrf.group(1)}
    )
    assert signed.status_code == 303, signed.text
    token = re.search(r'<meta name="csrf-token" content="([^"]+)"', client.get("/review/").text)
    assert token is not None
    return client, token.group(1)


def _submit_for_review(site: Site, urls: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Submit ``id -> image URL`` as acme; wait until each has a REVIEW verdict."""
    with site.client(KEY_A) as acme:
        for job_id, url in urls.items():
            answer = acme.post("/v1/jobs", json={"image_url": url, "id": job_id})
            assert answer.status_code == 202, answer.text
        results: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + 120
        while len(results) < len(urls) and time.monotonic() < deadline:
            for job_id in urls:
                body = acme.get(f"/v1/jobs/{job_id}").json()
                if body["status"] in {"done", "error"}:
                    results[job_id] = body
            time.sleep(0.1)
    assert len(results) == len(urls), results
    for job_id, body in results.items():
        assert body["status"] == "done", body
        assert body["verdict"]["decision"] == "review", (job_id, body["verdict"])
    return results


def _claim(reviewer: httpx.Client, csrf: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the review item is a side effect of the job's end
        item = reviewer.post("/review/api/next", headers={"X-CSRF-Token": csrf}).json()["item"]
        if item is not None:
            return dict(item)
        time.sleep(0.1)
    raise AssertionError("no review item came")


def _decide(reviewer: httpx.Client, csrf: str, item: dict[str, Any], decision: str) -> Any:
    if decision != "escalate" and not item.get("image_problem"):
        # The reviewer looks first (a critical item needs it); a refused look changes nothing.
        reviewer.post(
            "/review/api/reveal",
            headers={"X-CSRF-Token": csrf},
            json={"review_id": item["review_id"]},
        )
    return reviewer.post(
        "/review/api/decide",
        headers={"X-CSRF-Token": csrf},
        json={"review_id": item["review_id"], "token": item["token"], "decision": decision},
    )


def _evidence_keys(s3: Any) -> list[str]:
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix="blobs/review-evidence/")
    return [o["Key"] for o in listed.get("Contents", [])]


def test_the_reviewer_sees_the_scored_bytes_not_what_the_host_serves_now(
    running: Running,
) -> None:
    site = running.site
    scored, switched = _review_images(1)[0], png_bytes(testmodel.sample_images("allow", 1, 5)[0][0])
    host = SwitchingHost(first=scored, then=switched).start()
    try:
        results = _submit_for_review(site, {"bait-1": host.url("a.png")})
        digest = hashlib.sha256(scored).hexdigest()
        assert results["bait-1"]["content_sha256"] == digest
        host.switched = True  # the uploader swaps the image behind the URL

        reviewer, csrf = _sign_in(site)
        item = _claim(reviewer, csrf)
        picture = reviewer.get(item["image_url"])
        assert picture.status_code == 200, picture.text
        limits = site.settings.images
        assert picture.content == safe_png(scored, limits)
        assert picture.content != safe_png(switched, limits)
        assert host.hits == ["/a.png"]  # fetched once, by the worker; never again
        assert item.get("image_problem", "?") is None

        # Kept in the object store under the tenant's namespace, ending in the hash.
        (key,) = _evidence_keys(running.s3)
        assert key.startswith("blobs/review-evidence/acme/rev_") and key.endswith("/" + digest)
        assert running.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == scored

        answer = _decide(reviewer, csrf, item, "allow")
        assert answer.status_code == 200 and answer.json()["status"] == "final", answer.text
    finally:
        host.stop()

    # Decided: the bytes are kept for the retention (a marker by day), then swept.
    listed = running.s3.list_objects_v2(Bucket=BUCKET, Prefix="blobs/review-evidence-retired/")
    assert len(listed.get("Contents", [])) == 1
    evidence = ReviewEvidence(
        open_blob_store(site.settings), retention_s=site.settings.review.evidence_retention_s
    )
    assert evidence.sweep(datetime.now(UTC)) == 0
    assert _evidence_keys(running.s3) == [key]
    later = datetime.now(UTC) + timedelta(seconds=site.settings.review.evidence_retention_s + 86400)
    assert evidence.sweep(later) == 1
    assert _evidence_keys(running.s3) == [] and evidence.retired_waiting() == 0

    # The human decision's audit record names the bytes the reviewer saw.
    store = open_segment_store(site.settings)
    since = datetime.now(UTC) - timedelta(hours=1)
    human = None
    deadline = time.monotonic() + 30
    while human is None and time.monotonic() < deadline:
        human = next(
            (r for _, r in iter_records(store, since) if r.kind == "human"),
            None,
        )
        time.sleep(0.2)
    assert human is not None and human.decision == "allow"
    assert human.details["seen_sha256"] == digest == human.content_sha256


@pytest.mark.parametrize("damage", ["gone", "altered"])
def test_bytes_gone_or_altered_are_never_shown_and_cannot_be_allowed(
    running: Running, damage: str
) -> None:
    site = running.site
    images = _review_images(2)
    host = SwitchingHost(first=images[0], then=images[0]).start()
    try:
        before = set(_evidence_keys(running.s3))
        _submit_for_review(site, {f"{damage}-1": host.url(f"{damage}.png")})
        reviewer, csrf = _sign_in(site)
        deadline = time.monotonic() + 30
        new: set[str] = set()
        while not new and time.monotonic() < deadline:
            new = set(_evidence_keys(running.s3)) - before
            time.sleep(0.1)
        (key,) = new
        if damage == "gone":
            running.s3.delete_object(Bucket=BUCKET, Key=key)
        else:  # someone with access to the store replaced them
            running.s3.put_object(Bucket=BUCKET, Key=key, Body=images[1])

        item = _claim(reviewer, csrf)
        picture = reviewer.get(item["image_url"])
        assert picture.status_code == 410, picture.text
        assert picture.json()["code"] == "review_evidence_unavailable"
        assert item.get("image_problem"), item  # the page says why there is no image
        refused = _decide(reviewer, csrf, item, "allow")
        assert refused.status_code == 400, refused.text
        assert refused.json()["code"] == "review_evidence_unavailable"
        escalated = _decide(reviewer, csrf, item, "escalate")
        assert escalated.status_code == 200 and escalated.json()["status"] == "escalated"
        assert len(host.hits) == 1  # the page never went back to the host
    finally:
        host.stop()
