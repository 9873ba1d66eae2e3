"""Issue 17, items 7-12: the attacks on authentication and the operations endpoints, each
against a production-like start (:mod:`tests.attack_support`: ``moderation api`` as its own
process in production mode, two tenants, real valkey), everything over real sockets.

7. bodies were read before the key was checked  -> 401 from the headers, the body never read
8. a sign-in flood ran one argon2 check per      -> the attempt is reserved before the check;
   request (memory, latency of other tenants)      concurrent checks are capped
9. ten wrong passwords locked the admin out      -> locked per (account, address); per account
   from every address                              only slowed down
10. X-Forwarded-For was trusted from anyone      -> only from ``api_trusted_proxies``; the
                                                    audit log has the real address
11. the session cookie lacked ``Secure``         -> Secure in production (the check requires it)
12. /metrics, detailed /readyz, /docs public     -> on the operations port / behind a key

Different client addresses are real: Linux answers on every 127.0.0.0/8 address, so a client
bound to 127.0.0.2 is another socket peer for the server.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from moderation.adapters.support.redis import connect
from moderation.api.edge import body_limits
from moderation.settings import Settings
from tests.attack_support import KEY_A, PASSWORD, Site, started_site
from tests.pipeline_support import ROOT, raw_exchange
from tests.servers import valkey_url

pytestmark = pytest.mark.xdist_group("attacks_auth")


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with valkey_url() as url:
        yield url


@pytest.fixture(scope="module")
def site(
    test_model_settings: Settings, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    # Per account, failures only slow sign-in down: by at most 1 s here (default 5 s). The
    # first delay is long (30 s, default 1 s), so that no delay runs out within a test.
    review = test_model_settings.review.model_copy(
        update={"login_account_max_delay_s": 1.0, "login_delay_s": 30.0}
    )
    settings = test_model_settings.model_copy(update={"review": review})
    with started_site(settings, redis_url, tmp_path_factory.mktemp("auth")) as running:
        yield running


def _client(site: Site, *, source: str = "127.0.0.1", **headers: str) -> httpx.Client:
    """A browser-like client whose connections come from ``source``."""
    client = site.browser(source=source)
    client.headers.update(headers)
    return client


def _login(client: httpx.Client, username: str, password: str, **headers: str) -> httpx.Response:
    form = client.get("/review/login", headers=headers)
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf is not None, form.text
    return client.post(
        "/review/login",
        data={"username": username, "password": password, "csrf": csrf.group(1)},
        headers=headers,
    )


def _forget_failures(site: Site) -> None:
    client = connect(site.settings.redis_url or "", decode=True)
    prefix = site.settings.review.key_prefix
    for key in client.scan_iter(match=prefix + "login_*"):
        client.delete(key)
    client.close()


def _security_records(
    site: Site, event: str, where: Callable[[Any], bool], at_least: int, timeout: float = 30.0
) -> list[Any]:
    """Security records of the API's audit log that match ``where`` (segments are written
    every few seconds)."""
    from moderation.compose.stores import open_segment_store
    from moderation.pipeline.audit import iter_records

    deadline = time.monotonic() + timeout
    found: list[Any] = []
    while time.monotonic() < deadline:
        found = [
            r
            for _, r in iter_records(open_segment_store(site.settings))
            if r.kind == "security" and r.decision == event and where(r)
        ]
        if len(found) >= at_least:
            return found
        time.sleep(0.5)
    return found


def _from(*clients: str) -> Callable[[Any], bool]:
    return lambda r: r.details.get("client") in clients


# --- 7 -------------------------------------------------------------------------------------------


def _announced(size: int) -> Iterator[bytes]:
    block = b"A" * 65536
    for _ in range(size // len(block)):
        yield block


def _chunked(size: int) -> Iterator[bytes]:
    block = b"A" * 65536
    for _ in range(size // len(block)):
        yield b"%x\r\n%s\r\n" % (len(block), block)
    yield b"0\r\n\r\n"


def test_7_unauthenticated_bodies_are_refused_before_they_are_read(site: Site) -> None:
    # Under the route's limit: the body limit alone would read all of it.
    limits, _ = body_limits(site.settings)
    size = min(22 * 1024 * 1024, limits[("POST", "/v1/jobs:batch")] - 65536) // 65536 * 65536
    head = "POST /v1/jobs:batch HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
    variants = []
    for n in range(16):
        auth = f"Authorization: Bearer wrong-{n:02d}-{'x' * 40}\r\n" if n % 2 else ""
        if n % 4 < 2:
            variants.append((head + auth + f"Content-Length: {size}", _announced(size)))
        else:
            variants.append((head + auth + "Transfer-Encoding: chunked", _chunked(size)))
    before = site.peak_rss_mb()
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda v: raw_exchange(site.url, v[0], v[1], timeout=60), variants))
    after = site.peak_rss_mb()
    for status, headers, body, sent in answers:
        assert status == 401, (status, body[:300])
        assert json.loads(body)["code"] == "unauthorized"
        assert headers["www-authenticate"].startswith("Bearer")
        # The server never read the body: the client could not even hand all of it to the
        # kernel's socket buffers before the answer came.
        assert sent < size // 2, (sent, size)
    sent_mb = [round(a[3] / 1e6, 1) for a in answers]
    print(
        f"\n16 x {size / 1e6:.0f} MB with a wrong or no key: 401 after {min(sent_mb)}-"
        f"{max(sent_mb)} MB sent; API peak RSS {before:.0f} -> {after:.0f} MB"
    )
    assert after - before < 32, (before, after)
    # A good key still gets through (the check is not a wall).
    with site.client(KEY_A) as acme:
        fresh = f"t7-{time.time_ns()}"  # a new job each run (the module's site is shared)
        ok = acme.post("/v1/jobs", json={"image_url": "https://example.com/7.jpg", "id": fresh})
        assert ok.status_code == 202, ok.text


def test_7_a_refused_body_is_read_to_its_end_before_the_connection_closes(site: Site) -> None:
    """The 401 comes at once, then the server goes on reading (and dropping) the body, and
    closes only after its last byte: a client that sends all of it before it reads the answer
    (most HTTP clients) gets the answer, never a connection reset (lingering close)."""
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(site.url)
    size = 8 * 1024 * 1024
    head = (
        "POST /v1/jobs:batch HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
        f"Content-Length: {size}\r\n\r\n"
    ).encode()
    with socket.create_connection(
        (url.hostname or "127.0.0.1", url.port or 80), timeout=60
    ) as sock:
        # The whole body first, as a client that reads nothing before it has sent everything:
        # 8 MiB is far more than the socket buffers hold, so this completes only if the server
        # reads the body after its answer.
        sock.sendall(head + b"A" * size)
        received = b""
        while True:
            data = sock.recv(65536)  # a reset would raise ConnectionResetError here
            if not data:
                break  # the server's orderly close (FIN), after the answer
            received += data
    status = int(received.split(b" ", 2)[1])
    _, _, body = received.partition(b"\r\n\r\n")
    assert status == 401 and json.loads(body)["code"] == "unauthorized", received[:300]
    assert b"connection: close" in received.lower()


# --- 8 -------------------------------------------------------------------------------------------


def _metric(site: Site, name: str, labels: str) -> float:
    text = httpx.get(site.ops_url + "/metrics", timeout=30).text
    match = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} ([0-9.e+]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def _checked(site: Site) -> float:
    return _metric(site, "moderation_login_failures_total", 'reason="bad_credentials"')


def _sign_in_from(site: Site, source: str, username: str, password: str) -> httpx.Response:
    with _client(site, source=source) as client:
        return _login(client, username, password)


def test_8_concurrent_password_checks_are_capped(site: Site) -> None:
    """From 40 addresses at once (no throttle applies): at most
    ``login_max_concurrent_checks`` argon2 checks run together, the rest are refused unchecked,
    and the API's memory grows by at most that many argon2 blocks. (Runs before any other
    sign-in of the module, so the peak RSS before it is the API's own.)"""
    _forget_failures(site)
    cap = site.settings.review.login_max_concurrent_checks
    before_checked = _checked(site)
    before = site.peak_rss_mb()
    sources = [f"127.0.0.{10 + n}" for n in range(40)]
    with ThreadPoolExecutor(40) as pool:
        answers = list(pool.map(lambda s: _sign_in_from(site, s, f"ghost-{s}", "guess"), sources))
    after = site.peak_rss_mb()
    statuses = [a.status_code for a in answers]
    assert set(statuses) <= {401, 429}, statuses
    busy = [a for a in answers if a.status_code == 429]
    assert all("too many sign-ins at once" in a.text for a in busy)
    assert _checked(site) - before_checked == statuses.count(401)
    argon2_mib = 64  # argon2-cffi's default memory cost per check
    print(
        f"\n40 sign-ins from 40 addresses: {statuses.count(401)} checked, {len(busy)} refused "
        f"busy; API peak RSS {before:.0f} -> {after:.0f} MB (cap {cap})"
    )
    assert after - before < (cap + 2) * argon2_mib, (before, after)
    _forget_failures(site)


