"""Tenant S3 sources and what tenants are told about fetches: fast unit tests over the pure
rules, the S3 source without any network, and the submit/process use cases over the twins.
The same attacks against real processes and an S3 server: tests/test_attacks_sources.py."""

from __future__ import annotations

import logging

import pytest
from pydantic import SecretStr, ValidationError

from moderation.adapters.memory import (
    MemoryJobStore,
    MemoryPublisher,
    MemoryRateLimiter,
    MemoryWorkerRegistry,
)
from moderation.adapters.s3_source import S3Source
from moderation.compose.registries import build_sources
from moderation.core.admission import Tenant
from moderation.core.fetch_errors import tenant_fetch_error
from moderation.core.image_ref import ImageRef
from moderation.core.jobs import Job
from moderation.core.source_access import S3Grant, grant_for, plain_key
from moderation.exceptions import (
    ImageFetchError,
    ImageFetchTransient,
    JobRejected,
    SourceNotAllowed,
    UrlRefusedError,
)
from moderation.pipeline.process import _fetch_error
from moderation.pipeline.submit import PolicyCatalog, SubmitRequest, Submitter
from moderation.settings import QueueSettings, S3Settings, Settings, TenantS3Source, TenantSettings
from tests.servers import free_port

# --- the pure rules -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "plain"),
    [
        ("uploads/cat.png", True),
        ("uploads/a.b/cat..png", True),
        ("uploads/", True),
        ("uploads/../private/cat.png", False),
        ("uploads/./cat.png", False),
        ("uploads//cat.png", False),
        ("/uploads/cat.png", False),
        ("uploads/..", False),
        ("uploads\\..\\private", False),
        ("uploads/\ncat.png", False),
    ],
)
def test_plain_keys(key: str, plain: bool) -> None:
    assert plain_key(key) is plain


def test_grants_match_bucket_exactly_and_prefix_literally() -> None:
    grants = (S3Grant("media", "acme/", 0), S3Grant("shared", "", 1))
    assert grant_for(grants, "media", "acme/cat.png") == grants[0]
    assert grant_for(grants, "shared", "any/key.png") == grants[1]  # the whole bucket
    # dot segments never pass, not even in a whole-bucket grant (path-style: another bucket)
    assert grant_for(grants, "shared", "../media/acme/cat.png") is None
    for bucket, key in [
        ("media", "globex/cat.png"),
        ("media", "acme-evil/cat.png"),
        ("media", "acme/../globex/cat.png"),
        ("Media", "acme/cat.png"),
        ("media-2", "acme/cat.png"),
        ("other", "acme/cat.png"),
    ]:
        assert grant_for(grants, bucket, key) is None, (bucket, key)
    assert grant_for((), "media", "acme/cat.png") is None


# --- the S3 source: refusals without any request --------------------------------------------------


def _settings(**tenants: TenantSettings) -> Settings:
    # The endpoint is a port nothing listens on: a request would fail with a transient error,
    # never with ``source_not_allowed``.
    s3 = S3Settings(endpoint_url=f"http://127.0.0.1:{free_port()}", max_attempts=1)
    return Settings(s3=s3, tenants=tenants)


ACME = TenantSettings(
    s3_sources=[
        TenantS3Source(bucket="media", prefix="acme/"),
        TenantS3Source(
            bucket="acme-own",
            endpoint_url="https://s3.acme.example",
            region="eu-west-1",
            access_key_id=SecretStr("AKIAACME"),
            secret_access_key=SecretStr("acme-secret-" + "x" * 30),
        ),
    ]
)


