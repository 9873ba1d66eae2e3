"""Image fetching against real servers: a threaded local HTTP(S) server and moto's S3 server.

The local server listens on 127.0.0.1, so every successful HTTP fetch needs the allowlist; each
refusal test uses the same server *without* it and proves the guard stops the request before
anything reaches the server.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import httpx
import pytest
from botocore.exceptions import ClientError
from PIL import Image

from moderation.adapters import s3_source as fetch_mod
from moderation.adapters.http_source import HttpSource
from moderation.adapters.s3_source import S3Source, parse_s3_ref
from moderation.adapters.support.ssrf import Allowlist, blocked_reason, check_url, guarded_client
from moderation.core.image_ref import ImageRef
from moderation.core.payload import MediaFile
from moderation.exceptions import (
    ImageFetchError,
    ImageFetchTooLarge,
    ImageFetchTransient,
    ModerationError,
    SourceNotAllowed,
    UrlRefusedError,
)
from moderation.pipeline.sources import ImageSources, release
from moderation.settings import (
    ImageLimits,
    QueueSettings,
    S3Settings,
    Settings,
    TenantS3Source,
    TenantSettings,
    VideoSettings,
)
from tests.servers import MotoServer

MAX_BYTES = 200_000


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


PNG = _png_bytes()


@dataclass
class Recorder:
    paths: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Any

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if "Content-Length" not in (headers or {}) and "Transfer-Encoding" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def do_GET(self) -> None:
        rec: Recorder = self.server.recorder
        with rec.lock:
            rec.paths.append(self.path)
            rec.hosts.append(self.headers.get("Host", ""))
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        path = parts.path
        if path == "/img.png":
            self._send(200, PNG, {"Content-Type": "image/png"})
        elif path == "/redirect":
            self._send(int(query.get("code", ["302"])[0]), headers={"Location": query["to"][0]})
        elif path.startswith("/chain/"):
            n = int(path.rsplit("/", 1)[1])
            self._send(302, headers={"Location": f"/chain/{n - 1}" if n > 0 else "/img.png"})
        elif path.startswith("/status/"):
            self._send(int(path.rsplit("/", 1)[1]), b"nope")
        elif path == "/slow":
            time.sleep(3)
            self._send(200, PNG)
        elif path == "/trickle":
            self.send_response(200)
            self.send_header("Content-Length", str(100_000))
            self.end_headers()
            for _ in range(100):
                self.wfile.write(b"x" * 10)
                self.wfile.flush()
                time.sleep(0.05)
        elif path == "/stream":  # a large download (a video): N bytes, declared
            n = int(query["n"][0])
            self._send(200, bytes(range(256)) * (n // 256), {"Content-Type": "video/mp4"})
        elif path == "/big-declared":
            self.send_response(200)
            self.send_header("Content-Length", str(MAX_BYTES * 50))
            self.end_headers()
            with contextlib.suppress(OSError):
                self.wfile.write(b"\0" * 65536)
        elif path == "/big-undeclared":
            # No Content-Length: the body ends when the connection closes.
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            with contextlib.suppress(OSError):
                for _ in range(100):
                    self.wfile.write(b"\0" * 65536)
        else:
            self._send(404, b"missing")


@dataclass
class LocalServer:
    port: int
    recorder: Recorder
    scheme: str = "http"
    host: str = "127.0.0.1"

    def url(self, path: str, host: str | None = None) -> str:
        return f"{self.scheme}://{host or self.host}:{self.port}{path}"


class _Quiet(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients hanging up on purpose (size caps, timeouts) are expected here


def _serve(ssl_context: ssl.SSLContext | None = None) -> tuple[ThreadingHTTPServer, LocalServer]:
    httpd = _Quiet(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.recorder = Recorder()  # type: ignore[attr-defined]
    if ssl_context is not None:
        httpd.socket = ssl_context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    info = LocalServer(
        port=httpd.server_address[1],
        recorder=httpd.recorder,  # type: ignore[attr-defined]
        scheme="https" if ssl_context else "http",
    )
    return httpd, info


@pytest.fixture(scope="module")
def server() -> Iterator[LocalServer]:
    httpd, info = _serve()
    try:
        yield info
    finally:
        httpd.shutdown()
        httpd.server_close()


def make_settings(*allow: str, timeout: float = 1.0, **images: Any) -> Settings:
    return Settings(
        queue=QueueSettings(allow_private_hosts=list(allow), http_timeout_s=timeout),
        images=ImageLimits(max_bytes=MAX_BYTES, connect_timeout_s=1.0, **images),
    )


class ImageFetcher:
    """The http(s) and s3 sources behind the scheme registry, as the worker uses them."""

    def __init__(self, settings: Settings) -> None:
        self.http = HttpSource(settings)
        self.sources = ImageSources([self.http, S3Source(settings)])

    def fetch(self, ref: str, *, tenant: str = "t1") -> bytes:
        return self.sources.fetch(ImageRef(uri=ref), tenant=tenant)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> ImageFetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture
def allowed() -> Iterator[ImageFetcher]:
    with ImageFetcher(make_settings("127.0.0.1/32")) as fetcher:
        yield fetcher


@pytest.fixture
def guarded() -> Iterator[ImageFetcher]:
    with ImageFetcher(make_settings()) as fetcher:
        yield fetcher


def _refused(fetcher: ImageFetcher, url: str, server: LocalServer | None = None) -> str:
    before = len(server.recorder.paths) if server else 0
    with pytest.raises(UrlRefusedError) as info:
        fetcher.fetch(url)
    assert info.value.code == "url_refused"
    assert not info.value.transient
    if server is not None:
        assert len(server.recorder.paths) == before, "the refused request reached the server"
    return str(info.value)


# --- plain fetches --------------------------------------------------------------------------


def test_fetch_image_with_allowlist(allowed: ImageFetcher, server: LocalServer) -> None:
    assert allowed.fetch(server.url("/img.png")) == PNG


def test_same_local_url_refused_without_allowlist(
    guarded: ImageFetcher, server: LocalServer
) -> None:
    message = _refused(guarded, server.url("/img.png"), server)
    assert "loopback" in message and "ALLOW_PRIVATE_HOSTS" in message


def test_redirect_chain_followed_and_limited(allowed: ImageFetcher, server: LocalServer) -> None:
    assert allowed.fetch(server.url("/chain/4")) == PNG  # 5 redirects: the limit
    with pytest.raises(ImageFetchError) as info:
        allowed.fetch(server.url("/chain/5"))
    assert info.value.code == "too_many_redirects" and not info.value.transient


@pytest.mark.parametrize(
    ("status", "code"),
    [(404, "not_found"), (410, "not_found"), (403, "forbidden"), (400, "http_4xx")],
)
def test_client_errors_are_permanent(
    allowed: ImageFetcher, server: LocalServer, status: int, code: str
) -> None:
    with pytest.raises(ImageFetchError) as info:
        allowed.fetch(server.url(f"/status/{status}"))
    assert info.value.code == code
    assert not info.value.transient and f"HTTP {status}" in str(info.value)


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_server_errors_are_transient(
    allowed: ImageFetcher, server: LocalServer, status: int
) -> None:
    with pytest.raises(ImageFetchTransient) as info:
        allowed.fetch(server.url(f"/status/{status}"))
    assert info.value.transient and f"HTTP {status}" in str(info.value)


def test_slow_response_times_out_transient(server: LocalServer) -> None:
    with ImageFetcher(make_settings("127.0.0.1/32", timeout=0.3)) as fetcher:
        started = time.monotonic()
        with pytest.raises(ImageFetchTransient) as info:
            fetcher.fetch(server.url("/slow"))
    assert info.value.code == "fetch_timeout"
    assert time.monotonic() - started < 2.5  # gave up well before the server answered


def test_trickling_body_hits_the_overall_deadline(server: LocalServer) -> None:
    settings = make_settings("127.0.0.1/32", timeout=1.0, fetch_deadline_s=0.5)
    with ImageFetcher(settings) as fetcher, pytest.raises(ImageFetchTransient) as info:
        fetcher.fetch(server.url("/trickle"))
    assert "longer than" in str(info.value)


def test_connection_refused_is_transient() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    fetcher = ImageFetcher(make_settings("127.0.0.1/32"))
    with fetcher, pytest.raises(ImageFetchTransient):
        fetcher.fetch(f"http://127.0.0.1:{port}/img.png")


@pytest.mark.parametrize("path", ["/big-declared", "/big-undeclared"])
def test_oversized_bodies_are_refused(
    allowed: ImageFetcher, server: LocalServer, path: str
) -> None:
    with pytest.raises(ImageFetchTooLarge) as info:
        allowed.fetch(server.url(path))
    assert isinstance(info.value, ImageFetchError) and not info.value.transient
    assert str(MAX_BYTES) in str(info.value)
    if path == "/big-declared":
        assert "Content-Length" in str(info.value)


def _streaming(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, max_bytes: int) -> ImageFetcher:
    """A fetcher whose downloads above 64 KiB go to files in ``tmp_path``."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    settings = make_settings("127.0.0.1/32").model_copy(
        update={
            "images": ImageLimits(max_bytes=max_bytes, connect_timeout_s=1.0),
            "video": VideoSettings(stream_above_bytes=64 * 1024),
        }
    )
    return ImageFetcher(settings)


