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
            client.submit("s3://bucket/key", policies=["no-such-policy"])
        assert rejected.value.code == "policy_unknown" and rejected.value.status == 400
        with pytest.raises(JobRejected) as invalid:
            client.submit("s3://bucket/key", id="bad id with spaces")
        assert invalid.value.status == 422 and "id" in str(invalid.value)
        with pytest.raises(JobNotFoundError):
            client.get("nope")
        ids = client.submit_many(["s3://b/1.jpg", "https://example.com/2.jpg"], ids=["m-1", "m-2"])
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
            job_id = await client.submit("s3://bucket/key.jpg", id="a-1")
            return (await client.get(job_id)).status

    assert asyncio.run(go()) is JobStatus.QUEUED
