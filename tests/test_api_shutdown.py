"""``moderation api`` as a real process stopped by SIGTERM (what Kubernetes, systemd and ``timeout``
send): it closes its audit log before it exits, so every record still in its local spool (failed
sign-ins, reviewer actions) is in the object store afterwards. uvicorn re-raises the signal after
its own shutdown, which used to end the process before that ``finally`` ran."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import httpx
import pytest

from moderation.compose.stores import open_segment_store
from moderation.core.audit import dedupe
from moderation.pipeline.audit import iter_records, verify_store
from moderation.settings import Settings
from tests.attack_support import started_site
from tests.servers import MotoServer
from tests.test_audit_s3 import client, s3_settings

pytestmark = pytest.mark.xdist_group("api_shutdown")


def _fail_sign_in(browser: httpx.Client, n: int) -> None:
    for i in range(n):
        form = browser.get("/review/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert csrf is not None, form.text
        answer = browser.post(
            "/review/login",
            data={"username": f"mallory{i}", "password": "wrong", "csrf": csrf.group(1)},
        )
        assert answer.status_code in (200, 401), answer.text


def test_sigterm_flushes_the_audit_spool_to_s3(
    settings: Settings, redis_url: str, s3_server: MotoServer, tmp_path: Path
) -> None:
    client(s3_server).create_bucket(Bucket="audit-api", ObjectLockEnabledForBucket=True)
    # Segments are cut only by the close: nothing reaches S3 before the SIGTERM.
    on_s3 = s3_settings(
        settings,
        s3_server,
        "audit-api",
        segment_max_age_s=3600.0,
        segment_max_records=100_000,
        retry_max_s=5.0,
    )
    with started_site(on_s3, redis_url, tmp_path) as site:
        with site.browser() as browser:
            _fail_sign_in(browser, 3)  # within login_free_failures: no delay
        store = open_segment_store(site.settings)
        assert list(iter_records(store)) == []  # still in the spool
        site.proc.send_signal(signal.SIGTERM)
        assert site.proc.wait(60) == 0, site.log.read_text()[-3000:]
    records = [r for r in dedupe(r for _, r in iter_records(store)) if r.kind == "security"]
    # One record per failed sign-in, each for its own (pseudonymised) account name.
    assert [r.decision for r in records] == ["login_failed"] * 3
    assert len({r.actor for r in records}) == 3
    report = verify_store(store)
    assert report.ok, report.problems
