"""The HTTP API on a real uvicorn server, real valkey and the real Celery producer: validation
(4xx, nothing enqueued), idempotency, status reads, health, OpenAPI. No worker runs here, so every
accepted job stays queued in the broker where the test can count it."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from moderation.adapters.redis_jobs import RedisJobStore
from moderation.settings import Settings
from tests.pipeline_support import pipeline_settings, png_bytes, start_api, stop_api


@pytest.fixture
def api(settings: Settings, redis_url: str) -> Iterator[tuple[httpx.Client, RedisJobStore]]:
    s = pipeline_settings(settings, redis_url, max_inline_bytes=50_000)
    server, base = start_api(s)
    try:
        with httpx.Client(base_url=base, timeout=10) as client:
            yield client, RedisJobStore.from_url(redis_url, s.queue)
    finally:
        stop_api(server)


def _image() -> str:
    from moderation.testmodel import sample_images

    return base64.b64encode(png_bytes(sample_images("allow", 1, 3)[0][0])).decode()


def _queued(store: RedisJobStore) -> list[str]:
    """The job ids of the messages waiting in the broker queue (oldest first)."""
    from moderation.adapters.celery_queue import message_job_ids

    raw = store.redis.lrange(store.settings.queue_name, 0, -1)
    return [job for message in reversed(raw) for job in message_job_ids(message)]


def _depth(store: RedisJobStore) -> int:
    """Jobs waiting in the broker queue."""
    return len(_queued(store))


def _nothing_enqueued(store: RedisJobStore) -> None:
    assert _depth(store) == 0
    assert list(store.redis.scan_iter(match=store.key("job", "*"))) == []


@pytest.mark.parametrize(
    ("body", "status", "code", "words"),
    [
        ({"image_url": "s3://b/k", "policies": ["nope"]}, 400, "policy_unknown", "nope"),
        ({}, 422, None, "exactly one of image_url and image_base64"),
        ({"image_url": "s3://b/k", "image_base64": "AAAA"}, 422, None, "exactly one"),
        ({"image_url": "ftp://host/x.jpg"}, 400, "bad_scheme", "ftp"),
        ({"image_url": "/etc/passwd"}, 400, "bad_scheme", "s3://"),
        ({"image_url": "s3://bucket-only"}, 400, "bad_reference", "s3://bucket/key"),
        ({"image_url": "   "}, 400, "missing_image", "empty"),
        ({"image_base64": "not base64!!"}, 400, "bad_base64", "base64"),
        ({"image_base64": ""}, 400, "empty_image", "empty"),
        (
            {"image_base64": base64.b64encode(b"x" * 60_000).decode()},
            413,
            "inline_too_large",
            "50000",
        ),
        (
            {"image_url": "s3://b/k", "callback_url": "gopher://x"},
            400,
            "bad_callback_url",
            "gopher",
        ),
        ({"image_url": "s3://b/k", "id": "../../etc"}, 422, None, "id"),
        ({"image_url": "s3://b/k", "policies": []}, 400, "no_policies", "omit"),
    ],
)
def test_bad_requests_get_4xx_and_enqueue_nothing(
    api: tuple[httpx.Client, RedisJobStore],
    body: dict[str, Any],
    status: int,
    code: str | None,
    words: str,
) -> None:
    client, store = api
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status and problem["type"] == f"/problems/{problem['code']}"
    assert problem["code"] == (code or "invalid_request")
    assert words in problem["detail"]
    _nothing_enqueued(store)


def test_submit_is_202_at_once_and_idempotent_by_id(
    api: tuple[httpx.Client, RedisJobStore],
) -> None:
    client, store = api
    body = {
        "image_base64": _image(),
        "id": "upload-1",
        "metadata": {"user": "u1"},
        "policies": ["testworld"],
    }
    first = client.post("/v1/jobs", json=body)
    assert first.status_code == 202, first.text
    assert first.json() == {
        "id": "upload-1",
        "status": "queued",
        "duplicate": False,
        "url": "/v1/jobs/upload-1",
    }
    second = client.post("/v1/jobs", json=body)
    assert second.status_code == 200
    assert second.json()["duplicate"] is True
    assert _queued(store) == ["upload-1"]  # one message for two submits of the same id
    result = client.get("/v1/jobs/upload-1").json()
    assert result["status"] == "queued"
    assert result["metadata"] == {"user": "u1"}
    assert store.inline_bytes("upload-1") == base64.b64decode(body["image_base64"])
    generated = client.post("/v1/jobs", json={"image_url": "https://example.com/a.jpg"}).json()
    assert len(generated["id"]) == 32 and generated["id"] != "upload-1"
    assert _depth(store) == 2


def test_batch_validates_everything_before_enqueueing(
    api: tuple[httpx.Client, RedisJobStore],
) -> None:
    client, store = api
    good = {"image_url": "s3://bucket/a.jpg"}
    bad = {"image_url": "file:///etc/passwd"}
    response = client.post("/v1/jobs:batch", json={"jobs": [good, good, bad]})
    assert response.status_code == 400
    assert response.json()["index"] == 2
    assert "jobs[2]" in response.json()["detail"]
    _nothing_enqueued(store)
    ok = client.post("/v1/jobs:batch", json={"jobs": [good, {**good, "id": "x1"}]})
    assert ok.status_code == 202
    assert [j["status"] for j in ok.json()["jobs"]] == ["queued", "queued"]
    assert _depth(store) == 2
    assert store.redis.llen(store.settings.queue_name) == 1  # one message for the batch


def test_unknown_job_is_404(api: tuple[httpx.Client, RedisJobStore]) -> None:
    client, _ = api
    response = client.get("/v1/jobs/does-not-exist")
    assert response.status_code == 404
    assert response.json()["code"] == "job_not_found"


def test_health_readiness_metrics_and_openapi(api: tuple[httpx.Client, RedisJobStore]) -> None:
    client, _ = api
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 503  # redis is up but no worker has a heartbeat
    assert ready.json()["redis"] is True and ready.json()["workers"] == []
    client.post("/v1/jobs", json={"image_url": "s3://bucket/a.jpg"})
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert "moderation_queue_depth 1.0" in metrics.text
    assert "moderation_jobs_submitted_total" in metrics.text
    spec = client.get("/openapi.json").json()
    assert {"/v1/jobs", "/v1/jobs:batch", "/v1/jobs/{job_id}"} <= set(spec["paths"])
    assert client.get("/docs").status_code == 200


def test_broker_down_rolls_back_the_job(settings: Settings, redis_url: str) -> None:
    """The job record is removed again when the broker message cannot be published."""
    from moderation.adapters.memory import MemoryPublisher
    from moderation.api import create_app
    from moderation.compose import build_api
    from moderation.exceptions import QueueUnavailable

    s = pipeline_settings(settings, redis_url)
    store = RedisJobStore.from_url(redis_url, s.queue)
    broken = MemoryPublisher(fail=QueueUnavailable("broker down"))
    app = create_app(build_api(s, store=store, publisher=broken))
    transport = httpx.ASGITransport(app=app)

    import asyncio

    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            return await client.post("/v1/jobs", json={"image_url": "s3://b/k", "id": "j1"})

    response = asyncio.run(go())
    assert response.status_code == 503
    assert response.json()["code"] == "queue_unavailable"
    assert store.get_job("j1") is None and store.get_result("j1") is None


def test_api_keys_guard_the_job_api_when_configured(settings: Settings, redis_url: str) -> None:
    from pydantic import SecretStr

    s = pipeline_settings(settings, redis_url).model_copy(
        update={"api_keys": [SecretStr("key-one"), SecretStr("key-two")]}
    )
    server, base = start_api(s)
    try:
        with httpx.Client(base_url=base, timeout=10) as client:
            body = {"image_base64": _image(), "id": "keyed-1"}
            assert client.post("/v1/jobs", json=body).status_code == 401
            wrong = client.post("/v1/jobs", json=body, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401 and wrong.json()["code"] == "unauthorized"
            ok = client.post("/v1/jobs", json=body, headers={"Authorization": "Bearer key-two"})
            assert ok.status_code == 202, ok.text
            assert client.get("/v1/jobs/keyed-1").status_code == 401
            read = client.get("/v1/jobs/keyed-1", headers={"Authorization": "Bearer key-one"})
            assert read.status_code == 200 and read.json()["status"] == "queued"
            assert client.get("/healthz").status_code == 200  # probes stay open
        from moderation.client import ModerationClient

        with ModerationClient(base, api_key="key-one") as api:
            assert api.get("keyed-1").status.value == "queued"
    finally:
        stop_api(server)
