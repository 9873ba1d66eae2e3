"""The reviewer's context panel and a disagreement in headless Chromium (issue 21): earlier
decisions on the same image (this tenant's only) and the uploader's history beside the item; a
blind second review that disagrees sends the item to the escalation queue, where a senior sees
both decisions and settles it. Screenshots at 1440×900, 1280×720 and 900×700 go to the test
artifacts; at 1280×720 the image, the decision bar, the reasons and the status line are on
screen."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from moderation.adapters.memory import (
    MemoryAuditSink,
    MemoryCallbacks,
    MemoryImageHistory,
    MemoryJobStore,
    MemoryStrikeStore,
)
from moderation.core.decision import Decision
from moderation.core.image_ref import ImageRef
from moderation.core.jobs import Job, JobResult, scoped_id
from moderation.core.review import ReviewDecision
from moderation.pipeline.strikes import Enforcement
from moderation.testmodel import sample_images
from tests.test_review_browser import ARGS, CHROMIUM
from tests.test_review_console_browser import (
    SIZES,
    _in_viewport,
    _sign_in_as,
    _unnamed_controls,
    _wait_image,
)
from tests.test_review_queue import make_item, make_verdict, with_evidence, world_policy
from tests.test_review_web import (  # noqa: F401 (fixtures)
    ReviewSite,
    review_settings,
    review_site,
)
from tests.test_strikes import strike_policy

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"
    ),
]


def _png(seed: int) -> bytes:
    ((image, _label),) = sample_images("review", 1, seed)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _earlier_job(jobs: MemoryJobStore, tenant: str, job_id: str, data: bytes, at: datetime) -> Job:
    import dataclasses
    import hashlib

    policy = world_policy()
    job = Job(
        id=scoped_id(tenant, job_id),
        image=ImageRef(uri=f"s3://uploads/{job_id}.png"),
        tenant=tenant,
        created_at=at,
        uploader_id="u1",
    )
    verdict = dataclasses.replace(
        make_verdict(policy, "contraband_symbol", 0.9), decision=Decision.BLOCK
    )
    jobs.create(job)
    jobs.finish(
        JobResult.ended(job, verdict=verdict, content_sha256=hashlib.sha256(data).hexdigest())
    )
    return job


def test_the_context_panel_and_a_disagreement_settled_by_a_senior(
    site: ReviewSite, artifacts_dir: Path, tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    assert site.desk is not None
    data = _png(3)
    # Before: acme blocked the same bytes (a strike for its uploader); another tenant did too.
    jobs = MemoryJobStore()
    t0 = datetime.now(UTC) - timedelta(days=2)
    earlier = _earlier_job(jobs, "acme", "old-1", data, t0)
    _earlier_job(jobs, "rival", "theirs-1", data, t0 + timedelta(hours=1))
    policy = strike_policy(tmp_path)
    enforcement = Enforcement(
        strikes=MemoryStrikeStore(),
        store=jobs,
        audit=MemoryAuditSink(),
        callbacks=MemoryCallbacks(),
        policies=lambda: {policy.id: policy},
    )
    enforcement.on_decision(
        earlier,
        decision="block",
        source="automated",
        policy_id=policy.id,
        category_id="contraband_symbol",
        severity="critical",
        at=t0,
    )
    site.desk.image_history = MemoryImageHistory(jobs)
    site.desk.uploader_lookup = enforcement.context
    item = make_item(world_policy(), scoped_id("acme", "crit-1"), category_id="contraband_symbol")
    site.queue.submit(
        with_evidence(
            item.model_copy(update={"uploader_id": "u1"}), data, site.blobs, tenant="acme"
        )
    )

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 720})
            _sign_in_as(page, site, "alice")
            _wait_image(page)
            # The same image before: this tenant's decision only, with its date.
            history = page.locator("#same-image li")
            expect(history).to_have_count(1)
            expect(history.first).to_contain_text("job old-1")
            expect(history.first).to_contain_text("model: block testworld/contraband_symbol")
            expect(history.first).to_contain_text(t0.strftime("%Y-%m-%d"))
            expect(page.locator("#context")).not_to_contain_text("theirs-1")
            expect(page.locator("#uploader-summary")).to_contain_text("10 strike points in force")
            expect(page.locator("#uploader-prior li")).to_have_count(1)
            expect(page.locator("#uploader-prior li").first).to_contain_text("job old-1")
            expect(page.locator("#disagreement")).to_be_hidden()
            assert _unnamed_controls(page) == []
            for width, height in SIZES:
                page.set_viewport_size({"width": width, "height": height})
                page.screenshot(path=artifacts_dir / f"context-panel-{width}x{height}.png")
            page.set_viewport_size({"width": 1280, "height": 720})
            # What a reviewer needs is on screen at 1280x720; the context scrolls in the panel.
            for selector in ("#frame", "#decision-bar", "#plain", "#category", "#lease"):
                assert _in_viewport(page, selector), selector
            page.locator("#context").scroll_into_view_if_needed()
            assert _in_viewport(page, "#context") and _in_viewport(page, "#decision-bar")
            page.keyboard.down(" ")  # one look: a critical item needs it
            page.keyboard.up(" ")
            expect(page.locator("#reveal-needed")).to_be_hidden()
            page.keyboard.press("r")
            page.keyboard.press("1")
            status = page.locator("#status")
            expect(status).to_contain_text("waits for a second reviewer")
            assert _in_viewport(page, "#status")

            # Bob's second review is blind; he disagrees: the item goes to the escalation queue.
            bob = browser.new_page(viewport={"width": 1280, "height": 720})
            _sign_in_as(bob, site, "bob")
            _wait_image(bob)
            expect(bob.locator("#second")).to_be_visible()
            expect(bob.locator("#disagreement")).to_be_hidden()
            bob.keyboard.down(" ")
            bob.keyboard.up(" ")
            expect(bob.locator("#reveal-needed")).to_be_hidden()
            bob.keyboard.press("a")
            expect(bob.locator("#status")).to_contain_text(
                "disagrees with the first reviewer: sent to the escalation queue"
            )
            bob.screenshot(path=artifacts_dir / "context-disagreement-sent-1280x720.png")
            assert site.finals == []  # nobody's decision won

            # Sam (senior) sees both decisions in the escalation queue and settles it.
            sam = browser.new_page(viewport={"width": 1280, "height": 720})
            _sign_in_as(sam, site, "sam")
            _wait_image(sam)
            expect(sam.locator("#escalated")).to_be_visible()
            votes = sam.locator("#disagreement-votes li")
            expect(votes).to_have_count(2)
            expect(votes.nth(0)).to_contain_text("First reviewer: remove — Contraband symbol")
            expect(votes.nth(1)).to_contain_text("Second reviewer: allow")
            expect(sam.locator("#second")).to_be_hidden()
            for width, height in SIZES:
                sam.set_viewport_size({"width": width, "height": height})
                sam.screenshot(path=artifacts_dir / f"context-disagreement-{width}x{height}.png")
            sam.set_viewport_size({"width": 1280, "height": 720})
            assert _in_viewport(sam, "#disagreement")
            sam.keyboard.down(" ")
            sam.keyboard.up(" ")
            expect(sam.locator("#reveal-needed")).to_be_hidden()
            sam.keyboard.press("a")
            expect(sam.locator("#status")).to_contain_text("Recorded: allow")
        finally:
            browser.close()
    ((final,),) = [site.finals]
    assert final.decision is ReviewDecision.ALLOW
    assert final.reviewers == [site.rv("alice"), site.rv("bob"), site.rv("sam")]
    assert [v.decision for v in final.votes] == [ReviewDecision.REMOVE, ReviewDecision.ALLOW]
