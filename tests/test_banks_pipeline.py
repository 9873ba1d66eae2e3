"""Hash banks through the whole pipeline, with real components: valkey, two `moderation worker`
processes (Celery, the test model), the API on uvicorn, the `moderation bank` CLI, the reviewer
web API and the local audit log.

* A bank-backed category blocks a JPEG re-encoded copy of a banked image: API -> worker ->
  verdict (bank, entry, distance, quality) -> job result (PDQ + SHA-256) -> audit record.
* Changes reach every worker without a restart: an added entry, then a removed one (timed).
* "Remove and add to bank" from the review page, through the second-reviewer rule: the
  reviewer's removal is banked, audited, and the next copy is blocked by the bank.
"""

from __future__ import annotations

import io
import re
import shutil
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from typer.testing import CliRunner

from moderation import testmodel
from moderation.adapters.images import SafeDecoder
from moderation.adapters.passwords import hash_password
from moderation.adapters.redis_jobs import RedisJobStore
from moderation.cli import app as cli_app
from moderation.client import ModerationClient
from moderation.compose.banks import build_banks
from moderation.compose.stores import open_reviewers, open_segment_store
from moderation.core.audit import AuditRecord
from moderation.core.decision import Decision
from moderation.core.jobs import JobResult
from moderation.core.reviewers import ReviewerAccount, Role
from moderation.pipeline.audit import iter_records
from moderation.pipeline.banks import image_feature
from moderation.settings import ImageLimits, Settings
from tests.pipeline_support import (
    WorkerProcess,
    live_workers,
    pipeline_settings,
    png_bytes,
    start_api,
    stop_api,
)
from tests.servers import start_valkey

pytestmark = pytest.mark.slow
PASSWORD = "review-pass-123"

KNOWN_POLICY = textwrap.dedent(
    """\
    id: known
    version: 1
    description: Known-bad images, by PDQ hash.
    categories:
      - id: banked
        description: Images in the known-bad bank (hash-sharing programme).
        severity: critical
        signal: hash_bank
        bank: {name: known-bad, max_distance: 31}
        thresholds: {review: 0.5, block: 0.85}
        actions:
          review: {action: human_review, reason_code: KNOWN_BAD_SUSPECTED}
          block: {action: remove, reason_code: KNOWN_BAD}
      - id: reviewed
        description: Images our reviewers removed before.
        severity: high
        signal: hash_bank
        bank: {name: reviewer-removals}
        thresholds: {review: 0.5, block: 0.85}
        actions:
          block: {action: remove, reason_code: REMOVED_BEFORE}
    """
)