@pytest.mark.parametrize(
    ("tenant", "ref"),
    [
        ("globex", "s3://media/acme/cat.png"),  # no sources: no S3 at all
        ("acme", "s3://media/globex/cat.png"),
        ("acme", "s3://media/acme/../globex/cat.png"),
        ("acme", "s3://acme-own/../media/globex/cat.png"),
        ("acme", "s3://service-bucket/audit/x"),
        ("unknown", "s3://media/acme/cat.png"),
        (None, "s3://media/acme/cat.png"),  # no tenant: only the operator's tools
    ],
)
def test_s3_outside_the_grants_is_refused_before_any_request(tenant: str | None, ref: str) -> None:
    source = S3Source(_settings(acme=ACME, globex=TenantSettings()))
    for call in (source.check, source.fetch):
        with pytest.raises(SourceNotAllowed) as info:
            call(ImageRef(uri=ref), tenant=tenant)
        assert info.value.code == "source_not_allowed" and not info.value.transient
        assert "media" not in str(info.value) and "globex" not in str(info.value)
    assert source._clients == {}  # no client was even built


def test_s3_inside_the_grants_reads_with_the_grants_identity() -> None:
    source = S3Source(_settings(acme=ACME))
    source.check(ImageRef(uri="s3://media/acme/cat.png"), tenant="acme")
    with pytest.raises(ImageFetchTransient):  # allowed: the request is sent (and fails)
        source.fetch(ImageRef(uri="s3://media/acme/cat.png"), tenant="acme")
    service = source._client(("acme", 0))
    assert service is source.s3  # no endpoint or credentials of its own: the service's client
    own = source._client(("acme", 1))
    assert own is not service
    assert own.meta.endpoint_url == "https://s3.acme.example"
    assert own.meta.region_name == "eu-west-1"
    assert own._request_signer._credentials.access_key == "AKIAACME"


def test_only_the_operators_sources_read_s3_without_a_tenant() -> None:
    settings = _settings(acme=ACME)
    api = build_sources(settings, None)
    cli = build_sources(settings, None, local_files=True)
    ref = ImageRef(uri="s3://anything/at/all.png")
    with pytest.raises(SourceNotAllowed):
        api.fetch(ref, tenant=None)
    with pytest.raises(ImageFetchTransient):  # the operator may: the request is sent
        cli.fetch(ref, tenant=None)
    assert "file" not in api.public_schemes and "file" not in cli.public_schemes
    with pytest.raises(UrlRefusedError) as info:
        api.fetch(ImageRef(uri="file:///etc/hostname"), tenant="acme")
    assert info.value.code == "bad_scheme"


def test_tenant_s3_credentials_come_in_pairs_and_are_never_placeholders() -> None:
    with pytest.raises(ValidationError, match="both"):
        TenantS3Source(bucket="media", access_key_id=SecretStr("AKIA"))
    placeholder = TenantSettings(
        s3_sources=[
            TenantS3Source(
                bucket="media",
                access_key_id=SecretStr("AKIAREAL"),
                secret_access_key=SecretStr("change-me"),
            )
        ]
    )
    problems = Settings(tenants={"acme": placeholder}).security_problems()
    assert "tenants.acme.s3_sources[0].secret_access_key is a placeholder" in problems
    assert not any("change-me" in p for p in problems)


def test_tenant_sources_survive_the_environment_of_a_child_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = Settings(tenants={"acme": ACME})
    for name, value in settings.to_env({}).items():
        monkeypatch.setenv(name, value)
    assert Settings().tenants == settings.tenants


# --- submit: a 422 with its own code ------------------------------------------------------------


def _submitter(settings: Settings) -> Submitter:
    store = MemoryJobStore()
    return Submitter(
        store=store,
        publisher=MemoryPublisher(),
        sources=build_sources(settings, store),
        catalog=PolicyCatalog(MemoryWorkerRegistry(), lambda: {"p"}),
        settings=QueueSettings(),
        check_callback_url=lambda url: None,
        limiter=MemoryRateLimiter(),
    )


