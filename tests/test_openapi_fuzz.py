"""Property-based fuzzing of the running API against its own OpenAPI document (schemathesis):
a real uvicorn server, a real valkey server, in two configurations: two tenants with API keys
(production-like), and no keys at all (the open API of ``moderation demo``, whose document
requires no key).

For every operation, schema-valid requests are generated (a fixed seed, a bounded number of
examples) and sent over HTTP (with a tenant's key where keys exist). Every answer must

- never be a 5xx (``not_a_server_error``),
- be documented for its operation, with its content type, headers and schema
  (``status_code_conformance``, ``content_type_conformance``, ``response_headers_conformance``,
  ``response_schema_conformance``),
- accept the request: a schema-valid request may only be refused for what the schema cannot
  know (:data:`SEMANTIC`: an id already used for a different request, metadata size and depth,
  rate limits), never for its shape (``accepts_valid_requests``, replacing schemathesis's
  status-only ``positive_data_acceptance``),
- and, where the document requires a key, a request without it must be refused with 401
  (``ignored_auth``); where it requires none, a request without one is accepted like any other.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from pydantic import SecretStr
from schemathesis.specs.openapi.checks import positive_data_acceptance

from moderation.adapters.memory import MemoryAppealStore, MemoryNoticeStore, MemoryReviewQueue
from moderation.settings import ApiKey, Settings
from tests.pipeline_support import pipeline_settings, start_api, stop_api

pytestmark = pytest.mark.xdist_group("fuzz")

KEY = "fuzz-tenant-" + "k" * 40
#: Refusals a schema-valid request may get: what the schema cannot express.
SEMANTIC = {
    (409, "id_conflict"),
    (413, "metadata_too_large"),
    (400, "metadata_too_deep"),
    (429, "rate_limited"),
    (429, "tenant_queue_full"),
    (429, "priority_quota_exceeded"),  # the tenant's priority-lane quota (settings)
    (403, "priority_not_allowed"),
    (403, "trusted_flagger_not_allowed"),  # a tenant not allowed trusted flaggers' notices
    (422, "source_not_allowed"),  # an s3:// reference outside the tenant's S3 sources
    (404, "job_not_found"),  # a well-formed id of no job
    (404, "appeal_not_found"),  # a well-formed id of no appeal
    # A job the fuzzing of POST /v1/jobs created ("0", ...) exists but has not ended (no
    # worker here): nothing to review or appeal yet.
    (409, "notice_not_reviewable"),
    (409, "appeal_not_allowed"),
    (409, "appeal_limit_reached"),
    (400, "bad_options"),  # an upload's per-image options not one per image
}
#: Examples per operation (13 operations): a few hundred requests, well under a minute.
EXAMPLES = 50


@pytest.fixture(scope="module")
def fuzz_redis() -> Iterator[str]:
    from tests.servers import valkey_url

    with valkey_url() as url:
        yield url


@pytest.fixture(scope="module", params=["keyed", "open"])
def fuzz_api(
    request: pytest.FixtureRequest,
    test_model_settings: Settings,
    fuzz_redis: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, dict[str, str]]]:
    """(base URL, headers of every request): keyed (two tenants) or open (no keys)."""
    root = tmp_path_factory.mktemp("fuzz")
    keys = [
        ApiKey(tenant="acme", key=SecretStr(KEY)),
        ApiKey(tenant="globex", key=SecretStr("other-" + "o" * 40)),
    ]
    base = test_model_settings.model_copy(
        update={
            "audit": test_model_settings.audit.model_copy(
                update={"local_dir": root / "audit", "spool_dir": root / "spool"}
            ),
            "api_keys": keys if request.param == "keyed" else [],
        }
    )
    # Notices and appeals live in PostgreSQL; twins stand in for it here (the API is what is
    # fuzzed).
    review = MemoryReviewQueue()
    server, url = start_api(
        pipeline_settings(base, fuzz_redis),
        notices=MemoryNoticeStore(),
        review_queue=review,
        appeal_store=MemoryAppealStore(review),
    )
    try:
        yield url, {"Authorization": f"Bearer {KEY}"} if request.param == "keyed" else {}
    finally:
        stop_api(server)


OPERATIONS = [
    ("POST", "/v1/jobs"),
    ("POST", "/v1/jobs:batch"),
    ("POST", "/v1/jobs:upload"),
    ("POST", "/v1/jobs:lookup"),
    ("GET", "/v1/jobs/{job_id}"),
    ("POST", "/v1/jobs/{job_id}/notices"),
    ("GET", "/v1/notices/{notice_id}"),
    ("POST", "/v1/jobs/{job_id}/appeals"),
    ("GET", "/v1/jobs/{job_id}/appeals"),
    ("GET", "/v1/appeals/{appeal_id}"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
]


def accepts_valid_requests(ctx: Any, response: Any, case: Any) -> None:
    """A schema-valid request is accepted, or refused only for a reason in :data:`SEMANTIC`."""
    if response.status_code < 400 or response.status_code >= 500:
        return
    try:
        code = response.json().get("code")
    except ValueError:
        code = None
    if (response.status_code, code) not in SEMANTIC:
        raise AssertionError(
            f"schema-valid request refused: {case.method} {case.path} -> "
            f"{response.status_code} {code}: {response.text[:500]}\nbody: {str(case.body)[:500]}"
        )


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_the_running_api_keeps_its_contract(
    fuzz_api: tuple[str, dict[str, str]], method: str, path: str
) -> None:
    fuzz_url, headers = fuzz_api
    api = schemathesis.openapi.from_url(f"{fuzz_url}/openapi.json")
    operations = {
        (op.method.upper(), op.path): op for op in (r.ok() for r in api.get_all_operations())
    }
    assert set(operations) == set(OPERATIONS), sorted(operations)  # every operation is fuzzed
    seen: list[int] = []

    @given(case=operations[(method, path)].as_strategy())
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,  # the same examples on every run
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
        phases=[Phase.explicit, Phase.generate],
    )
    def run(case: Any) -> None:
        response = case.call_and_validate(
            headers=headers,
            excluded_checks=[positive_data_acceptance],
            additional_checks=[accepts_valid_requests],
            timeout=30,
        )
        seen.append(response.status_code)

    run()
    print(f"\n{method} {path}: {len(seen)} examples, statuses {sorted(set(seen))}")
    assert seen  # parameterless operations have a single example
