"""The review page with a bank match, in headless Chromium: the matched entry's metadata is shown
and "remove and add to bank" is one key (b), then the reason number."""

from __future__ import annotations

import io
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI

from moderation.adapters.images import safe_png
from moderation.adapters.memory import MemoryBankStore, MemoryBlobStore
from moderation.adapters.passwords import hash_password
from moderation.adapters.policy_files import load_policy_text
from moderation.adapters.redis_review import RedisReviewQueue
from moderation.adapters.redis_reviewers import RedisReviewerStore
from moderation.adapters.redis_sessions import RedisLoginThrottle, RedisReviewerSessions
from moderation.adapters.support.redis import connect
from moderation.compose.access import build_reviewer_auth
from moderation.core.decision import CategoryResult, Decision, Evidence, Verdict
from moderation.core.image_ref import ImageRef
from moderation.core.policy import Action, Policy
from moderation.core.review import HumanDecision, item_from_verdict
from moderation.core.reviewers import ReviewerAccount, Role
from moderation.pipeline.banks import BankService
from moderation.pipeline.review_desk import ReviewDesk
from moderation.pipeline.review_evidence import ReviewEvidence
from moderation.settings import ReviewSettings, Settings
from moderation.signals import builtin_signals
from moderation.testmodel.robustness import world_images
from moderation.web import build_review_router
from tests.servers import free_port, wait_for_port
from tests.test_review_browser import ARGS, CHROMIUM
from tests.test_review_queue import with_evidence

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium"),
]
PASSWORD = "review-pass-123"
POLICY = textwrap.dedent(
    """\
    id: known
    version: 3
    description: Known-bad images, by PDQ hash.
    categories:
      - id: banked
        description: Near copies of images in the known-bad bank.
        severity: high
        signal: hash_bank
        bank: {name: known-bad, max_distance: 31}
        thresholds: {review: 0.8, block: 0.95}
        actions:
          review: {action: human_review, reason_code: KNOWN_BAD_SUSPECTED}
          block: {action: remove, reason_code: KNOWN_BAD}
    """
)


def bank_verdict(policy: Policy) -> Verdict:
    """A REVIEW verdict of a bank match at distance 20 (what the hash-bank signal produces)."""
    category = policy.categories[0]
    score = 1 - 20 / 256
    evidence = Evidence(
        "hash_bank",
        "known-bad #3: known meme",
        score,
        {
            "bank": "known-bad",
            "max_distance": 31,
            "quality": 88,
            "pdq": "ab" * 32,
            "entry_id": 3,
            "distance": 20,
            "variant": "frame",
            "label": "known meme",
            "source": "hash-sharing programme",
            "added_at": "2025-03-04T05:06:07+00:00",
            "reference_id": "TE-77",
        },
    )
    result = CategoryResult(
        policy_id=policy.id,
        policy_version=policy.version,
        category_id=category.id,
        signal="hash_bank",
        severity=category.severity,
        score=score,
        decision=Decision.REVIEW,
        review_threshold=0.8,
        block_threshold=0.95,
        margin_review=score - 0.8,
        margin_block=score - 0.95,
        action=Action.HUMAN_REVIEW,
        reason_code="KNOWN_BAD_SUSPECTED",
        evidence=[evidence],
    )
    return Verdict(
        decision=Decision.REVIEW,
        action=Action.HUMAN_REVIEW,
        reason_code="KNOWN_BAD_SUSPECTED",
        policy_id=policy.id,
        category_id=category.id,
        severity=category.severity,
        score=score,
        categories=[result],
        scores={"known/banked": score},
        policies=[],
        model="ModTest-RN-T",
    )


@dataclass
class Site:
    url: str
    banks: BankService
    finals: list[HumanDecision] = field(default_factory=list)