def test_8_a_sign_in_flood_from_one_address_costs_a_few_password_checks(site: Site) -> None:
    _forget_failures(site)
    before = _checked(site)
    with ThreadPoolExecutor(40) as pool:
        answers = list(
            pool.map(lambda n: _sign_in_from(site, "127.0.0.4", f"nobody{n}", "guess"), range(40))
        )
    statuses = [a.status_code for a in answers]
    checked = _checked(site) - before
    free = site.settings.review.login_free_failures
    # Every attempt was reserved before its check: only free + 1 got as far as argon2.
    assert statuses.count(401) == checked <= free + 1, statuses
    assert statuses.count(429) == 40 - statuses.count(401)
    assert all(int(a.headers["retry-after"]) >= 1 for a in answers if a.status_code == 429)
    _forget_failures(site)


# --- 9 -------------------------------------------------------------------------------------------


def _forget_blocks(site: Site, *keys: str) -> None:
    """What waiting out the current delays does (the failure counts stay)."""
    client = connect(site.settings.redis_url or "", decode=True)
    prefix = site.settings.review.key_prefix
    client.delete(*(f"{prefix}login_block:{k}" for k in keys))
    client.close()


def test_9_wrong_passwords_from_one_address_do_not_lock_the_admin_out_elsewhere(
    site: Site,
) -> None:
    _forget_failures(site)
    attacker_ip, admin_ip = "127.0.0.5", "127.0.0.6"
    lockout = site.settings.review.login_lockout_after
    with _client(site, source=attacker_ip) as attacker:
        for n in range(lockout):  # paced: each attempt after the wait it was told
            _forget_blocks(
                site, "account:root", f"pair:root@{attacker_ip}", f"address:{attacker_ip}"
            )
            assert _login(attacker, "root", f"guess-{n:02d}").status_code == 401
        locked = _login(attacker, "root", PASSWORD)
    assert locked.status_code == 429  # that address is locked out of root, right password too
    assert int(locked.headers["retry-after"]) > 60
    with _client(site, source=admin_ip) as admin:
        answer = _login(admin, "root", PASSWORD)
        if answer.status_code == 429:  # the account as a whole is only slowed down
            wait = int(answer.headers["retry-after"])
            assert wait <= site.settings.review.login_account_max_delay_s + 1, wait
            time.sleep(wait)
            answer = _login(admin, "root", PASSWORD)
        assert answer.status_code == 303, answer.text
        assert admin.cookies.get("mr_session")
    locks = _security_records(site, "login_locked", _from(attacker_ip, admin_ip), 1)
    assert {r.details["scope"] for r in locks} == {"pair"}
    assert {r.details["client"] for r in locks} == {attacker_ip}
    _forget_failures(site)


