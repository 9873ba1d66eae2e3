"""Attacks on the input edge (issue 17, items 2, 14 and 16), against the production-like start
(:mod:`tests.attack_support`: ``moderation api`` as its own process in production mode, real
valkey, two tenants). Each test failed on the code before the issue and passes now:

2.  the multipart upload took ids and options without the JSON   -> one request model (JobOptions):
    endpoint's validation: a plain-string key (tenant default)      the same 422s on both
    squatted ``acme/invoice-1``; CR/LF and 100 kB ids were          endpoints; an id never holds
    accepted; an integer id was a 500                               ``/``, so tenants' namespaces
                                                                     cannot meet; production
                                                                     refuses keys without a named
                                                                     tenant
14. a 200,000-deep ``[`` in the upload's ``jobs`` was a 500       -> a 422 (and every other JSON
                                                                     body a 4xx)
16. with no API keys the OpenAPI document still required a key   -> the document follows the
                                                                     configured security; the
                                                                     upload's one-entry-per-image
                                                                     rule is in it
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from moderation.settings import Settings
from tests.attack_support import KEY_A, Site, image_b64, start_api_process, started_site
from tests.pipeline_support import ROOT, pipeline_settings, png_bytes, start_api, stop_api
from tests.servers import valkey_url

pytestmark = pytest.mark.xdist_group("attacks_input")

#: A key in the format before tenants (a plain string: tenant ``default``).
PLAIN_KEY = "plain-" + "p" * 40
#: What a forged log line would start with (log escaping itself: tests/test_logs.py).
FORGED = "ERROR moderation.forged: "


@pytest.fixture(scope="module")
def site(test_model_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with (
        valkey_url() as url,
        started_site(test_model_settings, url, tmp_path_factory.mktemp("attacks-input")) as s,
    ):
        yield s


def _png(seed: int = 1) -> bytes:
    from moderation.testmodel import sample_images

    return png_bytes(sample_images("allow", 1, seed)[0][0])


def _upload(client: httpx.Client, jobs: Any, *, images: int = 1, **fields: Any) -> httpx.Response:
    data = {"jobs": jobs if isinstance(jobs, str) else json.dumps(jobs), **fields}
    files = [("image", (f"{i}.png", _png(i + 1), "image/png")) for i in range(images)]
    return client.post("/v1/jobs:upload", files=files, data=data)


def _fields(response: httpx.Response) -> list[str]:
    body = response.json()
    assert response.headers["content-type"].startswith("application/problem+json"), body
    return [error["field"] for error in body.get("errors", [])]


# --- 2 -------------------------------------------------------------------------------------------


def test_2_a_plain_string_key_cannot_take_another_tenants_id(site: Site, tmp_path: Path) -> None:
    """The issue's attack: a plain-string key (tenant ``default``, development mode here since
    production refuses such keys) uploads acme's id. It is refused, and acme's own id stays
    acme's."""
    keys = json.dumps([PLAIN_KEY, {"tenant": "acme", "key": KEY_A}])
    dev = site.settings.model_copy(update={"environment": "development"})
    proc, url = start_api_process(dev, tmp_path / "dev.log", MODERATION_API_KEYS=keys)
    try:
        with (
            httpx.Client(base_url=url, headers={"Authorization": f"Bearer {PLAIN_KEY}"}) as plain,
            httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY_A}"}) as acme,
        ):
            squat = _upload(plain, [{"id": "acme/invoice-1", "metadata": {"evil": True}}])
            assert squat.status_code == 422, squat.text
            assert _fields(squat) == ["jobs.0.id"]
            direct = plain.post(
                "/v1/jobs", json={"image_base64": image_b64(), "id": "acme/invoice-1"}
            )
            assert direct.status_code == 422 and _fields(direct) == ["id"]
            mine = acme.post(
                "/v1/jobs", json={"image_base64": image_b64(), "id": "invoice-1", "metadata": {}}
            )
            assert mine.status_code == 202, mine.text
            read = acme.get("/v1/jobs/invoice-1")
            assert read.status_code == 200 and read.json()["metadata"] == {}
    finally:
        proc.terminate()
        proc.wait(20)