@dataclass
class Banked:
    settings: Settings
    store: RedisJobStore
    client: ModerationClient
    url: str
    workers: list[WorkerProcess]
    tmp: Path

    def cli(self, *args: str) -> Any:
        return CliRunner().invoke(cli_app, ["bank", *args], env=self.settings.to_env(base={}))

    def run(self, data: bytes, job_id: str) -> JobResult:
        return self.client.wait(self.client.submit(data, id=job_id), timeout=90)

    def wait_workers(self, check: Callable[[dict[str, Any]], bool], timeout: float = 30) -> float:
        """Seconds until every worker's heartbeat satisfies ``check``."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            live = live_workers(self.store)
            if len(live) == len(self.workers) and all(check(w) for w in live):
                return time.monotonic() - started
            time.sleep(0.05)
        raise AssertionError(f"workers not there after {timeout}s: {live_workers(self.store)}")


def bank_version(worker: dict[str, Any], bank: str) -> int:
    return int(worker.get("banks", {}).get(bank, {}).get("version", -1))


@pytest.fixture(scope="module")
def banked(
    test_model_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Banked]:
    tmp = tmp_path_factory.mktemp("banks")
    policies = tmp / "policies"
    policies.mkdir()
    shutil.copy(testmodel.POLICY_PATH, policies / "testworld.yaml")
    (policies / "known.yaml").write_text(KNOWN_POLICY)
    redis = start_valkey()
    base = test_model_settings.model_copy(
        update={
            "policy_paths": [policies],
            "cache_dir": tmp / "cache",
            "audit": test_model_settings.audit.model_copy(
                update={
                    "local_dir": tmp / "audit",
                    "spool_dir": tmp / "spool",
                    "segment_max_age_s": 0.3,
                }
            ),
        }
    )
    settings = pipeline_settings(base, redis.connection_url)
    build_banks(settings).create("known-bad", description="hash-sharing programme")
    users = open_reviewers(settings)
    for name in ("alice", "bob"):
        users.create(
            ReviewerAccount(
                username=name,
                role=Role.REVIEWER,
                password_hash=hash_password(PASSWORD),
                disabled=False,
                created_at=time.time(),
            )
        )
    store = RedisJobStore.from_url(redis.connection_url, settings.queue)
    workers = [WorkerProcess(settings, tmp / f"worker{i}.log").start() for i in range(2)]
    server = None
    try:
        for worker in workers:
            worker.wait_ready(store)
        server, url = start_api(settings)
        with ModerationClient(url) as client:
            yield Banked(settings, store, client, url, workers, tmp)
    finally:
        if server is not None:
            stop_api(server)
        for worker in workers:
            worker.stop()
        redis.stop()


def _jpeg(image: Image.Image, quality: int = 50) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _allowed_image(scoring: Any) -> Image.Image:
    """A test-world image the prompts allow, with a PDQ hash of usable quality."""
    decoder = SafeDecoder(ImageLimits())
    for seed in range(100):
        image = testmodel.render("green", "square", seed=seed).resize((400, 400))
        data = png_bytes(image)
        if image_feature(decoder, data).quality < 60:
            continue
        verdict = scoring.moderator.moderate([scoring.moderator.prepare(data)])[0]
        if verdict.decision is Decision.ALLOW:
            return image
    raise AssertionError("no allowed image with a usable hash")


def _automated_record(settings: Settings, job_id: str) -> AuditRecord:
    segments = open_segment_store(settings)
    since = datetime.now(UTC) - timedelta(hours=1)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for _, record in iter_records(segments, since):
            if record.job_id == job_id and record.kind == "automated":
                return record
        time.sleep(0.2)
    raise AssertionError(f"no audit record for {job_id}")


def test_a_banked_image_is_blocked_end_to_end_and_removal_reaches_every_worker(
    banked: Banked, scoring: Any
) -> None:
    image = _allowed_image(scoring)
    original = banked.tmp / "original.png"
    original.write_bytes(png_bytes(image))

    before = banked.run(_jpeg(image), "bank-e2e-before")
    assert before.verdict is not None and before.verdict.decision is Decision.ALLOW
    assert before.verdict.scores["known/banked"] == 0.0
    assert before.content_sha256 and before.content_pdq and before.content_pdq_quality

    added = banked.cli(
        "add",
        "known-bad",
        str(original),
        "--label",
        "known bad meme",
        "--source",
        "hash-sharing programme",
        "--reference-id",
        "TE-42",
    )
    assert added.exit_code == 0, added.output
    entry_id = int(re.search(r"known-bad #(\d+):", added.output).group(1))  # type: ignore[union-attr]
    version = banked.cli("list").output
    assert "known-bad" in version
    target = build_banks(banked.settings).info("known-bad").version
    banked.wait_workers(lambda w: bank_version(w, "known-bad") >= target)
    ready = httpx.get(banked.url + "/readyz").json()
    assert [w["banks"]["known-bad"]["entries"] for w in ready["workers"]] == [1, 1]

    # A JPEG (quality 50) re-encoding of the banked image, through the API and a worker.
    result = banked.run(_jpeg(image), "bank-e2e-copy")
    verdict = result.verdict
    assert verdict is not None and verdict.decision is Decision.BLOCK, verdict
    assert (verdict.policy_id, verdict.category_id, verdict.reason_code) == (
        "known",
        "banked",
        "KNOWN_BAD",
    )
    top = verdict.deciding
    assert top is not None and top.signal == "hash_bank"
    match = top.evidence[0].details
    assert (match["bank"], match["entry_id"], match["label"], match["reference_id"]) == (
        "known-bad",
        entry_id,
        "known bad meme",
        "TE-42",
    )
    assert match["source"] == "hash-sharing programme"
    assert 0 <= match["distance"] <= 31 and match["quality"] >= 50
    assert result.content_pdq == match["pdq"] and result.content_sha256
    record = _automated_record(banked.settings, "bank-e2e-copy")
    assert (record.decision, record.category_id, record.reason_code) == (
        "block",
        "banked",
        "KNOWN_BAD",
    )
    assert record.details["signal"] == "hash_bank"
    assert record.details["evidence"][0]["details"]["entry_id"] == entry_id
    assert record.details["evidence"][0]["details"]["distance"] == match["distance"]
    assert record.details["content_pdq"] == result.content_pdq
    assert record.details["content_pdq_quality"] == result.content_pdq_quality
    assert record.content_sha256 == result.content_sha256

    matched = banked.cli("match", str(original), "--bank", "known-bad")
    assert matched.exit_code == 0 and f"known-bad #{entry_id} distance 0" in matched.output

    # Removal: every worker stops matching within seconds.
    removed = banked.cli("remove", "known-bad", str(entry_id))
    assert removed.exit_code == 0 and "1 entries removed" in removed.output
    target = build_banks(banked.settings).info("known-bad").version
    seconds = banked.wait_workers(lambda w: bank_version(w, "known-bad") >= target)
    print(f"removal reached both workers in {seconds:.2f} s")
    ids = banked.client.submit_many([_jpeg(image, q) for q in (50, 60, 70, 80, 90, 95)])
    for after in banked.client.wait_many(ids, timeout=90):
        assert after.verdict is not None and after.verdict.decision is Decision.ALLOW
        assert after.verdict.scores["known/banked"] == 0.0


def _sign_in(url: str, user: str) -> tuple[httpx.Client, str]:
    client = httpx.Client(base_url=url, timeout=20)
    form = client.get("/review/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
    answer = client.post(
        "/review/login", data={"username": user, "password": PASSWORD, "csrf": csrf}
    )
    assert answer.status_code == 303
    token = re.search(r'<meta name="csrf-token" content="([^"]+)"', client.get("/review/").text)
    assert token is not None
    return client, token.group(1)


def _claim(client: httpx.Client, csrf: str, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        item = client.post("/review/api/next", headers={"X-CSRF-Token": csrf}).json()["item"]
        if item is not None and item["job_id"] == job_id:
            return dict(item)
        if item is not None:
            client.post(
                "/review/api/skip",
                headers={"X-CSRF-Token": csrf},
                json={"review_id": item["review_id"]},
            )
        time.sleep(0.2)
    raise AssertionError(f"{job_id} never reached the review queue")


def test_remove_and_add_to_bank_from_the_review_page(banked: Banked) -> None:
    image, label = testmodel.sample_images("review", 3, seed=1)[2]  # a crimson-magenta star
    data = png_bytes(image)
    result = banked.run(data, "bank-review-1")
    assert result.verdict is not None and result.verdict.decision is Decision.REVIEW, label
    assert result.verdict.category_id == "contraband_symbol"  # critical: two reviewers
    assert (result.content_pdq_quality or 0) >= 50

    alice, alice_csrf = _sign_in(banked.url, "alice")
    item = _claim(alice, alice_csrf, "bank-review-1")
    assert item["bank_targets"] == ["reviewer-removals"]
    assert item["content_pdq"] == result.content_pdq
    refused = alice.post(
        "/review/api/decide",
        headers={"X-CSRF-Token": alice_csrf},
        json={
            "review_id": item["review_id"],
            "token": item["token"],
            "decision": "allow",
            "add_to_bank": "reviewer-removals",
        },
    )
    assert refused.status_code == 400 and "only a removal" in refused.json()["detail"]
    alice.post(  # a critical item: it needs one look before a removal
        "/review/api/reveal",
        headers={"X-CSRF-Token": alice_csrf},
        json={"review_id": item["review_id"]},
    )
    first = alice.post(
        "/review/api/decide",
        headers={"X-CSRF-Token": alice_csrf},
        json={
            "review_id": item["review_id"],
            "token": item["token"],
            "decision": "remove",
            "reason_code": "TW_CONTRABAND",
            "add_to_bank": "reviewer-removals",
        },
    )
    assert first.status_code == 200 and first.json()["status"] == "pending_second_review"
    banks = build_banks(banked.settings)
    assert banks.info("reviewer-removals").entries == 0  # not before the removal is final

    bob, bob_csrf = _sign_in(banked.url, "bob")
    second_item = _claim(bob, bob_csrf, "bank-review-1")
    bob.post(  # a critical item: the second reviewer looks at it too
        "/review/api/reveal",
        headers={"X-CSRF-Token": bob_csrf},
        json={"review_id": second_item["review_id"]},
    )
    second = bob.post(
        "/review/api/decide",
        headers={"X-CSRF-Token": bob_csrf},
        json={
            "review_id": second_item["review_id"],
            "token": second_item["token"],
            "decision": "remove",
            "reason_code": "TW_CONTRABAND",
        },
    )
    assert second.status_code == 200 and second.json()["status"] == "final"
    assert second.json()["delivered"] is True
    (entry,) = list(banks.entries("reviewer-removals"))
    assert entry.pdq == result.content_pdq and entry.reference_id == "bank-review-1"
    assert (entry.label, entry.source) == ("TW_CONTRABAND", "review:testworld/contraband_symbol")

    segments = open_segment_store(banked.settings)
    since = datetime.now(UTC) - timedelta(hours=1)
    deadline = time.monotonic() + 30
    additions: list[AuditRecord] = []
    while not additions and time.monotonic() < deadline:
        additions = [
            r
            for _, r in iter_records(segments, since)
            if r.job_id == "bank-review-1" and r.decision == "add_to_bank"
        ]
        time.sleep(0.2)
    (addition,) = additions
    assert addition.kind == "human" and addition.actor.startswith("rv_")
    assert addition.details["bank"] == "reviewer-removals"
    assert addition.details["entry_id"] == entry.id
    assert addition.details["content_pdq"] == result.content_pdq
    assert len(addition.details["reviewers"]) == 2

    target = banks.info("reviewer-removals").version
    banked.wait_workers(lambda w: bank_version(w, "reviewer-removals") >= target)
    again = banked.run(data, "bank-review-2")
    assert again.verdict is not None and again.verdict.decision is Decision.BLOCK
    assert (again.verdict.policy_id, again.verdict.category_id) == ("known", "reviewed")
    assert again.verdict.reason_code == "REMOVED_BEFORE"
