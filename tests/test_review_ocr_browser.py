"""The review page outlines the text a text rule matched (``static/ocr_boxes.js``), in
headless Chromium: the boxes of the evidence sit over the image at its displayed size, and the
evidence list says what was read."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from PIL import Image

from moderation.core.decision import Evidence
from moderation.core.image_ref import ImageRef
from moderation.core.review import item_from_verdict
from moderation.testmodel.samples import encoded
from moderation.testmodel.text_images import busy_background, render_text
from tests.test_review_browser import ARGS, CHROMIUM
from tests.test_review_console_browser import _sign_in_as, _wait_image
from tests.test_review_queue import make_verdict, with_evidence, world_policy
from tests.test_review_web import (  # noqa: F401 (fixtures)
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

#: The matched line's box, in fractions of the frame (what the text signal writes).
BOX = [[0.1, 0.4], [0.7, 0.4], [0.7, 0.6], [0.1, 0.6]]


def test_matched_text_is_outlined_over_the_image(site: ReviewSite, artifacts_dir: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    image = render_text(busy_background((640, 400), seed=2), "S3ND B1TCOIN", size=48)
    data = encoded(image)
    policy = world_policy()
    verdict = make_verdict(policy, "restricted_logo", 0.91)
    match = Evidence(
        "text",
        "S3ND B1TCOIN",
        0.91,
        {
            "rule": "phrase",
            "wanted": "send bitcoin",
            "text": "S3ND B1TCOIN",
            "boxes": [BOX],
            "confidence": [0.91],
        },
    )
    category = dataclasses.replace(verdict.categories[0], signal="text", evidence=[match])
    verdict = dataclasses.replace(verdict, categories=[category])
    item = item_from_verdict(
        job_id="ocr-1", image=ImageRef(uri="s3://uploads/ocr-1.png"), verdict=verdict, policy=policy
    )
    site.queue.submit(with_evidence(item, data, site.blobs))

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 720})
            _sign_in_as(page, site, "alice")
            _wait_image(page)
            polygon = page.locator("#ocr-boxes polygon")
            expect(polygon).to_have_count(1)
            assert polygon.get_attribute("points") == "0.1,0.4 0.7,0.4 0.7,0.6 0.1,0.6"
            expect(page.locator("#matches li").first).to_contain_text(
                'phrase "send bitcoin" read as "S3ND B1TCOIN"'
            )
            expect(page.locator("#ocr-boxes")).to_be_visible()
            shown = page.locator("#image").bounding_box()
            layer = page.locator("#ocr-boxes").bounding_box()
            assert shown is not None and layer is not None
            for key in ("x", "y", "width", "height"):
                assert abs(shown[key] - layer[key]) <= 1.5, (key, shown, layer)
            box = polygon.bounding_box()
            assert box is not None
            # The outline (its stroke included) is centred on the box's place in the image.
            centre_x, centre_y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
            assert abs(centre_x - (shown["x"] + 0.4 * shown["width"])) <= 3
            assert abs(centre_y - (shown["y"] + 0.5 * shown["height"])) <= 3
            assert abs(box["width"] - 0.6 * shown["width"]) <= 8
            page.screenshot(path=artifacts_dir / "review-ocr-boxes-1280x720.png")
        finally:
            browser.close()
    assert Image.open(artifacts_dir / "review-ocr-boxes-1280x720.png").width == 1280
