"""The reviewer console in headless Chromium (issue 21): safe decisions. A decision can be taken
back with ``u`` or the Undo button while its window lasts (and not after); nothing is handed on
before the window has passed; a critical item needs one look at the image before "allow" or
"remove"; the status line names the item decided. Screenshots at 1440×900, 1280×720 and
900×700 go to the test's artifacts; at 1280×720 the decision keys and the status line are on
screen."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from moderation.core.review import ReviewDecision, review_id_for
from moderation.settings import ReviewSettings
from tests.test_review_browser import ARGS, CHROMIUM
from tests.test_review_web import (  # noqa: F401 (fixtures)
    PASSWORD,
    ReviewSite,
    review_settings,
    review_site,
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"
    ),
]

UNDO_S = 3.0
SIZES = [(1440, 900), (1280, 720), (900, 700)]


def _in_viewport(page: Any, selector: str) -> bool:
    return bool(
        page.eval_on_selector(
            selector,
            "e => { const r = e.getBoundingClientRect();"
            " return r.width > 0 && r.top >= 0 && r.left >= 0"
            " && r.bottom <= innerHeight && r.right <= innerWidth; }",
        )
    )


def _sign_in(page: Any, site: ReviewSite) -> None:
    from playwright.sync_api import expect

    page.goto(site.url + "/review/login")
    page.fill("#username", "alice")
    page.fill("#password", PASSWORD)
    page.click("#signin")
    expect(page.locator("#item")).to_be_visible()


def _wait_image(page: Any) -> None:
    page.wait_for_function(
        "() => { const i = document.getElementById('image');"
        " return i.complete && i.naturalWidth > 0; }"
    )


@pytest.mark.parametrize(
    "review_settings",
    [
        ReviewSettings(
            lease_s=60,
            session_secret="test-session-secret",
            pseudonym_secret="test-pseudonym-secret",
            undo_window_s=UNDO_S,
        )
    ],
)
def test_undo_within_the_window_and_not_after(site: ReviewSite, artifacts_dir: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    site.add_items(2)
    assert site.desk is not None
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 720})
            _sign_in(page, site)
            _wait_image(page)
            first_src = str(page.locator("#image").get_attribute("src"))
            review_id = first_src.rsplit("/", 1)[-1]  # the image URL names the review id
            page.keyboard.press("a")
            status = page.locator("#status")
            expect(status).to_contain_text("Recorded: allow")
            expect(status).to_contain_text("testworld / restricted_logo · job job-7-")
            expect(page.locator("#undo")).to_be_visible()
            page.wait_for_function(
                f"() => document.getElementById('image').getAttribute('src') !== '{first_src}'"
            )
            assert site.finals == []  # recorded, not handed on inside the window
            page.screenshot(path=artifacts_dir / "console-undo-offered.png")

            # u: the first item comes back (the second goes back to the queue).
            page.keyboard.press("u")
            expect(status).to_contain_text("Undone")
            expect(page.locator("#image")).to_have_attribute("src", first_src)
            expect(page.locator("#last")).to_be_hidden()
            assert site.finals == []
            assert not any(site.queue.decisions_on().values())

            # Remove with a reason, then the Undo button by mouse; then remove again and let
            # the window pass: the button goes, u is refused, and only then is it handed on.
            page.keyboard.press("r")
            page.keyboard.press("1")
            expect(status).to_contain_text("Recorded: remove (TW_LOGO)")
            page.click("#undo")
            expect(status).to_contain_text("Undone")
            expect(page.locator("#image")).to_have_attribute("src", first_src)
            page.keyboard.press("r")
            page.keyboard.press("1")
            expect(status).to_contain_text("Recorded: remove (TW_LOGO)")
            expect(page.locator("#undo")).to_be_hidden(timeout=(UNDO_S + 5) * 1000)
            page.keyboard.press("u")
            expect(status).to_contain_text("Too late to undo")
            # The server refuses it too (not just the page).
            review_id = first_src.rsplit("/", 1)[-1]
            token = page.evaluate("() => null")  # the page keeps no token once final
            assert token is None
            assert site.finals == [] or site.finals[0].review_id == review_id
            page.screenshot(path=artifacts_dir / "console-undo-too-late.png")
        finally:
            browser.close()
    # What the workers' outbox maintenance does: hand on what is due, once its window passed.
    tried, handed = site.desk.outbox.deliver_due()
    while tried == 0:  # due at most UNDO_MARGIN_S after the window the page already saw end
        tried, handed = site.desk.outbox.deliver_due()
    assert handed == 1
    assert [(f.review_id, f.decision, f.reason_code) for f in site.finals] == [
        (review_id, ReviewDecision.REMOVE, "TW_LOGO")
    ]


def test_a_critical_item_needs_a_look_before_a_decision(
    site: ReviewSite, artifacts_dir: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    site.add_items(1, category_id="contraband_symbol", seed=5)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            for width, height in SIZES:
                page = browser.new_page(viewport={"width": width, "height": height})
                _sign_in(page, site)
                _wait_image(page)
                expect(page.locator("#reveal-needed")).to_be_visible()
                page.screenshot(path=artifacts_dir / f"console-critical-{width}x{height}.png")
                if (width, height) == (1280, 720):
                    page.keyboard.press("a")  # refused: the status line says why
                    expect(page.locator("#status")).to_contain_text("look at the image first")
                    for selector in ("#status", "#lease", "#category"):
                        assert _in_viewport(page, selector), selector
                page.close()
            page = browser.new_page(viewport={"width": 1280, "height": 720})
            _sign_in(page, site)
            _wait_image(page)
            status = page.locator("#status")
            page.keyboard.press("a")
            expect(status).to_contain_text("look at the image first")
            page.keyboard.press("r")
            expect(page.locator("#reasons")).to_be_visible()
            page.keyboard.press("1")
            expect(status).to_contain_text("look at the image first")
            assert not any(site.queue.decisions_on().values())
            page.keyboard.down(" ")
            page.keyboard.up(" ")
            expect(page.locator("#reveal-needed")).to_be_hidden()
            page.keyboard.press("r")
            page.keyboard.press("1")
            expect(status).to_contain_text("waits for a second reviewer")
            expect(status).to_contain_text("testworld / contraband_symbol · job job-5-0")
        finally:
            browser.close()
    assert list(site.queue.decisions_on().values()) == [1]


def test_a_skipped_item_stays_away_from_the_reviewer(site: ReviewSite, artifacts_dir: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    site.add_items(2, seed=9)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 720})
            _sign_in(page, site)
            _wait_image(page)
            first_src = str(page.locator("#image").get_attribute("src"))
            page.keyboard.press("s")
            status = page.locator("#status")
            expect(status).to_contain_text("Skipped: testworld / restricted_logo · job job-9-")
            expect(status).to_contain_text("not shown to you again for 30 min")
            page.wait_for_function(
                f"() => document.getElementById('image').getAttribute('src') !== '{first_src}'"
            )
            page.keyboard.press("s")
            expect(page.locator("#empty")).to_be_visible()  # both skipped: none for alice
            page.screenshot(path=artifacts_dir / "console-skipped-all.png")
        finally:
            browser.close()
    # Another reviewer gets them at once.
    bob = site.queue.claim(site.rv("bob"))
    assert bob is not None and bob.item.job_id.startswith("job-9-")
    assert site.finals == []


@pytest.mark.parametrize(
    "review_settings",
    [
        ReviewSettings(
            lease_s=12,
            session_secret="test-session-secret",
            pseudonym_secret="test-pseudonym-secret",
            undo_window_s=0.0,
        )
    ],
)
def test_the_lease_warning_and_renewing_it_with_x(site: ReviewSite, artifacts_dir: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    site.add_items(1, seed=4)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 720})
            _sign_in(page, site)
            warning = page.locator("#lease-warning")
            expect(warning).to_be_hidden()
            # The last third of a 12 s lease: the warning, with its key.
            expect(warning).to_be_visible(timeout=15_000)
            expect(warning).to_contain_text("press x to keep it")
            assert _in_viewport(page, "#lease-warning")
            page.screenshot(path=artifacts_dir / "console-lease-warning.png")
            page.keyboard.press("x")
            status = page.locator("#status")
            expect(status).to_contain_text("Kept: testworld / restricted_logo · job job-4-0")
            expect(warning).to_be_hidden()
            # Not renewed again: it runs out, and the page says so plainly.
            expect(status).to_contain_text("ran out: it went back to the queue", timeout=20_000)
            page.screenshot(path=artifacts_dir / "console-lease-ran-out.png")
            page.keyboard.press("a")  # refused by the server: the lease is gone
            expect(status).to_contain_text("Not recorded: your lease on this item expired")
        finally:
            browser.close()
    assert site.finals == []


def test_an_admin_taking_the_item_back_is_said_plainly(
    site: ReviewSite, artifacts_dir: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    site.add_items(1, seed=3)
    assert site.desk is not None
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 720})
            _sign_in(page, site)
            _wait_image(page)
            review_id = str(page.locator("#image").get_attribute("src")).rsplit("/", 1)[-1]
            assert site.desk.requeue(review_id)  # what the admin's requeue does
            status = page.locator("#status")
            expect(status).to_contain_text(
                "An admin took testworld / restricted_logo · job job-3-0 back", timeout=15_000
            )
            expect(status).not_to_contain_text("lease")
            page.screenshot(path=artifacts_dir / "console-taken-back.png")
        finally:
            browser.close()


def _sign_in_as(page: Any, site: ReviewSite, username: str) -> None:
    from playwright.sync_api import expect

    page.goto(site.url + "/review/login")
    page.fill("#username", username)
    page.fill("#password", PASSWORD)
    page.click("#signin")
    expect(page.locator("#item")).to_be_visible()


def _next_image(page: Any, job_id: str) -> None:
    """Wait until the page shows an item other than ``job_id``'s, its image loaded."""
    page.wait_for_function(
        "() => { const i = document.getElementById('image');"
        " const s = document.getElementById('item');"
        f" return !s.hidden && !document.getElementById('category').closest('#item').hidden"
        f" && i.complete && i.naturalWidth > 0 && i.src.indexOf('{review_id_for(job_id)}') < 0; }}"
    )


