"""moderation.client against the real API server (real valkey, no worker: jobs stay queued)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from moderation.client import AsyncModerationClient, ModerationClient
from moderation.core.jobs import JobStatus
from moderation.exceptions import (
    ApiUnavailable,
    JobConflict,
    JobNotFoundError,
    JobRejected,
    JobWaitTimeout,
)
from moderation.settings import Settings
from tests.pipeline_support import pipeline_settings, start_api, stop_api
from tests.servers import free_port


@pytest.fixture
def base_url(settings: Settings, redis_url: str) -> Iterator[str]:
    server, base = start_api(pipeline_settings(settings, redis_url))
    try:
        yield base
    finally:
        stop_api(server)


def test_submit_get_wait_and_errors(base_url: str, tmp_path: Path) -> None:
    image = tmp_path / "x.png"
    image.write_bytes(b"\x89PNG not really")
    with ModerationClient(base_url) as client:
        job_id = client.submit(image, id="c-1", metadata={"k": "v"})
        assert job_id == "c-1"
        assert client.submit(image, id="c-1", metadata={"k": "v"}) == "c-1"  # idempotent
        with pytest.raises(JobConflict) as conflict:  # the same id for another request
            client.submit(b"other bytes", id="c-1")
        assert conflict.value.status == 409 and conflict.value.existing_id == "c-1"
        result = client.get(job_id)
        assert result.status is JobStatus.QUEUED and result.metadata == {"k": "v"}
        with pytest.raises(JobWaitTimeout):
            client.wait(job_id, timeout=0.3)
        with pytest.raises(JobRejected) as rejected:
            client.submit("https://example.com/key", policies=["no-such-policy"])
        assert rejected.value.code == "policy_unknown" and rejected.value.status == 400
        with pytest.raises(JobRejected) as invalid:
            client.submit("https://example.com/key", id="bad id with spaces")
        assert invalid.value.status == 422 and "id" in str(invalid.value)
        with pytest.raises(JobNotFoundError):
            client.get("nope")
        ids = client.submit_many(
            ["https://example.com/1.jpg", "https://example.com/2.jpg"], ids=["m-1", "m-2"]
        )
        assert ids == ["m-1", "m-2"]


def test_unreachable_api_is_transient() -> None:
    with (
        ModerationClient(f"http://127.0.0.1:{free_port()}", timeout=2) as client,
        pytest.raises(ApiUnavailable),
    ):
        client.get("x")


def test_async_client(base_url: str) -> None:
    async def go() -> JobStatus:
        async with AsyncModerationClient(base_url) as client:
            job_id = await client.submit("https://example.com/key.jpg", id="a-1")
            return (await client.get(job_id)).status

    assert asyncio.run(go()) is JobStatus.QUEUED


def test_raw_byte_uploads_and_batched_lookups(base_url: str, redis_url: str) -> None:
    """Multipart upload: the bytes travel as they are (no base64); lookups answer many ids in
    one request, straight from the stored JSON."""
    import httpx

    from moderation.adapters.redis_jobs import RedisJobStore
    from moderation.settings import QueueSettings

    images = [bytes([i]) * (1000 + i) for i in range(3)]
    with ModerationClient(base_url) as client:
        ids = client.upload_many(images, ids=["u-1", "u-2", "u-3"], policies=["testworld"])
        assert ids == ["u-1", "u-2", "u-3"]
        again = client.upload_many(images[:1], ids=["u-1"], policies=["testworld"])
        assert again == ["u-1"]  # the same request again: idempotent by id
        with pytest.raises(JobConflict):
            client.upload_many([b"different"], ids=["u-1"], policies=["testworld"])
        found = client.lookup(["u-2", "missing", "u-1"])
        assert found[1] is None
        assert [r.job_id for r in found if r] == ["u-2", "u-1"]
        assert all(r.status is JobStatus.QUEUED for r in found if r)
        with pytest.raises(JobWaitTimeout, match="3 of 3 jobs still running"):
            client.wait_many(ids, timeout=0.3)
        with pytest.raises(JobRejected) as refused:
            client.upload_many([b"x"], policies=["nope"])
        assert refused.value.code == "policy_unknown"
    store = RedisJobStore.from_url(redis_url, QueueSettings())
    assert [store.inline_bytes(job) for job in ids] == images
    with httpx.Client(base_url=base_url) as http:
        no_image = http.post(
            "/v1/jobs:upload", data={"policies": "testworld"}, files={"other": ("a", b"x")}
        )
        assert no_image.status_code == 400 and no_image.json()["code"] == "missing_image"
        bad = http.post(
            "/v1/jobs:upload",
            files=[("image", ("a", b"x")), ("image", ("b", b"y"))],
            data={"jobs": '[{"id": "only-one"}]'},
        )
        assert bad.status_code == 400 and bad.json()["code"] == "bad_options"
        assert http.post("/v1/jobs:lookup", json={"ids": []}).status_code == 422
        spec = http.get("/openapi.json").json()
        assert (
            "multipart/form-data"
            in spec["paths"]["/v1/jobs:upload"]["post"]["requestBody"]["content"]
        )
