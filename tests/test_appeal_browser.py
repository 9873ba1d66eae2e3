"""An appeal decided on the review page, in headless Chromium, on real servers (the API and a
``moderation worker`` process on PostgreSQL, valkey and S3: the appeals flow's site). A reviewer
removes an item; the tenant appeals; the first reviewer's page never offers the appeal; a
different reviewer sees the statement, the decision appealed with the verdict's explanation,
the earlier decision and the scored image, and overturns it by keyboard with a reason code; the
tenant's job is allowed and its signed callback says so."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from moderation import testmodel
from moderation.core.review import ReviewDecision
from tests.pipeline_support import png_bytes
from tests.test_appeals_flow import (  # noqa: F401 (the site fixture)
    PASSWORD,
    Site,
    _login,
    _next,
    _remove,
    _wait,
    site,
)
from tests.test_review_browser import ARGS, CHROMIUM

pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.xdist_group("postgres"),
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium"),
]

STATEMENT = "This is a news photo of a protest, not an endorsement."


def _sign_in(page: object, base: str, username: str) -> None:
    from playwright.sync_api import Page, expect

    assert isinstance(page, Page)
    page.goto(base + "/review/login")
    page.fill("#username", username)
    page.fill("#password", PASSWORD)
    page.click("#signin")
    expect(page).to_have_url(base + "/review/")


def test_an_appeal_is_overturned_on_the_review_page_by_another_reviewer(
    site: Site,  # noqa: F811 (the imported fixture)
    artifacts_dir: Path,
) -> None:
    from playwright.sync_api import expect, sync_playwright

    image = png_bytes(testmodel.sample_images("review", 1, 41)[0][0])
    job_id = site.acme.submit(image, callback_url=site.callback)
    assert site.acme.wait(job_id, 60).verdict is not None
    alice, bob = (httpx.Client(base_url=site.base, timeout=10) for _ in range(2))
    with alice, bob:
        alice_h, bob_h = _login(alice, "alice"), _login(bob, "bob")
        item = _wait(lambda: _next(alice, alice_h, "review"), "no review item arrived")
        deciders = [_remove(alice, alice_h, item, "alice")]
        if item["severity"] == "critical":  # a critical removal needs a second reviewer
            deciders.append(_remove(bob, bob_h, _next(bob, bob_h, "review"), "bob"))
    _wait(lambda: site.acme.get(job_id).human is not None, "the removal never reached the job")
    appeal = site.acme.appeal(job_id, STATEMENT)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            # The reviewer who removed it is never offered its appeal.
            first = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            _sign_in(first, site.base, "alice")
            expect(first.locator("#empty")).to_be_visible()
            expect(first.locator("#appeal")).to_be_hidden()
            expect(first.locator("#appeal-barred")).to_contain_text("a different reviewer")

            page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            _sign_in(page, site.base, "carol")
            panel = page.locator("#appeal")
            expect(panel).to_be_visible()
            expect(page.locator("#appeal-statement")).to_have_text(STATEMENT)
            expect(page.locator("#appeal-against")).to_contain_text("a reviewer's remove")
            expect(page.locator("#appeal-explanation")).not_to_be_empty()
            expect(page.locator("#appeal-earlier li")).to_have_count(1)
            expect(page.locator("#appeal-earlier li")).to_contain_text("remove")
            # The first-review actions are gone; the scored image is there, blurred.
            for hidden in ("#allow-key", "#btn-remove", "#bank-key", "#escalate-key"):
                expect(page.locator(hidden)).to_be_hidden()
            page.wait_for_function(
                "() => { const i = document.getElementById('image');"
                " return i.complete && i.naturalWidth > 0; }"
            )
            assert appeal.appeal_id in (page.locator("#image").get_attribute("src") or "")
            page.keyboard.down(" ")  # look at it once (a critical item needs it)
            page.wait_for_function(
                "() => !getComputedStyle(document.getElementById('image')).filter.includes('blur')"
            )
            page.keyboard.up(" ")
            page.screenshot(path=artifacts_dir / "review-appeal.png")

            page.keyboard.press("a")  # not an appeal outcome: nothing is recorded
            expect(page.locator("#status")).to_contain_text("upheld (k) or overturned (o)")
            assert site.acme.get_appeal(appeal.appeal_id).status.value == "open"

            page.keyboard.press("o")
            reasons = page.locator("#appeal-reason-list button")
            expect(page.locator("#appeal-reasons")).to_be_visible()
            codes = page.locator("#appeal-reason-list code").all_text_contents()
            assert "APPEAL_CONTEXT" in codes and reasons.count() == len(codes)
            page.keyboard.press(str(codes.index("APPEAL_CONTEXT") + 1))
            expect(page.locator("#status")).to_contain_text("Recorded: overturn (APPEAL_CONTEXT)")
            expect(page.locator("#empty")).to_be_visible()
            assert not [e for e in errors if "Content Security Policy" in e], errors
        finally:
            browser.close()

    decided = site.acme.get_appeal(appeal.appeal_id)
    assert decided.status.value == "overturned" and decided.reason_code == "APPEAL_CONTEXT"
    result = site.acme.get(job_id)
    assert result.human is not None and result.human.decision is ReviewDecision.OVERTURN
    assert result.decision is not None and result.decision.value == "allow"
    body, signed = site.receiver.event("job.appeal_decided", job_id)
    assert signed and body["appeal"]["status"] == "overturned"
