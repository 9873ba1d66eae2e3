"""The evaluation report opens in a browser (Debian's Chromium, driven by Playwright) as one
self-contained file: every table filled, every plot decoded, nothing fetched from anywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from moderation.adapters.eval_report import write_report
from moderation.core.evaluation import Dataset, LabelledItem
from moderation.pipeline.evaluate import evaluate, score_dataset
from moderation.testmodel import world
from moderation.testmodel.samples import encoded
from tests.test_review_browser import ARGS, CHROMIUM

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium"),
]


def test_the_html_report_opens_self_contained_in_a_browser(
    scoring: Any, tmp_path: Path, artifacts_dir: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    drawn = world.labelled_images(240, 11)
    items = [
        LabelledItem(image=f"mem://{i}", positive=frozenset(d.labels), name=d.description)
        for i, d in enumerate(drawn)
    ]
    images = {item.image: encoded(d.image) for item, d in zip(items, drawn, strict=True)}
    dataset = Dataset(items=items, source="fresh test-world images", kind="labels")
    scored = score_dataset(dataset, scoring.moderator, images.__getitem__)
    report = evaluate(scored, scoring.policies.current, dataset=dataset, resamples=100)
    files = write_report(report, tmp_path / "report", title="Policy evaluation: browser test")
    requested: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("request", lambda r: requested.append(r.url))
            page.goto(files.html.as_uri())
            expect(page).to_have_title("Policy evaluation: browser test")
            rows = page.locator("#summary tr.category")
            expect(rows).to_have_count(3)
            assert rows.nth(0).get_attribute("data-key") == "testworld/contraband_symbol"
            assert "%" in (rows.nth(0).text_content() or "")
            expect(page.locator("img")).to_have_count(6)
            page.wait_for_function(
                "() => [...document.images].every(i => i.complete && i.naturalWidth > 300)"
            )
            expect(page.locator("table.confusion")).to_have_count(3)
            page.screenshot(path=artifacts_dir / "eval-report.png", full_page=True)
            assert errors == []
        finally:
            browser.close()
    assert all(url.startswith(("file:", "data:")) for url in requested), requested
