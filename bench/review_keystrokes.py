"""Keystroke budget of the review page: a scripted reviewer (Playwright, Debian's chromium)
decides ``--items`` items and counts the keys it pressed and the wall time of each decision.
Prints one JSON object.

    python bench/review_keystrokes.py [--items 100] [--before main] [--only-after]

"Before and after" in one run: the same reviewer works the page of the code at ``--before`` (a
git revision, exported with ``git archive`` into a temporary folder) and of this checkout, each
served by its own process (``PYTHONPATH`` points at the tree; the report names the file each
process imported ``moderation`` from, so a run proves which code it measured). Both sites are
the production router over the in-memory twins (queue, accounts, sessions, evidence): what is
measured is the page and its API, not a database.

The reviewer: the items are a fixed mix (seeded) of the test world's ``restricted_logo``
(medium) and ``contraband_symbol`` (critical) categories. It allows every third medium item
(``a``), removes the others with a reason by type-ahead (``r``, ``l``, ``o``, ``Enter``: the
reason picker filters on "lo"); a critical item is looked at first (hold ``space``: one
keystroke) and allowed (``a``; a critical removal would wait for a second reviewer). A
decision's wall time runs from the moment the item's image has loaded to the moment the next
item's image has (or the page says the queue is empty): the reviewer's whole cycle, as the page
makes them wait for it. ``keystrokes_per_decision`` is what the page asks of a reviewer.

Run it under the suite lock on a shared machine: ``flock /work/notes/suite.lock python
bench/review_keystrokes.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
PASSWORD = "bench-review-password"
MEDIUM, CRITICAL = "restricted_logo", "contraband_symbol"


def _kinds(n: int) -> list[str]:
    """The fixed mix: one critical item in five."""
    return [CRITICAL if i % 5 == 4 else MEDIUM for i in range(n)]


# --- the site (run in a child process, on the tree named by PYTHONPATH) ------------------------


def serve(items: int, port: int) -> None:
    """Serve the review pages of the tree on PYTHONPATH over in-memory twins, ``items``
    waiting; print one line "READY <moderation file>" once it listens."""
    import hashlib
    import io
    import threading

    import uvicorn
    from fastapi import FastAPI
    from starlette.exceptions import HTTPException

    import moderation
    from moderation.adapters.images import safe_png
    from moderation.adapters.memory import (
        MemoryAuditSink,
        MemoryBlobStore,
        MemoryLoginThrottle,
        MemoryReviewerSessions,
        MemoryReviewerStore,
        MemoryReviewQueue,
    )
    from moderation.adapters.passwords import hash_password
    from moderation.compose.access import build_reviewer_auth
    from moderation.core.evidence import evidence_key
    from moderation.core.image_ref import ImageRef
    from moderation.core.review import item_from_verdict
    from moderation.core.reviewers import ReviewerAccount, Role
    from moderation.http.problems import handle_http_error
    from moderation.pipeline.review_desk import ReviewDesk
    from moderation.pipeline.review_evidence import ReviewEvidence
    from moderation.settings import ReviewSettings, Settings
    from moderation.testmodel import sample_images
    from moderation.web import build_review_router

    # The tests' verdict builder (moderation is imported already: from the tree under test).
    sys.path.insert(0, str(ROOT))
    from tests.test_review_queue import make_verdict, world_policy

    review = ReviewSettings(
        lease_s=300,
        session_secret="bench-session-secret-0123456789abcdef",
        pseudonym_secret="bench-pseudonym-secret-0123456789abcdef",
        undo_window_s=0.0,
    )
    settings = Settings(environment="development", review=review)
    queue = MemoryReviewQueue(lease_s=review.lease_s, age_doubling_s=review.age_doubling_s)
    blobs = MemoryBlobStore()
    policy = world_policy()

    now = time.time()
    for i, ((image, _label), kind) in enumerate(
        zip(sample_images("review", items, 11), _kinds(items), strict=True)
    ):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data = buffer.getvalue()
        job_id = f"bench-{i:03d}"
        item = item_from_verdict(
            job_id=job_id,
            image=ImageRef(uri=f"s3://bench/{job_id}.png"),
            verdict=make_verdict(policy, kind, 0.5),
            policy=policy,
            created_at=now - 10_000 + i,
        )
        digest = hashlib.sha256(data).hexdigest()
        key = evidence_key("default", item.review_id, digest)
        blobs.put(key, data)
        queue.submit(item.model_copy(update={"content_sha256": digest, "evidence_key": key}))
    users = MemoryReviewerStore()
    users.create(
        ReviewerAccount(
            username="bench",
            role=Role.REVIEWER,
            password_hash=hash_password(PASSWORD),
            disabled=False,
            created_at=now,
        )
    )
    auth = build_reviewer_auth(
        settings,
        users,
        sessions=MemoryReviewerSessions(),
        throttle=MemoryLoginThrottle(),
        audit=MemoryAuditSink(),
    )
    desk = ReviewDesk(
        queue,
        on_final=lambda final: None,
        evidence=ReviewEvidence(blobs, retention_s=3600),
        render_image=lambda data: safe_png(data, settings.images),
    )
    app = FastAPI()
    app.add_exception_handler(HTTPException, handle_http_error)
    app.include_router(build_review_router(settings, desk, auth))
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    print("READY", moderation.__file__, flush=True)
    thread.join()


# --- the scripted reviewer ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


_IMAGE_READY = (
    "(prev) => { const i = document.getElementById('image');"
    " const empty = document.getElementById('empty');"
    " if (empty && !empty.hidden) return true;"
    " return !document.getElementById('item').hidden && i.complete && i.naturalWidth > 0"
    " && i.getAttribute('src') && i.getAttribute('src') !== prev; }"
)


def review(url: str, items: int) -> dict[str, Any]:
    """Sign in and decide every item by keyboard; the keys pressed and the time per decision."""
    from playwright.sync_api import sync_playwright

    per: list[dict[str, Any]] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--headless=new"]
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 720})
            page.goto(url + "/review/login")
            page.fill("#username", "bench")
            page.fill("#password", PASSWORD)
            page.click("#signin")
            page.wait_for_function(_IMAGE_READY, arg="")
            for n in range(items):
                src = str(page.locator("#image").get_attribute("src"))
                category = page.locator("#category").inner_text()
                started = time.perf_counter()
                keys: list[str] = []
                if CRITICAL in category:
                    page.keyboard.down(" ")
                    page.keyboard.up(" ")
                    keys.append("space")
                    page.wait_for_function("() => document.getElementById('reveal-needed').hidden")
                    keys.append("a")
                    page.keyboard.press("a")
                    kind = "critical_allow"
                elif n % 3 == 0:
                    keys.append("a")
                    page.keyboard.press("a")
                    kind = "allow"
                else:
                    page.keyboard.press("r")
                    page.wait_for_selector("#reasons", state="visible")
                    for key in ("l", "o", "Enter"):
                        page.keyboard.press(key)
                    keys += ["r", "l", "o", "Enter"]
                    kind = "remove"
                page.wait_for_function(_IMAGE_READY, arg=src, timeout=30_000)
                status = page.locator("#status").inner_text()
                if not status.startswith("Recorded"):
                    raise SystemExit(f"item {n}: the page said {status!r}")
                per.append(
                    {
                        "kind": kind,
                        "keys": len(keys),
                        "wall_s": time.perf_counter() - started,
                    }
                )
        finally:
            browser.close()
    walls = [d["wall_s"] for d in per]
    kinds = sorted({d["kind"] for d in per})
    return {
        "decisions": len(per),
        "keystrokes": sum(d["keys"] for d in per),
        "keystrokes_per_decision": round(sum(d["keys"] for d in per) / len(per), 3),
        "wall_s_per_decision": {
            "mean": round(sum(walls) / len(walls), 4),
            "p50": round(_percentile(walls, 50), 4),
            "p95": round(_percentile(walls, 95), 4),
            "max": round(max(walls), 4),
        },
        "by_kind": {
            k: {
                "decisions": sum(d["kind"] == k for d in per),
                "keys_each": next(d["keys"] for d in per if d["kind"] == k),
                "wall_s_mean": round(
                    sum(d["wall_s"] for d in per if d["kind"] == k)
                    / sum(d["kind"] == k for d in per),
                    4,
                ),
            }
            for k in kinds
        },
    }


def _run_tree(label: str, tree: Path, items: int) -> dict[str, Any]:
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--serve",
            str(port),
            "--items",
            str(items),
        ],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line.startswith("READY"):
            raise SystemExit(f"{label}: the site did not start ({line!r})")
        imported = line.split(" ", 1)[1]
        if not Path(imported).resolve().is_relative_to(tree.resolve()):
            raise SystemExit(f"{label}: imported {imported}, not the tree {tree}")
        result = review(f"http://127.0.0.1:{port}", items)
        return {"tree": str(tree), "moderation": imported, **result}
    finally:
        proc.terminate()
        proc.wait(10)


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=100)
    parser.add_argument("--before", default="main", help="git revision of the 'before' page")
    parser.add_argument("--only-after", action="store_true", help="measure this checkout only")
    parser.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.items, args.serve)
        return
    if not CHROMIUM.exists():
        raise SystemExit("needs Debian's chromium at /usr/bin/chromium")
    report: dict[str, Any] = {
        "benchmark": "review_keystrokes",
        "items": args.items,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_1m": os.getloadavg()[0],
            "python": platform.python_version(),
        },
        "runs": {},
    }
    scratch = Path(tempfile.mkdtemp(prefix="review-keys-"))
    try:
        if not args.only_after:
            rev = _git("rev-parse", args.before)
            archive = subprocess.run(
                ["git", "archive", rev, "moderation"], cwd=ROOT, check=True, capture_output=True
            ).stdout
            subprocess.run(["tar", "-x", "-C", str(scratch)], input=archive, check=True)
            report["runs"]["before"] = {
                "revision": rev,
                **_run_tree("before", scratch, args.items),
            }
        after = {
            "revision": _git("rev-parse", "HEAD"),
            "dirty": bool(_git("status", "--porcelain", "--", "moderation")),
        }
        report["runs"]["after"] = {**after, **_run_tree("after", ROOT, args.items)}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
