"""Issue 17, items 1, 13 and 17: what a hostile tenant can make the service read, and what the
service tells it about its own network. Against a production-like start: ``moderation api`` and a
``moderation worker`` as their own processes in production mode, a real valkey server and a real
S3 server (moto over HTTP) that holds two tenants' objects and the service's own.

Each test failed on the code before (the worker read any bucket with the service's credentials
and answered ``not_found`` for a missing key; fetch errors named hosts, addresses and settings;
a PDF was ``image_corrupt``) and passes now:

1. S3 confused deputy    -> a tenant reads only its own ``s3_sources`` (bucket + prefix), checked
                            at submit (422 ``source_not_allowed``, the same answer whether the
                            object exists or not) and again in the worker; ``file://`` is refused;
                            a tenant's allowlisted internal image host is not another tenant's
13. fetch errors          -> one generic ``fetch_failed`` with a fixed message for refused,
                            unreachable and closed hosts; the detail only in the worker's log
17. unsupported kinds     -> a well-formed PDF, ZIP or WAV is ``unsupported_format``
"""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
import wave
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from moderation.settings import S3Settings, Settings, TenantS3Source, TenantSettings
from tests.attack_support import KEY_A, KEY_B, Site, started_site
from tests.pipeline_support import WorkerProcess, png_bytes
from tests.servers import MotoServer, valkey_url

pytestmark = pytest.mark.xdist_group("attacks_sources")

ACME_BUCKET = "acme-media"
GLOBEX_BUCKET = "globex-private"
SERVICE_BUCKET = "moderation-internal"
ACME_HOST = "127.0.0.3"


def _png(seed: int) -> bytes:
    from moderation.testmodel import sample_images

    return png_bytes(sample_images("allow", 1, seed)[0][0])


def _with_sources(settings: Settings, acme_prefixes: list[str]) -> Settings:
    tenants = {
        "acme": TenantSettings(
            s3_sources=[TenantS3Source(bucket=ACME_BUCKET, prefix=p) for p in acme_prefixes],
            # acme's on-premises image host: reachable by acme's jobs only
            allow_private_hosts=[f"{ACME_HOST}/32"],
        ),
        # globex names no S3 source: it has no S3 access at all.
        "globex": TenantSettings(),
    }
    queue = settings.queue.model_copy(
        update={"allow_private_hosts": ["127.0.0.2/32"], "max_retries": 1, "retry_backoff_s": 0.2}
    )
    return settings.model_copy(update={"tenants": tenants, "queue": queue})


class _Image(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = _png(8)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def acme_host() -> Iterator[str]:
    """An image host on an internal address that only acme may reach."""
    httpd = ThreadingHTTPServer((ACME_HOST, 0), _Image)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://{ACME_HOST}:{httpd.server_address[1]}/cat.png"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def s3() -> Iterator[MotoServer]:
    server = MotoServer()
    server.start()
    client = server.client()
    for bucket in (ACME_BUCKET, GLOBEX_BUCKET, SERVICE_BUCKET):
        client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=ACME_BUCKET, Key="uploads/cat.png", Body=_png(1))
    client.put_object(Bucket=ACME_BUCKET, Key="legacy/cat.png", Body=_png(2))
    client.put_object(Bucket=ACME_BUCKET, Key="private/cat.png", Body=_png(3))
    client.put_object(Bucket=GLOBEX_BUCKET, Key="secret.png", Body=_png(4))
    client.put_object(Bucket=SERVICE_BUCKET, Key="audit/segment.png", Body=_png(5))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def site(
    test_model_settings: Settings, s3: MotoServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Site, WorkerProcess]]:
    base = test_model_settings.model_copy(
        update={
            "s3": S3Settings(
                endpoint_url=s3.url,
                access_key_id="testing",  # type: ignore[arg-type]
                secret_access_key="testing",  # type: ignore[arg-type]
                max_attempts=1,
            )
        }
    )
    root = tmp_path_factory.mktemp("attacks-sources")
    # The API still grants acme ``legacy/``; the workers' configuration has revoked it: a
    # reference that passed the submit check is checked again where it is read.
    with (
        valkey_url() as url,
        started_site(_with_sources(base, ["uploads/", "legacy/"]), url, root) as running,
    ):
        worker_settings = _with_sources(running.settings, ["uploads/"])
        worker = WorkerProcess(worker_settings, root / "worker.log").start()
        try:
            worker.wait_ready(running.store)
            yield running, worker
        finally:
            worker.stop()