def test_submit_refuses_s3_outside_the_tenants_sources_with_422() -> None:
    submitter = _submitter(_settings(acme=ACME))
    acme, globex = Tenant("acme"), Tenant("globex")
    accepted = submitter.submit([SubmitRequest(image_url="s3://media/acme/a.png")], tenant=acme)
    assert len(accepted) == 1
    answers = []
    for tenant, ref in [
        (globex, "s3://media/acme/a.png"),
        (globex, "s3://media/acme/missing.png"),
        (acme, "s3://media/globex/a.png"),
    ]:
        with pytest.raises(JobRejected) as info:
            submitter.submit([SubmitRequest(image_url=ref)], tenant=tenant)
        answers.append((info.value.status, info.value.code, str(info.value)))
    assert answers[0] == answers[1] == answers[2]
    assert answers[0][:2] == (422, "source_not_allowed")


# --- what a tenant is told about a failed fetch -------------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [
        UrlRefusedError(
            "refused to connect to vm (127.0.0.1): loopback; add it to "
            "MODERATION_QUEUE__ALLOW_PRIVATE_HOSTS"
        ),
        ImageFetchError("host 'db.internal' does not resolve: NXDOMAIN", code="dns_failed"),
        ImageFetchTransient("http://10.0.0.5:6379/: connection failed (ConnectError)"),
        ImageFetchTransient("http://10.0.0.5:80/: timed out", code="fetch_timeout"),
        ImageFetchError("http://10.0.0.5/: bad URL or response"),
    ],
)
def test_network_failures_look_the_same_to_the_tenant(
    exc: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    job = Job(
        id="acme/j-1",
        tenant="acme",
        image=ImageRef(uri="http://vm:6379/\r\nFORGED line"),
        fingerprint="f",
    )
    with caplog.at_level(logging.WARNING, logger="moderation.pipeline.process"):
        error = _fetch_error(job, exc, attempts=2)  # type: ignore[arg-type]
    assert error.code == "fetch_failed"
    assert error.message == tenant_fetch_error("url_refused")[1]
    for leak in ("127.0.0.1", "10.0.0.5", "vm", "6379", "MODERATION_", "resolve", "internal"):
        assert leak not in error.message
    # The operator's log has the detail, escaped: no line of it starts with the tenant's text.
    logged = caplog.records[-1].getMessage()
    assert str(exc)[:15] in logged and "FORGED" in logged
    assert "\n" not in logged and "\r" not in logged


def test_codes_about_the_tenants_own_content_are_kept() -> None:
    for code in ("not_found", "forbidden", "fetch_too_large", "source_not_allowed", "http_4xx"):
        kept, message = tenant_fetch_error(code)
        assert kept == code and message
    assert tenant_fetch_error("url_refused")[0] == "fetch_failed"
    assert tenant_fetch_error("dns_failed") == tenant_fetch_error("fetch_transient")


def test_a_tenant_source_in_the_services_own_buckets_refuses_a_production_start() -> None:
    from moderation.settings import AuditSettings, BlobSettings, ModelSettings

    settings = Settings(
        audit=AuditSettings(bucket="svc-audit"),
        blobs=BlobSettings(bucket="svc-blobs"),
        model=ModelSettings(checkpoint_source="s3://svc-weights/clip.safetensors"),
        tenants={
            "acme": TenantSettings(
                s3_sources=[
                    TenantS3Source(bucket="svc-blobs", prefix="evidence/"),
                    TenantS3Source(bucket="acme-media"),
                    # the same bucket name on the tenant's own store is not the service's
                    TenantS3Source(bucket="svc-audit", endpoint_url="https://s3.acme.example"),
                    TenantS3Source(bucket="svc-weights"),
                ]
            )
        },
    )
    problems = [p for p in settings.security_problems() if p.startswith("tenants.")]
    assert problems == [
        "tenants.acme.s3_sources[0] names bucket 'svc-blobs', the service's own (blobs.bucket): "
        "its jobs could read the service's data",
        "tenants.acme.s3_sources[3] names bucket 'svc-weights', the service's own "
        "(model.checkpoint_source): its jobs could read the service's data",
    ]