@pytest.fixture
def site(redis_url: str) -> Iterator[Site]:
    settings = Settings(
        review=ReviewSettings(session_secret="s-secret", pseudonym_secret="p-secret")
    )
    client = connect(redis_url, decode=True)
    queue = RedisReviewQueue(client, lease_s=60, age_doubling_s=900)
    users = RedisReviewerStore(client)
    users.create(
        ReviewerAccount(
            username="alice",
            role=Role.REVIEWER,
            password_hash=hash_password(PASSWORD),
            disabled=False,
            created_at=time.time(),
        )
    )
    policy = load_policy_text(POLICY, signals=set(builtin_signals()))
    image = io.BytesIO()
    world_images(1, seed=0, size=256)[0].save(image, format="PNG")
    blobs = MemoryBlobStore()
    queue.submit(
        with_evidence(
            item_from_verdict(
                job_id="job-b1",
                image=ImageRef(uri="mem://job-b1"),
                verdict=bank_verdict(policy),
                policy=policy,
                content_pdq="cd" * 32,
                content_pdq_quality=88,
            ),
            image.getvalue(),
            blobs,
        )
    )
    banks = BankService(MemoryBankStore(), review_banks=["reviewer-removals"])
    state = Site(url="", banks=banks)
    app = FastAPI()
    auth = build_reviewer_auth(
        settings,
        users,
        sessions=RedisReviewerSessions(
            client,
            idle_s=settings.review.session_idle_s,
            max_s=settings.review.session_ttl_s,
            prefix=settings.review.key_prefix,
        ),
        throttle=RedisLoginThrottle(client, prefix=settings.review.key_prefix),
    )
    app.include_router(
        build_review_router(
            settings,
            ReviewDesk(
                queue,
                on_final=state.finals.append,
                evidence=ReviewEvidence(blobs, retention_s=3600),
                render_image=lambda data: safe_png(data, settings.images),
                banks=banks,
            ),
            auth,
        )
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for_port(port)
    state.url = f"http://127.0.0.1:{port}"
    try:
        yield state
    finally:
        server.should_exit = True
        thread.join(10)
        client.close()


def test_bank_match_metadata_and_remove_and_add_to_bank(site: Site, artifacts_dir: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(site.url + "/review/login")
            page.fill("#username", "alice")
            page.fill("#password", PASSWORD)
            page.click("#signin")
            expect(page.locator("#item")).to_be_visible()
            page.wait_for_function(
                "() => { const i = document.getElementById('image');"
                " return i.complete && i.naturalWidth > 0; }"
            )
            expect(page.locator("#signal")).to_have_text("(hash_bank)")
            expect(page.locator("#prompts")).to_be_hidden()  # a bank category has no prompts
            match = page.locator("#matches li").first
            expect(match).to_contain_text(
                "bank known-bad entry #3 · distance 20/256 (≤ 31) · quality 88 · "
                "label: known meme · source: hash-sharing programme · added 2025-03-04 · "
                "ref TE-77"
            )
            # The entry's own controls: confirm or disable it (named for screen readers).
            expect(
                match.get_by_role("button", name="Confirm entry #3 of bank known-bad")
            ).to_be_visible()
            expect(
                match.get_by_role("button", name="Disable entry #3 of bank known-bad")
            ).to_be_visible()
            expect(page.locator("#pdq")).to_contain_text("PDQ cdcdcdcdcdcdcdcd… quality 88")
            expect(page.locator("#bank-key")).to_be_visible()
            expect(page.locator("#bank-name")).to_have_text("reviewer-removals")
            page.screenshot(path=artifacts_dir / "review-bank-match.png")

            page.keyboard.press("b")
            expect(page.locator("#reasons")).to_be_visible()
            expect(page.locator("#status")).to_contain_text(
                "Remove and add to bank reviewer-removals"
            )
            page.keyboard.press("1")
            expect(page.locator("#status")).to_contain_text(
                "Recorded: remove (KNOWN_BAD) + added to bank reviewer-removals"
            )
            expect(page.locator("#empty")).to_be_visible()
            assert [(f.decision.value, f.reason_code) for f in site.finals] == [
                ("remove", "KNOWN_BAD")
            ]
            request = site.banks.store.addition_request(site.finals[0].review_id)
            assert request is not None and request.bank == "reviewer-removals"
            assert request.reviewer.startswith("rv_")
            assert not [e for e in errors if "Content Security Policy" in e], errors
        finally:
            browser.close()
