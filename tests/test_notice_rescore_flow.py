"""A notice against a job that ended without a verdict, on real servers (the API and a
``moderation worker`` process on PostgreSQL, valkey and S3: the appeals flow's site). The job's
URL answered 404 when it was submitted, so it ended in an error; the image is there now. A
user's report scores the job again: the worker's new verdict puts the item into review as a
user report, with the scored bytes for the reviewer, and the reviewer's decision answers the
notice. A job whose image is still missing when scored again answers its notice
``not_reviewable``. A job sent inline that ended without a verdict is refused with a code."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from moderation import testmodel
from moderation.exceptions import JobRejected
from tests.pipeline_support import png_bytes
from tests.test_appeals_flow import (  # noqa: F401 (the site fixture)
    Site,
    _login,
    _next,
    _reveal,
    _wait,
    site,
)

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("postgres")]


def test_a_report_on_a_job_without_a_verdict_scores_it_again_into_review(
    site: Site,  # noqa: F811 (the imported fixture)
) -> None:
    image = png_bytes(testmodel.sample_images("review", 1, 51)[0][0])
    there = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            if not there.is_set() or self.path == "/gone.png":
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(image)))
            self.end_headers()
            self.wfile.write(image)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://localhost:{server.server_address[1]}/photo.png"
        job_id = site.acme.submit(url)
        failed = site.acme.wait(job_id, 60)
        assert failed.verdict is None and failed.error is not None
        assert failed.error.code == "not_found"

        there.set()  # the image is back
        notice = site.acme.report(job_id, reporter="user-77", reason="restricted_logo")
        assert notice["state"] == "open"
        with httpx.Client(base_url=site.base, timeout=10) as carol:
            headers = _login(carol, "carol")
            item = _wait(lambda: _next(carol, headers, "review"), "the report never reached review")
            assert item["job_id"] == f"acme/{job_id}" and item["source"] == "user_report"
            assert item["image_problem"] is None  # the bytes scored again are kept for her
            _reveal(carol, headers, item["review_id"])
            # (an allow is final with one reviewer; a critical removal would wait for two)
            decided = carol.post(
                "/review/api/decide",
                headers=headers,
                json={
                    "review_id": item["review_id"],
                    "token": item["token"],
                    "decision": "allow",
                    "reason_code": None,
                },
            )
            assert decided.status_code == 200, decided.text
        answered = _wait(
            lambda: (n := site.acme.notice(notice["notice_id"]))["state"] == "answered" and n,
            "the notice was never answered",
        )
        assert answered["outcome"] == "allow"
        result = site.acme.get(job_id)
        assert result.verdict is not None and result.human is not None

        # Still 404 when scored again: the notice is answered not_reviewable with the code.
        gone_id = site.acme.submit(f"http://localhost:{server.server_address[1]}/gone.png")
        assert site.acme.wait(gone_id, 60).error is not None
        lost = site.acme.report(gone_id, reporter="user-79", reason="restricted_logo")
        unreviewable = _wait(
            lambda: (n := site.acme.notice(lost["notice_id"]))["state"] == "answered" and n,
            "the notice on a job failing again was never answered",
        )
        assert (unreviewable["outcome"], unreviewable["outcome_reason"]) == (
            "not_reviewable",
            "not_found",
        )
        again = site.acme.get(gone_id)
        assert again.verdict is None and again.error is not None

        # Sent inline and ended without a verdict: its bytes are gone, a coded refusal.
        inline_id = site.acme.submit(b"not an image at all")
        assert site.acme.wait(inline_id, 60).error is not None
        with pytest.raises(JobRejected) as gone:
            site.acme.report(inline_id, reporter="user-78", reason="restricted_logo")
        assert (gone.value.status, gone.value.code) == (409, "notice_source_gone")
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
