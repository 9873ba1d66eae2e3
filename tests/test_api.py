"""The HTTP API on a real uvicorn server, real valkey and the real Celery producer: validation
(4xx, nothing enqueued), idempotency, status reads, health, OpenAPI. No worker runs here, so every
accepted job stays queued in the broker where the test can count it."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from moderation.adapters.redis_jobs import RedisJobStore
from moderation.settings import Settings
from tests.pipeline_support import (
    pipeline_settings,
    png_bytes,
    raw_exchange,
    start_api,
    stop_api,
)


@pytest.fixture
def api(settings: Settings, redis_url: str) -> Iterator[tuple[httpx.Client, RedisJobStore]]:
    s = pipeline_settings(settings, redis_url, max_inline_bytes=50_000)
    server, base = start_api(s)
    try:
        with httpx.Client(base_url=base, timeout=10) as client:
            yield client, RedisJobStore.from_url(redis_url, s.queue)
    finally:
        stop_api(server)


_PIXEL = (  # a 1x1 PNG
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDw"
    "AEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


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
        (
            {"image_url": "https://example.com/k", "policies": ["nope"]},
            400,
            "policy_unknown",
            "nope",
        ),
        ({}, 422, None, "exactly one of image_url and image_base64"),
        ({"image_url": "https://example.com/k", "image_base64": "AAAA"}, 422, None, "exactly one"),
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
            {"image_url": "https://example.com/k", "callback_url": "gopher://x"},
            400,
            "bad_callback_url",
            "gopher",
        ),
        ({"image_url": "https://example.com/k", "id": "../../etc"}, 422, None, "id"),
        ({"image_url": "https://example.com/k", "policies": []}, 422, None, "policies"),
        ({"image_url": None, "image_base64": _PIXEL}, 422, None, "omit the field"),
        (
            {
                "image_url": "https://example.com/k",
                "metadata": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {}}}}}}}}},
            },
            400,
            "metadata_too_deep",
            "nested",
        ),
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
    good = {"image_url": "https://example.com/a.jpg"}
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
    # Ready on its own dependency (Redis): no worker is needed to take jobs.
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"status": "ready", "redis": True, "workers": []}
    client.post("/v1/jobs", json={"image_url": "https://example.com/a.jpg"})
    client.get("/v1/jobs/nope-1")
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert "moderation_queue_depth 1.0" in metrics.text
    assert "moderation_workers_alive 0.0" in metrics.text  # the alert's signal
    assert 'moderation_jobs_submitted_total{tenant="default"}' in metrics.text
    assert (
        'moderation_http_requests_total{method="GET",route="/v1/jobs/{job_id}",status="4xx"}'
        in metrics.text
    )
    assert 'route="/v1/jobs",status="2xx"' in metrics.text
    spec = client.get("/openapi.json").json()
    assert {"/v1/jobs", "/v1/jobs:batch", "/v1/jobs/{job_id}"} <= set(spec["paths"])
    assert client.get("/docs").status_code == 200


def test_the_openapi_document_is_the_contract(api: tuple[httpx.Client, RedisJobStore]) -> None:
    client, _ = api
    spec = client.get("/openapi.json").json()
    # No keys configured here: the document requires none (a keyed API's document:
    # tests/test_attacks_input.py::test_16_the_document_describes_the_security_configured).
    assert "securitySchemes" not in spec["components"]
    request = spec["components"]["schemas"]["JobRequest"]
    assert request["oneOf"] == [{"required": ["image_url"]}, {"required": ["image_base64"]}]
    assert request["properties"]["policies"]["minItems"] == 1
    assert request["properties"]["policies"]["items"]["enum"] == ["testworld"]
    assert request["properties"]["image_base64"]["maxLength"] == 66_668
    assert "null" not in str(request["properties"]["image_url"])
    problem = {"$ref": "#/components/schemas/Problem"}
    for path, method, statuses in (
        ("/v1/jobs", "post", {"200", "202", "400", "409", "413", "422", "429", "503"}),
        ("/v1/jobs:batch", "post", {"202", "400", "409", "413", "422", "429", "503"}),
        ("/v1/jobs/{job_id}", "get", {"200", "404", "422", "503"}),
    ):
        operation = spec["paths"][path][method]
        assert "security" not in operation and "401" not in operation["responses"]
        assert statuses <= set(operation["responses"]), (path, operation["responses"].keys())
        for status, answer in operation["responses"].items():
            if status[0] in "45":
                assert answer["content"] == {"application/problem+json": {"schema": problem}}
        assert "Retry-After" in operation["responses"]["503"]["headers"]


def test_every_error_is_problem_details(api: tuple[httpx.Client, RedisJobStore]) -> None:
    client, _ = api
    answers = {
        "404 route": client.get("/v2/nothing"),
        "405": client.put("/v1/jobs", json={}),
        "422 path": client.get("/v1/jobs/-not-an-id"),
        "422 body": client.post(
            "/v1/jobs", content=b"{not json", headers={"content-type": "application/json"}
        ),
        "404 review": client.get("/review/static/nope.js"),
        "401 review": client.post("/review/api/next"),
        "413 review": client.post("/review/login", content=b"u" * 70_000),
    }
    status, headers, body, _ = raw_exchange(
        str(client.base_url),
        "POST /v1/jobs HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
        "Content-Length: 999999999",
    )
    answers["413"] = httpx.Response(status, headers=headers, content=body)
    for name, answer in answers.items():
        assert answer.headers["content-type"] == "application/problem+json", (name, answer.text)
        body = answer.json()
        assert body["status"] == answer.status_code == int(name[:3]), (name, body)
        assert body["type"] == f"/problems/{body['code']}" and body["title"] and body["detail"]
    assert answers["405"].headers["allow"] == "POST"
    assert answers["413"].json()["code"] == "request_too_large"
    assert answers["401 review"].headers["www-authenticate"] == 'Cookie realm="/review"'


def test_broker_down_rolls_back_the_job(settings: Settings, redis_url: str) -> None:
    """The job record is removed again when the broker message cannot be published."""
    from moderation.adapters.memory import MemoryPublisher
    from moderation.app import create_app
    from moderation.compose.api import build_api
    from moderation.exceptions import QueueUnavailable

    s = pipeline_settings(settings, redis_url)
    store = RedisJobStore.from_url(redis_url, s.queue)
    broken = MemoryPublisher(fail=QueueUnavailable("broker down"))
    app = create_app(build_api(s, store=store, publisher=broken))
    transport = httpx.ASGITransport(app=app)

    import asyncio

    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            return await client.post(
                "/v1/jobs", json={"image_url": "https://example.com/k", "id": "j1"}
            )

    response = asyncio.run(go())
    assert response.status_code == 503
    assert response.json()["code"] == "queue_unavailable"
    assert store.get_job("j1") is None and store.get_result("j1") is None


def test_api_keys_guard_the_job_api_when_configured(settings: Settings, redis_url: str) -> None:
    from moderation.settings import ApiKey

    # The format before tenants: plain keys, all of tenant "default" (one tenant, two keys).
    s = pipeline_settings(settings, redis_url).model_copy(
        update={"api_keys": [ApiKey.model_validate(k) for k in ("key-one", "key-two")]}
    )
    server, base = start_api(s)
    try:
        with httpx.Client(base_url=base, timeout=10) as client:
            body = {"image_base64": _image(), "id": "keyed-1"}
            anonymous = client.post("/v1/jobs", json=body)
            assert anonymous.status_code == 401
            assert anonymous.headers["www-authenticate"] == 'Bearer realm="moderation"'
            wrong = client.post("/v1/jobs", json=body, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401 and wrong.json()["code"] == "unauthorized"
            empty = client.post("/v1/jobs", json=body, headers={"Authorization": "Bearer"})
            assert empty.status_code == 401
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


def test_tenant_rate_limits_and_the_queued_bytes_cap_over_http(
    settings: Settings, redis_url: str
) -> None:
    import os

    from pydantic import SecretStr

    from moderation.settings import ApiKey, TenantSettings

    acme, globex = "a" * 40, "g" * 40
    s = pipeline_settings(settings, redis_url, max_queued_bytes=400_000).model_copy(
        update={
            "api_keys": [
                ApiKey(tenant="acme", key=SecretStr(acme)),
                ApiKey(tenant="globex", key=SecretStr(globex)),
            ],
            # globex's own share is the whole queue: the global cap is what it meets.
            "tenants": {
                "acme": TenantSettings(rate_per_s=0.5, burst=3),
                "globex": TenantSettings(max_queued_bytes=400_000),
            },
        }
    )
    server, base = start_api(s)
    try:
        with httpx.Client(base_url=base, timeout=10) as client:
            as_acme = {"Authorization": f"Bearer {acme}"}
            as_globex = {"Authorization": f"Bearer {globex}"}
            job = {"image_url": "https://example.com/a.jpg"}
            limited_before = _counter(client, "rate_limited", "acme")
            full_before = _counter(client, "queue_full", "globex")
            for _ in range(3):
                assert client.post("/v1/jobs", json=job, headers=as_acme).status_code == 202
            limited = client.post("/v1/jobs", json=job, headers=as_acme)
            assert limited.status_code == 429, limited.text
            assert limited.headers["retry-after"] == "2"
            assert limited.headers["content-type"] == "application/problem+json"
            assert limited.json()["code"] == "rate_limited" and limited.json()["retry_after_s"] > 1
            assert client.post("/v1/jobs", json=job, headers=as_globex).status_code == 202
            # The global cap on bytes waiting for workers (no worker runs here).
            blob = base64.b64encode(os.urandom(100_000)).decode()
            answers = [
                client.post("/v1/jobs", json={"image_base64": blob}, headers=as_globex)
                for _ in range(5)
            ]
            assert [a.status_code for a in answers] == [202, 202, 202, 503, 503]
            full = answers[-1]
            assert full.json()["code"] == "queue_full" and full.headers["retry-after"] == "30"
            metrics = client.get("/metrics").text
            assert _counter(client, "rate_limited", "acme") - limited_before == 1
            assert _counter(client, "queue_full", "globex") - full_before == 2
            assert re.search(r"^moderation_queued_bytes 3\d{5}\.0$", metrics, re.M), metrics
    finally:
        stop_api(server)


def _counter(client: httpx.Client, code: str, tenant: str) -> float:
    text = client.get("/metrics").text
    found = re.search(
        rf'^moderation_jobs_rejected_total{{code="{code}",tenant="{tenant}"}} (\S+)$', text, re.M
    )
    return float(found.group(1)) if found else 0.0