def test_a_large_download_streams_into_a_temporary_file(
    server: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hashlib

    n = 1024 * 1024
    with _streaming(tmp_path, monkeypatch, max_bytes=2 * n) as fetcher:
        media = fetcher.sources.fetch_media(ImageRef(uri=server.url(f"/stream?n={n}")), tenant="t1")
        assert isinstance(media, MediaFile) and media.owned
        data = bytes(range(256)) * (n // 256)
        assert media.size == n and media.path.parent == tmp_path
        assert media.sha256 == hashlib.sha256(data).hexdigest()
        assert media.path.read_bytes() == data
        release([media])
        assert list(tmp_path.iterdir()) == []
        # Small downloads (photos) stay in memory, as before.
        small = fetcher.sources.fetch_media(ImageRef(uri=server.url("/img.png")), tenant="t1")
        assert small == PNG


def test_a_streamed_download_over_the_cap_leaves_no_file(
    server: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _streaming(tmp_path, monkeypatch, max_bytes=300_000) as fetcher:
        for path in ("/big-undeclared", "/stream?n=1048576"):
            with pytest.raises(ImageFetchTooLarge):
                fetcher.sources.fetch_media(ImageRef(uri=server.url(path)), tenant="t1")
        assert list(tmp_path.iterdir()) == []


def test_the_sweep_removes_only_stale_spooled_downloads(tmp_path: Path) -> None:
    import os

    from moderation.adapters.support.spool import PREFIX, sweep_stale

    old, young, other = (tmp_path / f"{PREFIX}old", tmp_path / f"{PREFIX}young", tmp_path / "x")
    for path in (old, young, other):
        path.write_bytes(b"v")
    os.utime(old, (1_000_000, 1_000_000))
    os.utime(other, (1_000_000, 1_000_000))
    assert sweep_stale(3600.0, tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([young.name, other.name])


def test_streamed_downloads_keep_the_ssrf_guard(guarded: ImageFetcher, server: LocalServer) -> None:
    before = len(server.recorder.paths)
    with pytest.raises(UrlRefusedError):
        guarded.sources.fetch_media(ImageRef(uri=server.url("/stream?n=1048576")), tenant="t1")
    assert len(server.recorder.paths) == before


# --- schemes and SSRF -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "ref",
    [
        "file:///etc/passwd",
        "ftp://example.com/a.jpg",
        "gopher://example.com/",
        "data:image/png;base64,iVBORw0KGgo=",
        "/etc/passwd",
        "images/cat.jpg",
        "javascript:alert(1)",
        "",
    ],
)
def test_other_schemes_refused(guarded: ImageFetcher, ref: str) -> None:
    with pytest.raises(UrlRefusedError) as info:
        guarded.fetch(ref)
    assert info.value.code == "bad_scheme" and not info.value.transient
    assert "http://, https://, s3://" in str(info.value)


@pytest.mark.parametrize(
    ("host", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("localhost", "loopback"),
        ("[::1]", "loopback"),
        ("169.254.169.254", "metadata"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "carrier-grade"),
        ("0.0.0.0", "unspecified"),
        ("[::]", "unspecified"),
        ("[fe80::1]", "link-local"),
        ("[fd00::1]", "unique-local"),
        ("[::ffff:127.0.0.1]", "embedding a loopback"),
        ("[::ffff:169.254.169.254]", "metadata"),
        ("224.0.0.1", "multicast"),
        ("2130706433", "non-canonical"),  # decimal 127.0.0.1
        ("0177.0.0.1", "non-canonical"),  # octal
        ("0x7f.0.0.1", "non-canonical"),  # hex
        ("0x7f000001", "non-canonical"),
        ("127.1", "non-canonical"),
        ("017700000001", "non-canonical"),
    ],
)
def test_internal_hosts_refused(
    guarded: ImageFetcher, server: LocalServer, host: str, why: str
) -> None:
    message = _refused(guarded, f"http://{host}:{server.port}/img.png", server)
    assert why in message


@pytest.mark.parametrize(
    "host",
    ["0177.0.0.1", "127.1", "0x7f.1", "2130706433", "017700000001", "127.0.1", "10.1", "192.168.1"],
)
def test_a_refused_ipv4_spelling_names_the_address_the_resolver_would_use(host: str) -> None:
    """The message names what ``socket.inet_aton`` makes of the spelling (``127.1`` is
    127.0.0.1, not 0.127.0.1)."""
    import ipaddress
    import socket

    from moderation.adapters.support.ssrf import ANY_ADDRESS, check_url
    from moderation.exceptions import UrlRefusedError

    expected = ipaddress.IPv4Address(socket.inet_aton(host))
    with pytest.raises(UrlRefusedError) as refused:
        check_url(f"http://{host}/x.png", ANY_ADDRESS)
    assert f"non-canonical IPv4 spelling of {expected} " in str(refused.value)


def test_hostname_resolving_to_loopback_refused(
    guarded: ImageFetcher, server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_dns(monkeypatch, {"images.example.com": ["127.0.0.1"]})
    message = _refused(guarded, server.url("/img.png", host="images.example.com"), server)
    assert "images.example.com (127.0.0.1)" in message


def test_any_bad_address_poisons_the_name(
    guarded: ImageFetcher, server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_dns(monkeypatch, {"mixed.example.com": ["93.184.216.34", "10.1.2.3"]})
    assert "10.1.2.3" in _refused(guarded, server.url("/img.png", host="mixed.example.com"))


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.1:{port}/img.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/x",
        "http://[::1]:{port}/img.png",
        "http://2130706433:{port}/img.png",
        "file:///etc/passwd",
    ],
)
def test_redirects_to_internal_targets_refused(server: LocalServer, target: str) -> None:
    """The first hop is allowlisted by hostname; the redirect target is checked on its own."""
    with ImageFetcher(make_settings("localhost")) as fetcher:
        assert fetcher.fetch(server.url("/img.png", host="localhost")) == PNG
        location = target.format(port=server.port)
        start = server.url(f"/redirect?to={location}", host="localhost")
        _refused(fetcher, start)
        assert server.recorder.paths[-1].startswith("/redirect")  # the target was never hit


def test_redirect_chain_into_metadata_refused(allowed: ImageFetcher, server: LocalServer) -> None:
    inner = server.url("/redirect?to=http://169.254.169.254/latest/meta-data/iam/")
    outer = server.url(f"/redirect?code=301&to={inner}")
    assert "metadata" in _refused(allowed, outer)


def test_allowlisted_hostname_is_pinned_and_keeps_its_host_header(
    server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS answers once, the connect goes to that vetted address (a rebinding answer later
    cannot move it), and the request still names the original host."""
    answers = iter([["127.0.0.1"], ["169.254.169.254"], ["169.254.169.254"]])
    real = socket.getaddrinfo

    def rebinding(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "rebind.internal":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in next(answers)]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    with ImageFetcher(make_settings("127.0.0.0/8")) as fetcher:
        url = server.url("/img.png", host="rebind.internal")
        assert fetcher.fetch(url) == PNG
        assert server.recorder.hosts[-1] == f"rebind.internal:{server.port}"
        fetcher.close()  # drop the kept-alive connection: the next request resolves again
        assert "metadata" in _refused(fetcher, url, server)


def test_https_to_pinned_address_verifies_the_hostname(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TLS to a pinned IP still sends SNI and checks the certificate for the hostname."""
    cert, key = _self_signed(tmp_path, "images.test")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    httpd, info = _serve(server_ctx)
    try:
        _fake_dns(monkeypatch, {"images.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
        client_ctx = ssl.create_default_context(cafile=str(cert))
        settings = make_settings("127.0.0.1/32")
        with guarded_client(settings, verify=client_ctx) as client:
            response = client.get(info.url("/img.png", host="images.test"))
            assert response.status_code == 200 and response.content == PNG
            assert info.recorder.hosts[-1] == f"images.test:{info.port}"
            with pytest.raises(httpx.ConnectError, match=r"(?i)certificate|hostname"):
                client.get(info.url("/img.png", host="other.test"))
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_guarded_client_is_reusable_for_callbacks(server: LocalServer) -> None:
    with guarded_client(make_settings()) as client, pytest.raises(UrlRefusedError):
        client.post(server.url("/hook"), content=b"{}")
    with guarded_client(make_settings("127.0.0.1")) as client:
        assert client.get(server.url("/status/404")).status_code == 404


# --- pure helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize("ip", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "93.184.216.34"])
def test_public_addresses_pass(ip: str) -> None:
    assert blocked_reason(ipaddress.ip_address(ip)) is None
    check_url(f"http://{ip if ':' not in ip else f'[{ip}]'}/x.jpg", Allowlist())


@pytest.mark.parametrize(
    "ip", ["2002:7f00:1::1", "64:ff9b::a00:1", "2001:0:4136:e378:8000:63bf:80ff:fffe", "::7f00:1"]
)
def test_ipv6_forms_embedding_internal_ipv4_blocked(ip: str) -> None:
    assert blocked_reason(ipaddress.ip_address(ip)) is not None


def test_allowlist_parsing() -> None:
    allow = Allowlist.parse(["10.1.0.0/16", "Images.Internal.", "::1"])
    assert allow.allows_ip(ipaddress.ip_address("10.1.2.3"))
    assert not allow.allows_ip(ipaddress.ip_address("10.2.0.1"))
    assert allow.allows_ip(ipaddress.ip_address("::1"))
    assert allow.allows_host("images.internal") and not allow.allows_host("internal")
    with pytest.raises(ValueError, match="empty"):
        Allowlist.parse([" "])


def test_parse_s3_ref() -> None:
    assert parse_s3_ref("s3://bucket/a/b c?d#e.jpg") == ("bucket", "a/b c?d#e.jpg")
    for bad in ["s3://bucket", "s3://bucket/", "s3:///key"]:
        with pytest.raises(ImageFetchError):
            parse_s3_ref(bad)


@pytest.mark.parametrize(
    ("code", "status", "transient"),
    [
        ("SlowDown", 503, True),
        ("ThrottlingException", 400, True),
        ("InternalError", 500, True),
        ("NoSuchKey", 404, False),
        ("AccessDenied", 403, False),
        ("InvalidRequest", 400, False),
    ],
)
def test_s3_error_mapping(code: str, status: int, transient: bool) -> None:
    exc = ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "GetObject",
    )
    mapped = fetch_mod._s3_client_error("s3://b/k", exc)
    assert mapped.transient is transient
    assert isinstance(mapped, ImageFetchTransient if transient else ImageFetchError)


# --- S3 over a real S3-compatible server ----------------------------------------------------


def test_s3_fetch_found_missing_and_down(s3_server: MotoServer) -> None:
    s3 = S3Settings(
        endpoint_url=s3_server.url,
        access_key_id="test",
        secret_access_key="test",  # type: ignore[arg-type]
        connect_timeout_s=0.5,
        read_timeout_s=1.0,
        max_attempts=1,
    )
    grants = [TenantS3Source(bucket="images"), TenantS3Source(bucket="no-such-bucket")]
    settings = Settings(
        s3=s3,
        images=ImageLimits(max_bytes=MAX_BYTES),
        tenants={"t1": TenantSettings(s3_sources=grants)},
    )
    raw = boto3.client(
        "s3",
        endpoint_url=s3_server.url,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    raw.create_bucket(Bucket="images")
    raw.put_object(Bucket="images", Key="cats/1.png", Body=PNG)
    raw.put_object(Bucket="images", Key="huge.bin", Body=b"\0" * (MAX_BYTES + 1))
    raw.put_object(Bucket="images", Key="clip.mp4", Body=b"v" * (MAX_BYTES - 1))
    with ImageFetcher(settings) as fetcher:
        assert fetcher.fetch("s3://images/cats/1.png") == PNG
        # A large object (a video) streams into a file; over the cap nothing is kept.
        streaming = S3Source(
            settings.model_copy(update={"video": VideoSettings(stream_above_bytes=64 * 1024)})
        )
        media = streaming.fetch_media(ImageRef(uri="s3://images/clip.mp4"), tenant="t1")
        assert isinstance(media, MediaFile) and media.size == MAX_BYTES - 1
        assert media.path.read_bytes() == b"v" * (MAX_BYTES - 1)
        release([media])
        assert not media.path.exists()
        with pytest.raises(ImageFetchTooLarge):
            streaming.fetch_media(ImageRef(uri="s3://images/huge.bin"), tenant="t1")
        with pytest.raises(SourceNotAllowed):  # the tenant's grants still hold
            streaming.fetch_media(ImageRef(uri="s3://images/clip.mp4"), tenant="t2")
        for ref, code in [
            ("s3://images/cats/missing.png", "not_found"),
            ("s3://no-such-bucket/x.png", "not_found"),
        ]:
            with pytest.raises(ImageFetchError) as info:
                fetcher.fetch(ref)
            assert info.value.code == code and not info.value.transient
        with pytest.raises(ImageFetchTooLarge):
            fetcher.fetch("s3://images/huge.bin")
        s3_server.pause()  # accepts TCP but never answers: a read timeout
        try:
            with pytest.raises(ImageFetchTransient):
                fetcher.fetch("s3://images/cats/1.png")
        finally:
            s3_server.resume()
        assert fetcher.fetch("s3://images/cats/1.png") == PNG
        s3_server.stop()  # connection refused
        with pytest.raises(ImageFetchTransient) as info:
            fetcher.fetch("s3://images/cats/1.png")
        assert "unreachable" in str(info.value)


# --- helpers --------------------------------------------------------------------------------


def _fake_dns(monkeypatch: pytest.MonkeyPatch, table: dict[str, list[str]]) -> None:
    """Answer getaddrinfo for made-up names (the resolver is the outside world here)."""
    real: Callable[..., Any] = socket.getaddrinfo

    def fake(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in table:
            out = []
            for ip in table[host]:
                family = socket.AF_INET6 if ":" in ip else socket.AF_INET
                addr = (ip, port, 0, 0) if family == socket.AF_INET6 else (ip, port)
                out.append((family, socket.SOCK_STREAM, 6, "", addr))
            return out
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)


def _self_signed(tmp_path: Path, hostname: str) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_every_failure_is_a_moderation_error(guarded: ImageFetcher) -> None:
    for ref in [
        "http://",
        "http://[::1",
        "http://host:99999/",
        "https://exa mple.com/",
        "http://\x00/",
        "s3://",
        "http://user:pw@8.8.8.8/",
    ]:
        with pytest.raises(ModerationError):
            guarded.fetch(ref)


def test_a_tenants_private_hosts_are_open_to_that_tenant_only(server: LocalServer) -> None:
    settings = make_settings().model_copy(
        update={"tenants": {"acme": TenantSettings(allow_private_hosts=["127.0.0.1/32"])}}
    )
    with ImageFetcher(settings) as fetcher:
        url = server.url("/img.png")
        assert fetcher.fetch(url, tenant="acme") == PNG
        for other in ("globex", "default"):
            before = len(server.recorder.paths)
            with pytest.raises(UrlRefusedError) as info:
                fetcher.fetch(url, tenant=other)
            assert info.value.code == "url_refused"
            assert len(server.recorder.paths) == before, "the refused request reached the server"
        # acme's list opens its host, not the rest of the network: a redirect is re-checked
        with pytest.raises(UrlRefusedError):
            fetcher.fetch(server.url("/redirect?to=http://10.1.2.3/x.png"), tenant="acme")
        assert server.recorder.paths[-1].startswith("/redirect")
