"""A video in the review console (issue 19), end to end in headless Chromium: a generated clip
goes through the real pipeline (API -> Redis -> Celery worker process); the policy holds its
one-second red star from block to review (``video.min_block_seconds: 2``); the reviewer sees
the filmstrip of the sampled frames that were scored (the stills the worker kept, blurred and
greyscale by default), the flagged segment on the timeline, jumps to the top frame with ``t``,
steps with ``[``/``]``, frames step on their own only once the reviewer turned autoplay on
(wellbeing settings), and decides with the same keys as for a photo. Screenshots go to the
test's artifacts."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from moderation.adapters.passwords import hash_password
from moderation.adapters.redis_jobs import RedisJobStore
from moderation.client import ModerationClient
from moderation.compose.stores import open_reviewers
from moderation.core.decision import Decision
from moderation.core.reviewers import ReviewerAccount, Role
from moderation.settings import Settings
from moderation.testmodel import POLICY_PATH
from moderation.testmodel.clips import Shot, background_image, block_image, clip
from tests.pipeline_support import WorkerProcess, pipeline_settings, start_api, stop_api
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
    policy = tmp_path / "policies" / "testworld.yaml"
    policy.parent.mkdir()
    policy.write_text(POLICY_PATH.read_text() + "video:\n  min_block_seconds: 2\n")
    cfg = pipeline_settings(settings.model_copy(update={"policy_paths": [policy]}), redis_url)
    open_reviewers(cfg).create(
        ReviewerAccount(
            username="alice",
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


def _frame_index(src: str | None) -> int:
    assert src is not None and "/api/frame/" in src, src
    return int(src.rsplit("/", 1)[1])


def test_a_video_is_reviewed_through_its_filmstrip(
    flow: dict[str, Any], artifacts_dir: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    # 4 s of background, a red star for 1 s, 4 s of background: one odd second, held to review
    data = clip(
        [Shot(4, background_image()), Shot(1, block_image()), Shot(4, background_image())], fps=10
    )
    with ModerationClient(flow["url"]) as api:
        job_id = api.submit(data, id="video-1")
        result = api.wait(job_id, timeout=120)
    verdict = result.verdict
    assert verdict is not None and verdict.decision is Decision.REVIEW, result
    assert verdict.video is not None
    assert verdict.video.held_to_review == ["testworld/contraband_symbol"]
    scored = verdict.video.timestamps
    (segment,) = [s for s in verdict.video.segments if s.decision is Decision.BLOCK]

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            # Review submission is a side effect after the result: the page polls for it.
            page.goto(flow["url"] + "/review/login")
            page.fill("#username", "alice")
            page.fill("#password", PASSWORD)
            page.click("#signin")
            expect(page.locator("#item")).to_be_visible(timeout=30_000)
            strip = page.locator("#filmstrip")
            expect(strip).to_be_visible()
            thumbs = page.locator("#frames img")
            # every sampled frame that was scored, in order, and nothing else
            expect(thumbs).to_have_count(len(scored))
            labels = page.locator("#frames li").all_text_contents()
            assert labels == [f"{t:.1f} s" for t in scored]
            page.wait_for_function(
                "() => [...document.querySelectorAll('#frames img')]"
                ".every(i => i.complete && i.naturalWidth > 0)"
            )
            page.wait_for_function(
                "() => { const i = document.getElementById('image');"
                " return i.complete && i.naturalWidth > 0; }"
            )
            # blurred and greyscale by default: the large frame and the filmstrip
            image = page.locator("#image")
            assert "blur" in image.evaluate("e => getComputedStyle(e).filter")
            assert "grayscale" in image.evaluate("e => getComputedStyle(e).filter")
            thumb_filter = thumbs.first.evaluate("e => getComputedStyle(e).filter")
            assert "blur" in thumb_filter and "grayscale" in thumb_filter
            # the flagged segment on the timeline, where the verdict put it
            bar = page.locator("#timeline .segment.block")
            expect(bar).to_have_count(1)
            assert float(bar.get_attribute("data-start") or "nan") == segment.start_s
            assert float(bar.get_attribute("data-end") or "nan") == segment.end_s
            expect(page.locator("#timeline .tick")).to_have_count(len(scored))
            # the large frame starts at the top frame
            top = min(range(len(scored)), key=lambda i: abs(scored[i] - verdict.video.top_frame_s))
            assert segment.start_s <= scored[top] < segment.end_s
            assert _frame_index(image.get_attribute("src")) == top
            expect(page.locator("#frames li.current")).to_have_count(1)
            page.screenshot(path=artifacts_dir / "review-video-filmstrip.png")

            page.keyboard.press("[")
            assert _frame_index(image.get_attribute("src")) == top - 1
            page.keyboard.press("]")
            page.keyboard.press("]")
            assert _frame_index(image.get_attribute("src")) == top + 1
            page.locator("#frames li").first.click()
            assert _frame_index(image.get_attribute("src")) == 0
            page.keyboard.press("t")
            assert _frame_index(image.get_attribute("src")) == top
            expect(page.locator("#film-caption")).to_contain_text("(top frame)")

            page.keyboard.down(" ")  # unblur: the large frame and the filmstrip
            page.wait_for_function(
                "() => !getComputedStyle(document.getElementById('image')).filter.includes('blur')"
            )
            assert "blur" not in thumbs.first.evaluate("e => getComputedStyle(e).filter")
            page.keyboard.press("g")
            page.wait_for_function(
                "() => !getComputedStyle(document.getElementById('image'))"
                ".filter.includes('grayscale')"
            )
            page.screenshot(path=artifacts_dir / "review-video-unblurred.png")
            page.keyboard.up(" ")
            page.set_viewport_size({"width": 1280, "height": 720})
            page.screenshot(path=artifacts_dir / "review-video-1280x720.png")

            # autoplay is off by default (wellbeing); turned on in the settings panel, the
            # frames step on their own; a frame key stops it
            expect(strip).to_have_attribute("data-autoplay", "off")
            assert _frame_index(image.get_attribute("src")) == top
            page.keyboard.press("w")
            page.check("#wb-autoplay")
            page.click("#wellbeing-save")
            expect(page.locator("#wellbeing-panel")).to_be_hidden()
            expect(strip).to_have_attribute("data-autoplay", "on")
            page.wait_for_function(
                f"() => !document.getElementById('image').src.endsWith('/{top}')"
            )
            page.keyboard.press("t")
            expect(strip).to_have_attribute("data-autoplay", "off")
            assert _frame_index(image.get_attribute("src")) == top

            # the keyboard flow is unchanged: remove with reason 1
            page.keyboard.press("r")
            expect(page.locator("#reasons")).to_be_visible()
            page.keyboard.press("t")  # not a frame key while choosing a reason
            page.keyboard.press("1")
            # a critical category: the removal waits for a second reviewer, as for a photo
            expect(page.locator("#status")).to_contain_text("Recorded: remove")
            expect(page.locator("#status")).to_contain_text("second reviewer")
            expect(page.locator("#empty")).to_be_visible()
            expect(strip).to_be_hidden()
            assert not [e for e in errors if "Content Security Policy" in e], errors
        finally:
            browser.close()


def test_frames_are_served_only_to_the_lease_holder(flow: dict[str, Any]) -> None:
    data = clip(
        [Shot(3, background_image()), Shot(1, block_image()), Shot(3, background_image())], fps=10
    )
    with ModerationClient(flow["url"]) as api:
        job_id = api.submit(data, id="video-2")
        assert api.wait(job_id, timeout=120).verdict.decision is Decision.REVIEW  # type: ignore[union-attr]
    import re

    client = httpx.Client(base_url=flow["url"], timeout=20)
    form = client.get("/review/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
    client.post("/review/login", data={"username": "alice", "password": PASSWORD, "csrf": csrf})
    token = re.search(r'<meta name="csrf-token" content="([^"]+)"', client.get("/review/").text)
    assert token is not None
    item = None
    deadline = time.monotonic() + 30
    while item is None and time.monotonic() < deadline:  # review submission is a side effect
        item = client.post("/review/api/next", headers={"X-CSRF-Token": token.group(1)}).json()[
            "item"
        ]
        if item is None:
            time.sleep(0.2)
    assert item is not None and item["video"] is not None and item["image_problem"] is None
    frames = item["video"]["frames"]
    assert frames and item["image_url"] == frames[item["video"]["top_index"]]["url"]
    shown = client.get(frames[0]["url"])
    assert shown.status_code == 200 and shown.headers["content-type"] == "image/png"
    assert shown.headers["cache-control"].startswith("no-store")
    assert client.get(frames[0]["url"].rsplit("/", 1)[0] + f"/{len(frames)}").status_code == 404
    stranger = httpx.Client(base_url=flow["url"], timeout=20)
    assert stranger.get(frames[0]["url"]).status_code == 401
    client.close()
    stranger.close()