def _unnamed_controls(page: Any) -> list[str]:
    """Buttons, options, dialogs and form fields without an accessible name, from Chromium's
    accessibility tree (Playwright's ARIA snapshot of the visible page)."""
    snapshot = str(page.locator("body").aria_snapshot())
    roles = ("button", "option", "textbox", "combobox", "checkbox", "dialog", "toolbar", "listbox")
    bad = []
    for line in snapshot.splitlines():
        entry = line.strip().lstrip("- ")
        role = entry.split(" ", 1)[0].rstrip(":")
        if role in roles and '"' not in entry:
            bad.append(entry)
    return bad


def test_the_decision_bar_by_mouse_and_keyboard_the_help_and_the_escalation_queue(
    site: ReviewSite, artifacts_dir: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    site.add_items(3, seed=12)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 720})
            _sign_in_as(page, site, "alice")
            _wait_image(page)
            status = page.locator("#status")
            # Everything needed to decide is on screen at 1280x720, with its key on it.
            for selector in ("#decision-bar", "#status", "#frame", "#category", "#plain"):
                assert _in_viewport(page, selector) or selector == "#status", selector
            for button in page.locator("#decision-bar button").all():
                assert _in_viewport(page, f"#{button.get_attribute('id')}")
                assert button.locator("kbd").count() == 1
                assert button.get_attribute("aria-keyshortcuts")
            assert _unnamed_controls(page) == []
            # Plain words and every category's score, not jargon.
            expect(page.locator("#plain li").first).to_contain_text("matches “")
            expect(page.locator("#plain li").first).to_contain_text("against the allowed “")
            assert page.locator("#category-scores tbody tr").count() >= 1
            # Tab reaches the decision buttons in their order.
            order = page.evaluate(
                "() => Array.from(document.querySelectorAll('button, input, a, [tabindex]'))"
                ".filter(e => e.offsetParent !== null && !e.disabled && e.tabIndex >= 0)"
                ".map(e => e.id).filter(Boolean)"
            )
            bar = [i for i in order if i in ("allow-key", "btn-remove", "escalate-key", "btn-skip")]
            assert bar == ["allow-key", "btn-remove", "escalate-key", "btn-skip"]

            # The help overlay lists every key; Esc closes it.
            page.keyboard.press("?")
            helpbox = page.locator("#help")
            expect(helpbox).to_be_visible()
            for key in ("a", "r", "b", "e", "s", "x", "u", "v", "g", "n", "?"):
                expect(helpbox.locator("kbd", has_text=key).first).to_be_visible()
            assert _in_viewport(page, "#help")
            page.screenshot(path=artifacts_dir / "console-help-1280x720.png")
            page.keyboard.press("Escape")
            expect(helpbox).to_be_hidden()

            # Remove by mouse: the picker shows readable labels, this category's first, all of
            # them (the count says so), with type-ahead.
            box = page.locator("#frame").bounding_box()
            page.click("#btn-remove")
            panel = page.locator("#reason-panel")
            expect(panel).to_be_visible()
            assert page.locator("#frame").bounding_box() == box  # nothing moved
            options = page.locator("#reasons button")
            expect(options.first).to_contain_text("Restricted logo")
            expect(options.first).to_have_class("reason own")
            total = len(
                site.queue.item(
                    str(page.locator("#image").get_attribute("src")).rsplit("/", 1)[-1]
                ).reason_codes
            )
            assert options.count() == total
            expect(page.locator("#reason-count")).to_have_text(f"{total} reasons")
            assert _in_viewport(page, "#reason-panel")
            assert _unnamed_controls(page) == []
            page.screenshot(path=artifacts_dir / "console-reasons-1280x720.png")
            page.keyboard.type("contra")
            expect(page.locator("#reason-count")).to_contain_text(f"of {total} reasons match")
            for option in options.all():
                expect(option).to_contain_text("Contraband")
            page.keyboard.press("Escape")
            expect(panel).to_be_hidden()
            page.click("#btn-remove")
            options.first.click()
            expect(status).to_contain_text("Recorded: remove (TW_LOGO) — testworld")
            expect(status).to_contain_text("job job-12-2")
            _next_image(page, "job-12-2")

            # By keyboard: r, type-ahead, Enter.
            page.keyboard.press("r")
            expect(panel).to_be_visible()
            page.keyboard.type("logo")
            page.keyboard.press("Enter")
            expect(status).to_contain_text("job job-12-1")
            expect(status).to_contain_text("Recorded: remove (TW_LOGO)")
            _next_image(page, "job-12-1")

            # Escalate by mouse: the item leaves the review queue for the escalation queue.
            page.click("#escalate-key")
            expect(status).to_contain_text("Escalated: sent to the escalation queue")
            expect(status).to_contain_text("job job-12-0")
            expect(page.locator("#empty")).to_be_visible()
            for width, height in SIZES:
                page.set_viewport_size({"width": width, "height": height})
                page.screenshot(path=artifacts_dir / f"console-bar-empty-{width}x{height}.png")

            # A senior picks the escalation queue and decides it once, for good.
            senior = browser.new_page(viewport={"width": 1280, "height": 720})
            _sign_in_as(senior, site, "sam")
            picker = senior.locator("#queue-picker")
            expect(picker).to_be_visible()
            expect(senior.locator("[data-queue-count=escalation]")).to_contain_text(
                "(1 open",
                timeout=20_000,  # the counts refresh every 15 s
            )
            expect(senior.locator("#escalated")).to_be_visible()
            expect(senior.locator("#escalate-key")).to_be_disabled()
            assert _unnamed_controls(senior) == []
            senior.screenshot(path=artifacts_dir / "console-escalation-1280x720.png")
            _wait_image(senior)
            senior.keyboard.press("a")
            expect(senior.locator("#status")).to_contain_text("Recorded: allow")
        finally:
            browser.close()
    assert [(f.decision.value, f.reviewers) for f in site.finals] == [
        ("remove", [site.rv("alice")]),
        ("remove", [site.rv("alice")]),
        ("allow", [site.rv("sam")]),
    ]