# --- 10 ------------------------------------------------------------------------------------------


def test_10_x_forwarded_for_is_ignored_without_trusted_proxies(site: Site) -> None:
    _forget_failures(site)
    statuses = []
    with _client(site) as attacker:
        for n in range(8):
            # A different unknown account each time: only the address can throttle this.
            forged = {"X-Forwarded-For": f"203.0.113.{n + 1}"}
            statuses.append(_login(attacker, f"ghost{n}", "guess", **forged).status_code)
    free = site.settings.review.login_free_failures
    assert statuses[:free] == [401] * free and 429 in statuses, statuses
    forged = [f"203.0.113.{n + 1}" for n in range(8)]
    failed = _security_records(site, "login_failed", _from("127.0.0.1", *forged), free)
    assert {r.details["client"] for r in failed} == {"127.0.0.1"}
    _forget_failures(site)


def test_10_a_trusted_proxy_names_the_client_and_nobody_else_can(
    test_model_settings: Settings, tmp_path: Path
) -> None:
    behind = test_model_settings.model_copy(update={"api_trusted_proxies": ["127.0.0.7/32"]})
    with valkey_url() as own_redis, started_site(behind, own_redis, tmp_path) as proxied:
        _forget_failures(proxied)
        # Through the proxy (127.0.0.7): the client is the right-most address it did not add.
        with _client(proxied, source="127.0.0.7") as proxy:
            chain = {"X-Forwarded-For": "10.9.9.9, 198.51.100.7"}
            assert _login(proxy, "ghost-a", "guess", **chain).status_code == 401
        # Not through the proxy (127.0.0.1 is not trusted here): the header is ignored.
        with _client(proxied) as direct:
            forged = {"X-Forwarded-For": "198.51.100.99"}
            assert _login(direct, "ghost-b", "guess", **forged).status_code == 401
        failed = _security_records(proxied, "login_failed", lambda r: True, 2)
        clients = {r.details["client"] for r in failed}
        assert clients == {"198.51.100.7", "127.0.0.1"}, clients
        _forget_failures(proxied)


