"""Large uploads stream to the object store (issue 19): the API writes a multipart image part
over ``video.stream_above_bytes`` to S3 chunk by chunk (a multipart upload), refuses one over
``video.max_upload_bytes`` while it streams (413, nothing stored), drops what an aborted upload
sent, and the job carries an unguessable ``spill:`` reference that only its own job reads; the
worker streams it into a temporary file and decodes the video from there.

Real servers: moto's S3 over HTTP, valkey, the API on a port, a Celery worker process. The unit
tests of the buffer run over the in-memory twin."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from moderation.adapters.memory import MemoryBlobStore
from moderation.adapters.redis_jobs import RedisJobStore
from moderation.client import ModerationClient
from moderation.exceptions import JobRejected
from moderation.pipeline.uploads import StoredUpload, UploadBuffer, Uploads
from moderation.settings import ApiKey, BlobSettings, S3Settings, Settings
from moderation.testmodel.clips import Shot, allow_image, block_image, clip
from tests.pipeline_support import WorkerProcess, pipeline_settings, start_api, stop_api
from tests.servers import MotoServer

KEY_A = "acme-" + "a" * 40
KEY_B = "globex-" + "b" * 40
STREAM_ABOVE = 64 * 1024
MAX_UPLOAD = 24 * 1024 * 1024

# --- the buffer, over the twin --------------------------------------------------------------


def test_a_small_part_stays_in_memory_and_a_large_one_goes_to_the_store() -> None:
    blobs = MemoryBlobStore()
    small = UploadBuffer(blobs, memory_bytes=1000, max_bytes=10_000)
    small.write(b"a" * 600)
    small.write(b"b" * 400)
    assert small.finish() == b"a" * 600 + b"b" * 400 and blobs.objects == {}
    large = UploadBuffer(blobs, memory_bytes=1000, max_bytes=10_000)
    for _ in range(5):
        large.write(b"c" * 999)
    assert blobs.objects == {}  # nothing readable before the part is complete
    stored = large.finish()
    assert isinstance(stored, StoredUpload) and stored.size == 4995
    assert blobs.get(stored.key) == b"c" * 4995
    assert stored.key.startswith("spill/") and len(stored.key.rsplit("/u-", 1)[1]) == 64


def test_a_part_over_the_cap_is_refused_while_it_streams_and_nothing_stays() -> None:
    blobs = MemoryBlobStore()
    buffer = UploadBuffer(blobs, memory_bytes=1000, max_bytes=3000)
    buffer.write(b"x" * 2000)
    with pytest.raises(JobRejected) as refused:
        buffer.write(b"x" * 1001)
    assert refused.value.status == 413 and refused.value.code == "video_upload_too_large"
    assert blobs.objects == {}
    committed = UploadBuffer(blobs, memory_bytes=10, max_bytes=3000)
    committed.write(b"y" * 100)
    committed.finish()
    committed.abort()  # a refused request drops a committed part too
    assert blobs.objects == {}


# --- through the API and a worker -----------------------------------------------------------


def _video() -> bytes:
    """A 20 s clip with a red star from 8 s to 12 s, noisy enough to pass 64 KiB."""
    return clip(
        [Shot(8, allow_image()), Shot(4, block_image()), Shot(8, allow_image())],
        fps=10,
        size=(160, 160),
        noise=12.0,
        threads=1,
    )


@pytest.fixture
def site(
    settings: Settings, redis_url: str, s3_server: MotoServer, tmp_path: Path
) -> Iterator[dict[str, Any]]:
    s3_server.client().create_bucket(Bucket="uploads")
    base = pipeline_settings(settings, redis_url)
    full = base.model_copy(
        update={
            "s3": S3Settings(
                endpoint_url=s3_server.url,
                access_key_id=SecretStr("testing"),
                secret_access_key=SecretStr("testing"),
            ),
            "blobs": BlobSettings(bucket="uploads", prefix="blobs/"),
            "video": base.video.model_copy(
                update={"stream_above_bytes": STREAM_ABOVE, "max_upload_bytes": MAX_UPLOAD}
            ),
            "api_keys": [
                ApiKey(tenant="acme", key=SecretStr(KEY_A)),
                ApiKey(tenant="globex", key=SecretStr(KEY_B)),
            ],
        }
    )
    server, url = start_api(full)
    store = RedisJobStore.from_url(redis_url, full.queue)
    try:
        yield {"url": url, "settings": full, "s3": s3_server.client(), "store": store}
    finally:
        stop_api(server)


def _client(site: dict[str, Any], key: str) -> httpx.Client:
    return httpx.Client(
        base_url=site["url"], headers={"Authorization": f"Bearer {key}"}, timeout=60
    )


def _stored(site: dict[str, Any]) -> list[str]:
    """Every object and unfinished multipart upload in the bucket."""
    s3 = site["s3"]
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="uploads").get("Contents", [])]
    pending = s3.list_multipart_uploads(Bucket="uploads").get("Uploads", [])
    return keys + [f"(unfinished) {u['Key']}" for u in pending]


def _wait(condition: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _request(body: bytes, boundary: str) -> Any:
    """A Starlette request whose body arrives in 1 KiB chunks."""
    from starlette.requests import Request

    chunks = [body[i : i + 1024] for i in range(0, len(body), 1024)]

    async def receive() -> dict[str, Any]:
        chunk = chunks.pop(0) if chunks else b""
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/jobs:upload",
        "headers": [(b"content-type", f"multipart/form-data; boundary={boundary}".encode())],
    }
    return Request(scope, receive)


def _parts(sizes: list[int], boundary: str) -> bytes:
    body = b""
    for i, size in enumerate(sizes):
        body += (
            (
                f"--{boundary}\r\n"
                f'Content-Disposition: form-data; name="image"; filename="p{i}.jpg"\r\n'
                "Content-Type: image/jpeg\r\n\r\n"
            ).encode()
            + b"j" * size
            + b"\r\n"
        )
    return body + f"--{boundary}--\r\n".encode()


def test_small_parts_together_are_held_to_a_memory_budget() -> None:
    """Parts too small to stream stay in memory: one request may not hold more of them than
    its budget (what submit accepts inline per request), refused while the body arrives."""
    import asyncio

    from moderation.api.multipart import read_upload

    blobs = MemoryBlobStore()
    uploads = Uploads(blobs, memory_bytes=STREAM_ABOVE, max_bytes=MAX_UPLOAD)
    limits = {"max_inline_bytes": STREAM_ABOVE, "max_files": 64, "max_fields": 80}
    part = STREAM_ABOVE - 1024  # each part stays in memory
    ok = asyncio.run(
        read_upload(
            _request(_parts([part] * 3, "b1"), "b1"),
            uploads,
            max_field_bytes=4096,
            max_memory_bytes=3 * part,
            **limits,
        )
    )
    assert [len(i) for i in ok.images if isinstance(i, bytes)] == [part] * 3
    with pytest.raises(JobRejected) as refused:
        asyncio.run(
            read_upload(
                _request(_parts([part] * 4, "b2"), "b2"),
                uploads,
                max_field_bytes=4096,
                max_memory_bytes=3 * part,
                **limits,
            )
        )
    assert refused.value.status == 413 and refused.value.code == "batch_too_large"
    assert list(blobs.list()) == []


def test_a_large_video_upload_streams_to_s3_and_ends_in_a_verdict(
    site: dict[str, Any], tmp_path: Path
) -> None:
    video = _video()
    assert len(video) > STREAM_ABOVE
    worker = WorkerProcess(site["settings"], tmp_path / "worker.log").start()
    try:
        worker.wait_ready(site["store"])
        with _client(site, KEY_A) as acme:
            answer = acme.post(
                "/v1/jobs:upload",
                files=[("image", ("clip.mp4", video, "video/mp4"))],
                data={"jobs": '[{"id": "big-clip"}]'},
            )
            assert answer.status_code == 202, answer.text
            [key] = _stored(site)
            assert key.startswith("blobs/spill/") and "/u-" in key
            job = site["store"].get_jobs(["acme/big-clip"])[0]
            assert job is not None and job.image.uri == "spill:" + key.removeprefix("blobs/")
            result: dict[str, Any] = {}

            def ended() -> bool:
                result.update(acme.get("/v1/jobs/big-clip").json())
                return result["status"] in ("done", "error")

            _wait(ended, "the verdict")
        assert result["status"] == "done", result
        verdict = result["verdict"]
        assert verdict["decision"] == "block"
        assert verdict["video"]["kind"] == "video" and verdict["video"]["duration_s"] >= 19
        # The same request again is a duplicate: its second copy is not kept.
        with _client(site, KEY_A) as acme:
            again = acme.post(
                "/v1/jobs:upload",
                files=[("image", ("clip.mp4", video, "video/mp4"))],
                data={"jobs": '[{"id": "big-clip"}]'},
            )
        assert again.status_code == 202 and again.json()["jobs"][0]["duplicate"]
        assert _stored(site) == [key]
    finally:
        worker.stop()


def test_an_oversized_upload_is_refused_while_streaming_with_nothing_stored(
    site: dict[str, Any],
) -> None:
    # 40 MiB against a 24 MiB cap: S3 parts were sent before the cap was reached.
    body = b"\x00\x00\x00\x18ftypmp42" + b"v" * (40 * 1024 * 1024)
    with _client(site, KEY_A) as acme:
        answer = acme.post("/v1/jobs:upload", files=[("image", ("big.mp4", body, "video/mp4"))])
    assert answer.status_code == 413
    problem = answer.json()
    assert problem["code"] == "video_upload_too_large", problem
    assert _stored(site) == []


def test_an_aborted_upload_leaves_nothing(site: dict[str, Any]) -> None:
    boundary = "streamedboundary"
    head = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="image"; filename="a.mp4"\r\n'
        "Content-Type: video/mp4\r\n\r\n"
    ).encode()
    declared = len(head) + 20 * 1024 * 1024 + 64
    host, port = site["url"].removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            (
                "POST /v1/jobs:upload HTTP/1.1\r\n"
                f"Host: {host}\r\nAuthorization: Bearer {KEY_A}\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                f"Content-Length: {declared}\r\n\r\n"
            ).encode()
            + head
        )
        chunk = b"v" * (1024 * 1024)
        sent = 0
        while not any(k.startswith("(unfinished)") for k in _stored(site)):
            sock.sendall(chunk)  # until the API has started the S3 multipart upload
            sent += len(chunk)
            assert sent < 20 * 1024 * 1024, "no multipart upload was started"
    # The client hung up mid-body: the API aborts the upload (every part is dropped).
    _wait(lambda: _stored(site) == [], "the aborted upload to be dropped")


def test_another_tenant_cannot_reach_an_upload(site: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    path.write_bytes(_video())
    with ModerationClient(site["url"], api_key=KEY_A) as acme_client:
        # The client streams a Path from its file.
        assert acme_client.upload_many([path], ids=["private-clip"]) == ["private-clip"]
    [key] = _stored(site)
    spill = "spill:" + key.removeprefix("blobs/")
    with _client(site, KEY_B) as globex:
        # Not by its reference (not a scheme callers may use), nor as an S3 URL of the bucket
        # (outside globex's S3 sources), nor through acme's job id.
        for uri in (spill, f"s3://uploads/{key}"):
            refused = globex.post("/v1/jobs", json={"image_url": uri})
            assert refused.status_code in (400, 422), refused.text
            assert refused.json()["code"] in ("bad_scheme", "source_not_allowed")
        assert globex.get("/v1/jobs/private-clip").status_code == 404
    # Acme cannot name it either: only the job the API created refers to it.
    with _client(site, KEY_A) as acme:
        assert acme.post("/v1/jobs", json={"image_url": spill}).json()["code"] == "bad_scheme"
    assert _stored(site) == [key]