def test_2_production_refuses_a_key_without_a_named_tenant(site: Site) -> None:
    env = {
        **site.settings.to_env(),
        "PYTHONPATH": str(ROOT),
        "MODERATION_API_KEYS": json.dumps([PLAIN_KEY, {"tenant": "acme", "key": KEY_A}]),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "moderation.cli", "api", "--port", "0"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    served = proc.stdout.readline()  # "serving the API on ..." once it listens; "" if it exits
    if served:
        proc.kill()
    _, errors = proc.communicate(timeout=60)
    assert not served and proc.returncode == 2, (served, errors[-2000:])
    message = " ".join(errors.split())
    assert "refusing to start in production" in message
    assert "api_keys has a key without a tenant" in message


#: Options each endpoint must refuse alike (422): the JSON API's rules, now also the upload's.
HOSTILE_OPTIONS = {
    "crlf id": {"id": f"a\r\n{FORGED}an admin signed in"},
    "trailing newline id": {"id": "invoice-2\n"},
    "100 kB id": {"id": "x" * 100_000},
    "integer id": {"id": 7},
    "null id": {"id": None},
    "slash id": {"id": "globex/invoice-1"},
    "65 policies": {"policies": ["testworld"] * 65},
    "empty policies": {"policies": []},
    "bad policy id": {"policies": ["../etc"]},
    "metadata not an object": {"metadata": ["a"]},
    "long callback": {"callback_url": "https://hooks.example/" + "a" * 5000},
    "unknown option": {"colour": "red"},
}


@pytest.mark.parametrize("options", HOSTILE_OPTIONS.values(), ids=HOSTILE_OPTIONS.keys())
def test_2_upload_options_are_validated_like_the_json_api(
    site: Site, options: dict[str, Any]
) -> None:
    with site.client(KEY_A) as acme:
        as_json = acme.post("/v1/jobs", json={"image_base64": image_b64(), **options})
        assert as_json.status_code == 422, as_json.text[:500]
        uploaded = _upload(acme, [options])
        assert uploaded.status_code == 422, uploaded.text[:500]
        fields = _fields(uploaded)
        assert fields and all(f.startswith("jobs.0.") for f in fields), fields
        assert [f.removeprefix("jobs.0.") for f in fields] == _fields(as_json)
        assert "\r" not in uploaded.text and FORGED not in uploaded.text  # nothing echoed raw


def test_2_shared_upload_fields_are_validated_too(site: Site) -> None:
    with site.client(KEY_A) as acme:
        files = [("image", ("a.png", _png(), "image/png"))]
        bad = acme.post("/v1/jobs:upload", files=files, data={"policies": ["Not A Policy"]})
        assert bad.status_code == 422 and _fields(bad) == ["policies.0"]
        many = acme.post("/v1/jobs:upload", files=files, data={"policies": ["testworld"] * 65})
        assert many.status_code == 422 and _fields(many) == ["policies"]
        # the valid form still works, and an entry's own options win over the shared ones
        ok = _upload(acme, [{"id": "shared-1", "metadata": {"n": 1}}], policies=["testworld"])
        assert ok.status_code == 202, ok.text
        stored = site.store.get_job("acme/shared-1")
        assert stored is not None and stored.policies == ["testworld"]
        assert stored.metadata == {"n": 1}


# --- 14 ------------------------------------------------------------------------------------------


def test_14_deeply_nested_json_is_a_client_error_everywhere(site: Site) -> None:
    deep = "[" * 200_000
    with site.client(KEY_A) as acme:
        upload = _upload(acme, deep)
        assert upload.status_code == 422, upload.text[:300]
        assert upload.json()["code"] == "invalid_request" and _fields(upload) == ["jobs"]
        assert "recursion limit" in upload.json()["detail"] and deep[:50] not in upload.text
        nested = '[{"metadata": ' + '{"a": ' * 100_000 + "1" + "}" * 100_000 + "}]"
        inner = _upload(acme, nested)
        assert inner.status_code == 422 and _fields(inner) == ["jobs"]
        for path in ("/v1/jobs", "/v1/jobs:batch", "/v1/jobs:lookup"):
            answer = acme.post(path, content=deep, headers={"Content-Type": "application/json"})
            assert 400 <= answer.status_code < 500, (path, answer.status_code, answer.text[:300])
            assert answer.headers["content-type"].startswith("application/problem+json")
        deep_metadata = '{"a": ' * 100_000 + "1" + "}" * 100_000
        metadata = f'{{"image_base64": "{image_b64()}", "metadata": {deep_metadata}}}'
        answer = acme.post(
            "/v1/jobs", content=metadata, headers={"Content-Type": "application/json"}
        )
        assert 400 <= answer.status_code < 500, answer.text[:300]
        # JSON lets a string hold a lone surrogate; Unicode text cannot: a 4xx, never a 500
        for body in (
            f'{{"image_base64": "{image_b64()}", "metadata": {{"a": "\\ud800"}}}}',
            f'{{"image_base64": "{image_b64()}", "metadata": {{"\\udc00": 1}}}}',
        ):
            answer = acme.post(
                "/v1/jobs", content=body, headers={"Content-Type": "application/json"}
            )
            assert answer.status_code == 400 and answer.json()["code"] == "metadata_invalid"
        surrogate = _upload(acme, '[{"metadata": {"a": "\\ud800"}}]')
        assert surrogate.status_code == 422 and _fields(surrogate) == ["jobs"]
        # a URL with CR/LF is no URL (and would reach the worker's logs)
        forged = acme.post("/v1/jobs", json={"image_url": f"https://a.example/x\r\n{FORGED}"})
        assert forged.status_code == 400 and forged.json()["code"] == "bad_reference"
    with httpx.Client(base_url=site.url, timeout=30) as anonymous:  # the reviewers' JSON API
        answer = anonymous.post(
            "/review/api/decide",
            content="[" * 60_000,  # under the 64 KiB limit of those routes
            headers={"Content-Type": "application/json"},
        )
        assert 400 <= answer.status_code < 500, answer.text[:300]
    assert "Traceback" not in site.log.read_text(errors="replace")


# --- 16 ------------------------------------------------------------------------------------------


def _operations(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [op for item in spec["paths"].values() for op in item.values()]


def test_16_the_document_describes_the_security_configured(
    site: Site, test_model_settings: Settings
) -> None:
    with site.client(KEY_A) as acme:  # in production the document needs a key (item 12)
        keyed = acme.get("/openapi.json").json()
    assert keyed["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    v1 = [
        op
        for path, item in keyed["paths"].items()
        if path.startswith("/v1")
        for op in item.values()
    ]
    assert v1 and all(op["security"] == [{"apiKey": []}] and "401" in op["responses"] for op in v1)
    upload = keyed["paths"]["/v1/jobs:upload"]["post"]["requestBody"]["content"]
    jobs = upload["multipart/form-data"]["schema"]["properties"]["jobs"]
    assert "exactly one entry per `image` part" in jobs["description"]
    assert (
        jobs["items"]["properties"]["id"]["pattern"]
        == keyed["components"]["schemas"]["JobRequest"]["properties"]["id"]["pattern"]
    )
    # The same API with no keys (the demo): open, and its document says so.
    open_settings = pipeline_settings(test_model_settings, site.settings.redis_url or "")
    assert open_settings.api_keys == []
    server, url = start_api(open_settings)
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            spec = client.get("/openapi.json").json()
            answer = client.post("/v1/jobs", json={"image_base64": image_b64(), "id": "open-1"})
    finally:
        stop_api(server)
    assert answer.status_code == 202, answer.text  # really open
    assert "securitySchemes" not in spec.get("components", {})
    assert all("security" not in op and "401" not in op["responses"] for op in _operations(spec))
    assert "no API keys configured" in spec["info"]["description"]