# --- 11 ------------------------------------------------------------------------------------------


def test_11_session_cookies_are_secure_in_production_and_the_check_requires_it(
    site: Site, tmp_path: Path
) -> None:
    _forget_failures(site)
    with _client(site, source="127.0.0.8") as alice:
        form = alice.get("/review/login")
        assert "secure" in form.headers["set-cookie"].lower()
        signed_in = _login(alice, "alice", PASSWORD)
        assert signed_in.status_code == 303, signed_in.text
        cookie = next(
            c for c in signed_in.headers.get_list("set-cookie") if c.startswith("mr_session=")
        )
        flags = {part.strip().lower() for part in cookie.split(";")[1:]}
        assert {"secure", "httponly", "samesite=strict"} <= flags, cookie
    env = {
        **site.settings.to_env(),
        "PYTHONPATH": str(ROOT),
        "MODERATION_REVIEW__COOKIE_SECURE": "false",
    }
    refused = subprocess.run(
        [sys.executable, "-m", "moderation.cli", "api", "--port", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "review.cookie_secure is false" in " ".join(refused.stderr.split())


# --- 12 ------------------------------------------------------------------------------------------


def test_12_operations_endpoints_are_not_public(site: Site) -> None:
    tenants = ("acme", "globex")
    with httpx.Client(base_url=site.url, timeout=30) as anonymous:
        assert anonymous.get("/metrics").status_code == 404
        ready = anonymous.get("/readyz")
        assert ready.status_code == 200 and ready.json() == {"status": "ready"}
        assert anonymous.get("/healthz").json() == {"status": "ok"}
        assert anonymous.get("/docs").status_code == 404
        assert anonymous.get("/redoc").status_code == 404
        spec = anonymous.get("/openapi.json")
        assert spec.status_code == 401 and spec.json()["code"] == "unauthorized"
        for answer in (ready, spec):
            assert not any(t in answer.text for t in tenants), answer.text
    with site.client(KEY_A) as acme:
        assert acme.get("/openapi.json").json()["info"]["title"] == "Moderation API"
    # The operations port (what the cluster's probes and Prometheus reach) has the details.
    with httpx.Client(base_url=site.ops_url, timeout=30) as cluster:
        detailed = cluster.get("/readyz").json()
        assert detailed["status"] == "ready" and detailed["redis"] is True
        assert "workers" in detailed
        text = cluster.get("/metrics").text
        assert "moderation_http_requests_total" in text
        assert cluster.get("/healthz").json() == {"status": "ok"}
        assert cluster.get("/openapi.json").status_code == 404  # nothing else lives there
