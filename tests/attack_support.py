"""A production-like start for the attack tests: ``moderation api`` as its own process in
production mode (two tenants with their own API keys, strong secrets) over a real valkey server.

Each attack test module builds its own ``site`` fixture with :func:`started_site`, so modules stay
independent (and can run on different xdist workers).
"""

from __future__ import annotations

import base64
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from pydantic import SecretStr

from moderation.adapters.passwords import hash_password
from moderation.adapters.redis_jobs import RedisJobStore
from moderation.adapters.redis_reviewers import RedisReviewerStore
from moderation.adapters.support.redis import connect
from moderation.core.reviewers import ReviewerAccount, Role
from moderation.settings import ApiKey, Settings
from tests.pipeline_support import ROOT, png_bytes

KEY_A = "acme-" + "a" * 40
KEY_B = "globex-" + "b" * 40
PASSWORD = "correct horse battery"


@dataclass
class Site:
    url: str
    settings: Settings
    store: RedisJobStore
    proc: subprocess.Popen[bytes]
    log: Path
    #: The operations port (``/metrics``, detailed ``/readyz``): what only the cluster reaches.
    ops_url: str = ""

    def client(self, key: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def browser(self, *, source: str = "127.0.0.1") -> httpx.Client:
        """A client for the reviewer pages (:func:`browser`)."""
        return browser(self.url, source=source)

    def peak_rss_mb(self) -> float:
        """The API process's peak resident memory so far (VmHWM)."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        match = re.search(r"VmHWM:\s+(\d+) kB", status)
        assert match is not None
        return int(match.group(1)) / 1024


def browser(base_url: str, *, source: str = "127.0.0.1") -> httpx.Client:
    """A client that sends ``Secure`` cookies to loopback addresses, as browsers do (they treat
    http://127.0.0.1 as a secure context; Python's cookie jar does not): the production-mode
    reviewer cookies are ``Secure`` and the test site speaks plain HTTP. Its connections come
    from ``source`` (any 127.0.0.0/8 address: another socket peer for the server)."""
    client = httpx.Client(
        base_url=base_url, timeout=60, transport=httpx.HTTPTransport(local_address=source)
    )

    def loopback_is_secure(response: httpx.Response) -> None:
        if (response.url.host or "").startswith("127."):
            for cookie in client.cookies.jar:
                cookie.secure = False

    client.event_hooks["response"].append(loopback_is_secure)
    return client


def production(settings: Settings, redis_url: str) -> Settings:
    """Production mode: two tenants with their own keys, strong non-default secrets."""
    return settings.model_copy(
        update={
            "environment": "production",
            "redis_url": redis_url,
            "api_keys": [
                ApiKey(tenant="acme", key=SecretStr(KEY_A)),
                ApiKey(tenant="globex", key=SecretStr(KEY_B)),
            ],
            "queue": settings.queue.model_copy(
                update={
                    "callback_secret": SecretStr("c" * 48),
                    "visibility_timeout_s": 8,
                    "batch_size": 4,
                    "batch_wait_ms": 20,
                    "concurrency": 4,
                }
            ),
            "review": settings.review.model_copy(
                update={
                    "session_secret": SecretStr("s" * 48),
                    "pseudonym_secret": SecretStr("p" * 48),
                }
            ),
        }
    )


def start_api_process(
    settings: Settings, log: Path, **env: str
) -> tuple[subprocess.Popen[bytes], str]:
    """``moderation api --port 0`` as its own process; returns it and its base URL."""
    full = {**settings.to_env(), "PYTHONPATH": str(ROOT), **env}
    out = log.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moderation.cli", "api", "--port", "0"],
        cwd=ROOT,
        env=full,
        stdout=subprocess.PIPE,
        stderr=out,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
    if match is None:
        proc.kill()
        raise AssertionError(f"the API did not start: {line!r}\n{log.read_text()[-3000:]}")
    url = f"http://127.0.0.1:{match.group(1)}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"the API never answered:\n{log.read_text()[-3000:]}")


def ops_url_of(proc: subprocess.Popen[bytes]) -> str:
    """The operations port's URL, as ``moderation api`` prints it after the API's."""
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    match = re.search(r"serving operations on (http://127\.0\.0\.1:\d+)", line)
    assert match is not None, line
    return match.group(1)


@contextmanager
def started_site(settings: Settings, redis_url: str, root: Path) -> Iterator[Site]:
    """The API in production mode on ``redis_url``, with reviewers alice and root (an admin)."""
    settings = production(
        settings.model_copy(
            update={
                "cache_dir": root / "cache",
                "audit": settings.audit.model_copy(
                    update={"local_dir": root / "audit", "spool_dir": root / "spool"}
                ),
            }
        ),
        redis_url,
    )
    users = RedisReviewerStore(connect(redis_url, decode=True), prefix=settings.review.key_prefix)
    for name, role in (("alice", Role.REVIEWER), ("root", Role.ADMIN)):
        users.create(
            ReviewerAccount(
                username=name,
                role=role,
                password_hash=hash_password(PASSWORD),
                disabled=False,
                created_at=time.time(),
            )
        )
    proc, url = start_api_process(settings, root / "api.log")
    try:
        yield Site(
            url,
            settings,
            RedisJobStore.from_url(redis_url, settings.queue),
            proc,
            root / "api.log",
            ops_url=ops_url_of(proc),
        )
    finally:
        proc.terminate()
        proc.wait(20)


def image_b64(seed: int = 1) -> str:
    from moderation.testmodel import sample_images

    return base64.b64encode(png_bytes(sample_images("allow", 1, seed)[0][0])).decode()
