"""Wellbeing and the admin's actions in headless Chromium (issue 21): settings kept on the server
across reloads and browsers, a break prompt after N critical items (keys do not decide while it
is open; answering is counted), and an admin who requeues, reassigns, releases and redelivers
from the overview page, each leaving an audit record. Reviewers get 403 on every admin action.
Screenshots go to the test artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from moderation.core.review_admin import AdminAction
from tests.test_review_browser import ARGS, CHROMIUM
from tests.test_review_console_browser import _sign_in_as, _wait_image
from tests.test_review_web import (  # noqa: F401 (fixtures)
    ReviewSite,
    review_settings,
    review_site,
    sign_in,
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"
    ),
]


def _blur(page: Any) -> str:
    return str(
        page.evaluate(
            "() => getComputedStyle(document.documentElement).getPropertyValue('--review-blur')"
        )
    ).strip()


def test_settings_are_kept_on_the_server_across_reloads_and_browsers(
    site: ReviewSite, artifacts_dir: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    site.add_items(1)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 720})
            _sign_in_as(page, site, "alice")
            _wait_image(page)
            # the protective defaults: greyscale on, blur 36 px
            expect(page.locator("#image")).to_have_class("blur grey")
            assert _blur(page) == "36px"
            page.keyboard.press("w")  # the panel, by keyboard
            expect(page.locator("#wellbeing-panel")).to_be_visible()
            expect(page.locator("#wb-greyscale")).to_be_focused()
            page.keyboard.press("Space")  # greyscale off
            page.keyboard.press("Tab")
            page.keyboard.press("Control+a")
            page.keyboard.type("12")  # "a" and digits type into the field, never decide
            page.keyboard.press("Enter")
            expect(page.locator("#wellbeing-panel")).to_be_hidden()
            expect(page.locator("#status")).to_have_text("Wellbeing settings saved")
            assert not any(site.queue.decisions_on().values())
            page.screenshot(path=artifacts_dir / "wellbeing-settings-1280x720.png")
            page.reload()
            _wait_image(page)
            assert _blur(page) == "12px"
            expect(page.locator("#image")).not_to_have_class("grey")
            # another browser, signed in afresh: the same settings (kept on the server)
            other = browser.new_context().new_page()
            _sign_in_as(other, site, "alice")
            assert _blur(other) == "12px"
            other.keyboard.press("w")
            expect(other.locator("#wb-greyscale")).not_to_be_checked()
            expect(other.locator("#wb-blur")).to_have_value("12")
            other.keyboard.press("Escape")
            expect(other.locator("#wellbeing-panel")).to_be_hidden()
            # out-of-range values are refused with a clear message, nothing kept
            other.keyboard.press("w")
            other.fill("#wb-blur", "500")
            other.evaluate("() => document.getElementById('wb-blur').removeAttribute('max')")
            other.click("#wellbeing-save")
            expect(other.locator("#wellbeing-error")).to_contain_text("blur_px")
        finally:
            browser.close()
    saved = site.wellbeing.settings(site.rv("alice")) if site.wellbeing else None
    assert saved is not None and saved.blur_px == 12 and not saved.greyscale
    assert site.wellbeing is not None and site.wellbeing.settings(site.rv("bob")).greyscale


def test_a_break_prompt_after_n_critical_items(site: ReviewSite, artifacts_dir: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    assert site.wellbeing is not None
    alice = site.rv("alice")
    site.wellbeing.save(alice, {"break_after_critical": 2, "break_after_minutes": 0})
    site.add_items(3, category_id="contraband_symbol", seed=11)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 720})
            _sign_in_as(page, site, "alice")
            _wait_image(page)
            expect(page.locator("#wellbeing-today")).to_contain_text("1 critical")
            expect(page.locator("#break-prompt")).to_be_hidden()
            page.keyboard.press("s")  # skip: the second critical item is shown
            expect(page.locator("#wellbeing-today")).to_contain_text("2 critical")
            prompt = page.locator("#break-prompt")
            expect(prompt).to_be_visible()
            expect(page.locator("#break-message")).to_contain_text("2 critical items")
            expect(page.locator("#break-take")).to_be_focused()
            page.screenshot(path=artifacts_dir / "wellbeing-break-1280x720.png")
            page.keyboard.press("a")  # no decision while the prompt is open
            page.keyboard.press("e")
            assert not any(site.queue.decisions_on().values())
            page.keyboard.press("Enter")  # take the break
            expect(page.locator("#break-on")).to_be_visible()
            page.keyboard.press("Enter")  # resume
            expect(prompt).to_be_hidden()
            assert site.wellbeing.state(alice).today.breaks_taken == 1
            page.keyboard.press("s")  # the third: counting started again, no prompt
            expect(page.locator("#wellbeing-today")).to_contain_text("3 critical")
            expect(prompt).to_be_hidden()
        finally:
            browser.close()
    today = site.wellbeing.state(alice).today
    assert (today.critical, today.critical_since_break, today.breaks_taken) == (3, 1, 1)


def test_admin_requeue_reassign_release_redeliver_from_the_overview(
    site: ReviewSite, artifacts_dir: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    site.add_items(2)
    alice, bob, root = site.rv("alice"), site.rv("bob"), site.rv("root")
    # reviewers may not act as admins
    client, csrf = sign_in(site, "alice")
    for path, body in (
        ("/review/api/admin/requeue", {"review_id": "x"}),
        ("/review/api/admin/reassign", {"review_id": "x", "username": "bob"}),
        ("/review/api/admin/release", {"reviewer": bob}),
        ("/review/api/admin/redeliver", {}),
    ):
        refused = client.post(path, json=body, headers={"X-CSRF-Token": csrf})
        assert refused.status_code == 403 and refused.json()["code"] == "review_forbidden", path
    assert client.get("/review/api/admin/in-review").status_code == 403
    assert client.get("/review/api/admin/exposure").status_code == 403
    held = client.post("/review/api/next", headers={"X-CSRF-Token": csrf}).json()["item"]
    client.close()
    rid = held["review_id"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.on("dialog", lambda dialog: dialog.accept())  # every confirmation: yes
            _sign_in_as(page, site, "root")
            page.goto(site.url + "/review/overview")
            row = page.locator(f'#held tr[data-review-id="{rid}"]')
            expect(row).to_contain_text(alice)
            expect(page.locator(f'#exposure tr[data-reviewer="{alice}"]')).to_be_visible()
            page.screenshot(path=artifacts_dir / "admin-overview-1440x900.png")
            row.locator("select.reassign-to").select_option("bob")
            row.get_by_role("button", name=f"Reassign job {held['job_id']}").click()
            expect(page.locator("#admin-status")).to_contain_text("Reassigned")
            assert site.queue.holds(bob, rid)
            expect(row).to_contain_text(bob)
            row.get_by_role("button", name=f"Release everything {bob} holds").click()
            expect(page.locator("#admin-status")).to_contain_text(f"Released 1 item(s) from {bob}")
            assert not site.queue.holds(bob, rid)
            expect(row).to_have_count(0)
            # held again (by the API), then requeued from the page
            site.queue.assign(rid, reviewer=alice, queues=["review"])
            page.reload()
            row.get_by_role("button", name=f"Requeue job {held['job_id']}").click()
            expect(page.locator("#admin-status")).to_contain_text("Requeued")
            assert not site.queue.holds(alice, rid)
            page.click("#redeliver")
            expect(page.locator("#admin-status")).to_contain_text("Redelivered 0 of 0")
        finally:
            browser.close()
    records = [r for r in site.audit.records if r.kind == "admin"]
    assert [r.decision for r in records] == [
        AdminAction.REASSIGN.value,
        AdminAction.RELEASE.value,
        AdminAction.REQUEUE.value,
        AdminAction.REDELIVER.value,
    ]
    assert {r.actor for r in records} == {root}
    assert records[0].details == {"review_id": rid, "from": alice, "to": bob}
    assert records[1].details == {"review_id": rid, "from": bob}
    assert records[2].details == {"review_id": rid, "from": alice, "taken_back": True}
