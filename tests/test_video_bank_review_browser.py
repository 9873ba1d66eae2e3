"""Banking a video from the review page (issue 19), end to end in headless Chromium: a generated
clip held to review goes through the real pipeline; the reviewer removes it with "remove and add
to bank" (``b``, then a reason), a second reviewer makes the removal final (a critical category),
and the reviewer bank then holds the whole video: every scored frame's vPDQ hash under the video
key ``job:<id>``, as ``moderation bank export-video`` writes it back, with the audit record."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from moderation import testmodel
from moderation.adapters.passwords import hash_password
from moderation.adapters.redis_jobs import RedisJobStore
from moderation.client import ModerationClient
from moderation.compose.banks import build_banks
from moderation.compose.stores import open_reviewers, open_segment_store
from moderation.core.audit import AuditRecord
from moderation.core.decision import Decision
from moderation.core.reviewers import ReviewerAccount, Role
from moderation.core.vpdq import format_text
from moderation.pipeline.audit import iter_records
from moderation.pipeline.video_banks import export_video, frames_of_verdict, videos
from moderation.settings import Settings
from moderation.testmodel import POLICY_PATH
from moderation.testmodel.clips import Shot, background_image, clip
from tests.pipeline_support import WorkerProcess, pipeline_settings, start_api, stop_api
from tests.test_banks_pipeline import _claim, _sign_in
from tests.test_review_browser import ARGS, CHROMIUM

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"
    ),
]
PASSWORD = "review-pass-123"


@pytest.fixture
def flow(settings: Settings, redis_url: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The video review flow's set-up (a policy that holds a one-second star to review), with
    two reviewers and audit segments closed quickly enough to read back."""
    policy = tmp_path / "policies" / "testworld.yaml"
    policy.parent.mkdir()
    policy.write_text(POLICY_PATH.read_text() + "video:\n  min_block_seconds: 2\n")
    base = settings.model_copy(
        update={
            "policy_paths": [policy],
            "audit": settings.audit.model_copy(
                update={
                    "local_dir": tmp_path / "audit",
                    "spool_dir": tmp_path / "spool",
                    "segment_max_age_s": 0.3,
                }
            ),
        }
    )
    cfg = pipeline_settings(base, redis_url)
    users = open_reviewers(cfg)
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
    store = RedisJobStore.from_url(redis_url, cfg.queue)
    worker = WorkerProcess(cfg, tmp_path / "worker.log").start()
    server = None
    try:
        worker.wait_ready(store)
        server, url = start_api(cfg)
        yield {"settings": cfg, "url": url}
    finally:
        if server is not None:
            stop_api(server)
        worker.stop()


def test_remove_and_add_to_bank_banks_the_whole_video(flow: dict[str, Any]) -> None:
    from playwright.sync_api import expect, sync_playwright

    cfg = flow["settings"]
    # a textured crimson-magenta star (held to review, its frames' hashes of quality >= 50)
    # between empty backgrounds (hashes of low quality: banked, not matched)
    star = testmodel.sample_images("review", 3, seed=1)[2][0]
    data = clip([Shot(3, background_image()), Shot(2, star), Shot(3, background_image())], fps=10)
    with ModerationClient(flow["url"]) as api:
        job_id = api.submit(data, id="video-bank-1")
        result = api.wait(job_id, timeout=120)
    verdict = result.verdict
    assert verdict is not None and verdict.decision is Decision.REVIEW, result
    assert verdict.video is not None and verdict.video.frame_hashes
    frames = frames_of_verdict(verdict.video.frame_hashes)
    assert max(f.quality for f in frames) >= 50  # the star's frames: a usable hash
    assert [f.timestamp_s for f in frames] == verdict.video.timestamps

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.goto(flow["url"] + "/review/login")
            page.fill("#username", "alice")
            page.fill("#password", PASSWORD)
            page.click("#signin")
            expect(page.locator("#item")).to_be_visible(timeout=30_000)
            expect(page.locator("#filmstrip")).to_be_visible()
            expect(page.locator("#bank-key")).to_be_enabled()
            expect(page.locator("#bank-name")).to_have_text("reviewer-removals")
            page.keyboard.down(" ")  # a critical category: one look before a removal
            page.wait_for_function(
                "() => !getComputedStyle(document.getElementById('image')).filter.includes('blur')"
            )
            page.keyboard.up(" ")
            page.keyboard.press("b")
            expect(page.locator("#reasons")).to_be_visible()
            page.keyboard.press("1")
            expect(page.locator("#status")).to_contain_text("added to bank reviewer-removals")
            expect(page.locator("#status")).to_contain_text("second reviewer")
        finally:
            browser.close()

    banks = build_banks(cfg)
    assert videos(banks.store, "reviewer-removals") == {}  # not before the removal is final
    bob, csrf = _sign_in(flow["url"], "bob")
    item = _claim(bob, csrf, job_id)
    bob.post(
        "/review/api/reveal", headers={"X-CSRF-Token": csrf}, json={"review_id": item["review_id"]}
    )
    second = bob.post(
        "/review/api/decide",
        headers={"X-CSRF-Token": csrf},
        json={
            "review_id": item["review_id"],
            "token": item["token"],
            "decision": "remove",
            "reason_code": "TW_CONTRABAND",
        },
    )
    assert second.status_code == 200 and second.json()["status"] == "final", second.text
    assert second.json()["delivered"] is True

    key = f"job:{item['job_id']}"
    assert videos(banks.store, "reviewer-removals") == {key: len(frames)}
    assert export_video(banks.store, "reviewer-removals", key) == format_text(frames)

    segments = open_segment_store(cfg)
    since = datetime.now(UTC) - timedelta(hours=1)
    additions: list[AuditRecord] = []
    deadline = time.monotonic() + 30
    while not additions and time.monotonic() < deadline:
        additions = [
            r
            for _, r in iter_records(segments, since)
            if r.job_id == item["job_id"] and r.decision == "add_to_bank"
        ]
        time.sleep(0.2)
    (addition,) = additions
    assert addition.details["bank"] == "reviewer-removals"
    assert addition.details["video"]["video"] == key
    assert addition.details["video"]["frames"] == len(frames)
    assert len(addition.details["reviewers"]) == 2