def _ended(client: httpx.Client, job_id: str, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        if body.get("status") in ("done", "error"):
            return body
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not end: {body}")


def _submit(client: httpx.Client, job_id: str, **job: Any) -> httpx.Response:
    return client.post("/v1/jobs", json={"id": job_id, **job})


# --- 1: S3 confused deputy ----------------------------------------------------------------------


def test_1_a_tenant_reads_its_own_s3_source(site: tuple[Site, WorkerProcess]) -> None:
    running, worker = site
    with running.client(KEY_A) as acme:
        accepted = _submit(acme, "own-1", image_url=f"s3://{ACME_BUCKET}/uploads/cat.png")
        assert accepted.status_code == 202, accepted.text
        result = _ended(acme, "own-1")
    assert result["status"] == "done", (result, worker.log())
    assert result["content_sha256"]


@pytest.mark.parametrize(
    ("key", "ref"),
    [
        # another tenant's bucket, an object that exists and one that does not
        (KEY_A, f"s3://{GLOBEX_BUCKET}/secret.png"),
        (KEY_A, f"s3://{GLOBEX_BUCKET}/no-such-key.png"),
        # the service's own bucket
        (KEY_A, f"s3://{SERVICE_BUCKET}/audit/segment.png"),
        # the tenant's bucket, outside its prefixes, and escapes from them
        (KEY_A, f"s3://{ACME_BUCKET}/private/cat.png"),
        (KEY_A, f"s3://{ACME_BUCKET}/uploads/../private/cat.png"),
        (KEY_A, f"s3://{ACME_BUCKET}/uploads//cat.png"),
        (KEY_A, f"s3://{ACME_BUCKET}/uploadsX/cat.png"),
        # a tenant that names no S3 source has none
        (KEY_B, f"s3://{ACME_BUCKET}/uploads/cat.png"),
        (KEY_B, f"s3://{ACME_BUCKET}/uploads/no-such-key.png"),
        (KEY_B, f"s3://{GLOBEX_BUCKET}/secret.png"),
    ],
)
def test_1_s3_outside_the_tenants_sources_is_refused_at_submit(
    site: tuple[Site, WorkerProcess], key: str, ref: str
) -> None:
    running, _ = site
    with running.client(key) as client:
        refused = _submit(client, "deputy", image_url=ref)
    assert refused.status_code == 422, refused.text
    body = refused.json()
    assert body["code"] == "source_not_allowed"
    # The same answer for every refused reference: nothing says whether the object exists.
    assert body["detail"] == (
        "this S3 location is not one of the S3 sources configured for your tenant"
    )
    assert running.store.get_job("acme/deputy") is None
    assert running.store.get_job("globex/deputy") is None


def test_1_refused_existence_is_not_probeable(site: tuple[Site, WorkerProcess]) -> None:
    running, _ = site
    answers = []
    with running.client(KEY_B) as globex:
        for ref in ("uploads/cat.png", "uploads/nothing-here.png"):
            answer = _submit(globex, "probe", image_url=f"s3://{ACME_BUCKET}/{ref}")
            answers.append((answer.status_code, answer.json()))
    assert answers[0] == answers[1]


def test_1_the_worker_checks_again_before_reading(site: tuple[Site, WorkerProcess]) -> None:
    running, worker = site
    with running.client(KEY_A) as acme:
        # Allowed by the API's configuration, revoked in the worker's.
        accepted = _submit(acme, "revoked-1", image_url=f"s3://{ACME_BUCKET}/legacy/cat.png")
        assert accepted.status_code == 202, accepted.text
        result = _ended(acme, "revoked-1")
    assert result["status"] == "error", result
    assert result["error"]["code"] == "source_not_allowed"
    # Nothing of the object reached the tenant: no digest, no perceptual hash.
    assert result.get("content_sha256") is None and result.get("content_pdq") is None
    assert "source_not_allowed" in worker.log()


@pytest.mark.parametrize(
    "ref", ["file:///etc/hostname", "FILE:///etc/passwd", "file://localhost/etc/hostname"]
)
def test_1_file_urls_never_reach_the_service_from_the_api(
    site: tuple[Site, WorkerProcess], ref: str
) -> None:
    running, _ = site
    with running.client(KEY_A) as acme:
        refused = _submit(acme, "local-file", image_url=ref)
        assert refused.status_code == 400, refused.text
        assert refused.json()["code"] == "bad_scheme"
        upload = acme.post(
            "/v1/jobs:batch", json={"jobs": [{"id": "local-file-b", "image_url": ref}]}
        )
        assert upload.status_code == 400 and upload.json()["code"] == "bad_scheme"
    assert running.store.get_job("acme/local-file") is None


def test_1_a_tenants_internal_host_is_not_another_tenants(
    site: tuple[Site, WorkerProcess], acme_host: str
) -> None:
    running, worker = site
    with running.client(KEY_A) as acme, running.client(KEY_B) as globex:
        assert _submit(acme, "host-1", image_url=acme_host).status_code == 202
        assert _submit(globex, "host-1", image_url=acme_host).status_code == 202
        mine, theirs = _ended(acme, "host-1"), _ended(globex, "host-1")
    assert mine["status"] == "done", (mine, worker.log())
    assert theirs["status"] == "error" and theirs["error"]["code"] == "fetch_failed", theirs
    assert theirs.get("content_sha256") is None


# --- 13: fetch errors do not map the network --------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.2", 0))
        return int(s.getsockname()[1])


def test_13_fetch_errors_tell_the_tenant_nothing_about_the_network(
    site: tuple[Site, WorkerProcess],
) -> None:
    running, worker = site
    api_port = httpx.URL(running.url).port
    closed = _closed_port()
    refs = {
        "loopback": f"http://127.0.0.1:{api_port}/healthz",  # refused by the SSRF guard
        "private": "http://10.255.255.1:8080/a.png",  # refused by the SSRF guard
        "closed": f"http://127.0.0.2:{closed}/a.png",  # allowed, nothing listens
    }
    results = {}
    with running.client(KEY_A) as acme:
        for i, ref in enumerate(refs.values()):
            accepted = _submit(acme, f"net-{i}", image_url=ref)
            assert accepted.status_code == 202, accepted.text
        for i, name in enumerate(refs):
            results[name] = _ended(acme, f"net-{i}")
    errors = {
        name: (r["status"], r["error"]["code"], r["error"]["message"])
        for name, r in results.items()
    }
    assert len(set(errors.values())) == 1, errors
    status, code, _ = errors["loopback"]
    assert (status, code) == ("error", "fetch_failed")
    shown = json.dumps(list(results.values()))
    for leak in (
        "127.0.0",
        "10.255",
        str(api_port),
        str(closed),
        "loopback",
        "MODERATION_",
        "allow_private",
        "private",
        "refused to connect",
        "Connect",
    ):
        assert leak not in shown, (leak, shown)
    # Operators get the detail (escaped) in the worker's log.
    log = worker.log_path.read_text(errors="replace")
    assert "url_refused" in log and "10.255.255.1" in log


# --- 17: a well-formed file of an unsupported kind ----------------------------------------------


def _pdf() -> bytes:
    return (
        b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
        b"2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\n"
        b"trailer<</Root 1 0 R>>\n%%EOF\n"
    )


def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("cat.png", _png(6))
    return buffer.getvalue()


def _wav() -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as sound:
        sound.setnchannels(1)
        sound.setsampwidth(2)
        sound.setframerate(8000)
        sound.writeframes(b"\x00\x01" * 800)
    return buffer.getvalue()


def test_17_unsupported_kinds_are_not_corrupt_images(site: tuple[Site, WorkerProcess]) -> None:
    running, worker = site
    files = {"pdf": _pdf(), "zip": _zip(), "wav": _wav(), "truncated": _png(7)[:60]}
    with running.client(KEY_A) as acme:
        accepted = acme.post(
            "/v1/jobs:batch",
            json={
                "jobs": [
                    {"id": f"kind-{name}", "image_base64": base64.b64encode(data).decode()}
                    for name, data in files.items()
                ]
            },
        )
        assert accepted.status_code == 202, accepted.text
        codes = {name: _ended(acme, f"kind-{name}")["error"]["code"] for name in files}
    assert codes == {
        "pdf": "unsupported_format",
        "zip": "unsupported_format",
        "wav": "unsupported_format",
        "truncated": "image_corrupt",
    }, worker.log()
