"""One typed Settings object from the environment; secrets never shown; fail closed in
production."""

from __future__ import annotations

import json

import pytest

from moderation.exceptions import InsecureSettingsError
from moderation.settings import Settings

STRONG = "s" * 40


def test_environment_with_nested_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODERATION_REDIS_URL", "redis://cache:6379/2")
    monkeypatch.setenv("MODERATION_QUEUE__BATCH_SIZE", "96")
    monkeypatch.setenv("MODERATION_MODEL__DEVICE", "cuda")
    monkeypatch.setenv("MODERATION_API_KEYS", '["k-1"]')
    monkeypatch.setenv("MODERATION_S3__SECRET_ACCESS_KEY", "very-secret-value")
    settings = Settings()
    assert settings.redis_url == "redis://cache:6379/2"
    assert settings.queue.batch_size == 96 and settings.model.device == "cuda"
    assert settings.api_keys[0].key.get_secret_value() == "k-1"
    assert settings.api_keys[0].tenant == "default"  # the format before tenants still reads
    assert "very-secret-value" not in repr(settings) and "k-1" not in repr(settings)
    assert settings.environment == "production"  # unless said otherwise


def test_tenants_and_their_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = [{"tenant": "acme", "key": "a" * 40}, {"tenant": "globex", "key": "g" * 40}]
    monkeypatch.setenv("MODERATION_API_KEYS", json.dumps(keys))
    monkeypatch.setenv(
        "MODERATION_TENANTS", json.dumps({"acme": {"policies": ["nudity"], "burst": 50}})
    )
    settings = Settings()
    assert [(k.tenant, k.key.get_secret_value()) for k in settings.api_keys] == [
        ("acme", "a" * 40),
        ("globex", "g" * 40),
    ]
    assert settings.tenants["acme"].policies == ["nudity"]
    assert settings.tenant_names() == ["acme", "globex"]
    env = settings.to_env(base={})
    assert json.loads(env["MODERATION_API_KEYS"]) == keys  # a child process gets the same


def test_a_key_cannot_belong_to_two_tenants_and_names_are_bounded() -> None:
    with pytest.raises(ValueError, match="tenants 'a' and 'b'"):
        Settings(api_keys=[{"tenant": "a", "key": "k" * 40}, {"tenant": "b", "key": "k" * 40}])
    with pytest.raises(ValueError, match="tenant"):
        Settings(api_keys=[{"tenant": "Not A Name", "key": "k" * 40}])
    with pytest.raises(ValueError, match="tenant name"):
        Settings(tenants={"UPPER": {}})


def test_production_refuses_empty_short_and_default_secrets() -> None:
    """Fail closed: the issue's configuration (empty key, empty secrets) does not start."""
    hostile = Settings(
        api_keys=[""],
        queue={"callback_secret": ""},
        review={"session_secret": "", "pseudonym_secret": "short"},
    )
    problems = hostile.security_problems()
    assert problems == [
        "queue.callback_secret is empty",
        "review.session_secret is empty",
        "review.pseudonym_secret is shorter than 32 bytes",
        "an API key of tenant 'default' is empty",
        "api_keys has a key without a tenant (a plain string, the format before tenants): "
        'name its tenant, {"tenant": "<name>", "key": "..."}',
    ]
    with pytest.raises(InsecureSettingsError) as refused:
        hostile.enforce_security()
    assert "refusing to start in production" in str(refused.value)
    defaults = Settings()
    assert defaults.security_problems() == [
        "queue.callback_secret is the development default",
        "review.session_secret is the development default",
        "review.pseudonym_secret is the development default",
        "api_keys is empty (the job API is open to anyone)",
    ]
    with pytest.raises(InsecureSettingsError):
        defaults.enforce_security()
    short_key = Settings(
        api_keys=[{"tenant": "acme", "key": "too-short"}],
        queue={"callback_secret": STRONG},
        review={"session_secret": STRONG, "pseudonym_secret": STRONG + "p"},
    )
    assert short_key.security_problems() == ["an API key of tenant 'acme' is shorter than 32 bytes"]
    hardened = short_key.model_copy(
        update={"api_keys": Settings(api_keys=[{"tenant": "acme", "key": STRONG}]).api_keys}
    )
    assert hardened.security_problems() == [] and hardened.enforce_security() == []
    # Development mode starts, and says what would be refused.
    dev = Settings(environment="development")
    assert dev.enforce_security() == defaults.security_problems()
    assert STRONG not in repr(hardened)


def test_production_processes_refuse_to_start(tmp_path: object) -> None:
    from moderation.compose.api import build_api
    from moderation.compose.worker import build_worker

    for build in (build_api, build_worker):
        with pytest.raises(InsecureSettingsError):
            build(Settings(redis_url="redis://127.0.0.1:1/0"))


def test_invalid_values_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODERATION_MODEL__DEVICE", "tpu")
    with pytest.raises(ValueError, match="device"):
        Settings()


@pytest.mark.parametrize(
    "placeholder",
    [
        "change-me",
        "change-me-change-me-change-me-change-me",  # long enough, still a template's value
        "CHANGEME0123456789abcdef0123456789abcdef",
        "replace_me_with_32_random_bytes_from_openssl",
        "<32+ random bytes from openssl rand -hex 32>",
        "your-secret-key-goes-here-at-least-32-bytes",
    ],
)
def test_placeholder_secrets_and_keys_are_refused_whatever_their_length(
    placeholder: str,
) -> None:
    """The old committed Secret had ``change-me`` values: a template's placeholder is refused
    in production like a missing secret, for every secret, API key and the S3 credentials."""
    configured = Settings(
        api_keys=[{"tenant": "acme", "key": placeholder}],
        queue={"callback_secret": placeholder},
        review={"session_secret": placeholder, "pseudonym_secret": STRONG},
        s3={"access_key_id": "AKIAIOSFODNN7EXAMPLE", "secret_access_key": placeholder},
    )
    problems = configured.security_problems()
    flagged = {p.split(" is ")[0] for p in problems}
    assert flagged == {
        "queue.callback_secret",
        "review.session_secret",
        "an API key of tenant 'acme'",
        "s3.access_key_id",  # AWS's documented example key
        "s3.secret_access_key",
    }
    assert "review.session_secret is a placeholder, not a secret" in problems
    assert placeholder not in " ".join(problems)  # never echoes a secret
    with pytest.raises(InsecureSettingsError, match="placeholder"):
        configured.enforce_security()


def test_random_secrets_are_not_mistaken_for_placeholders() -> None:
    import secrets

    for _ in range(200):
        value = secrets.token_hex(32)
        ok = Settings(
            api_keys=[{"tenant": "acme", "key": value}],
            queue={"callback_secret": value},
            review={"session_secret": value, "pseudonym_secret": secrets.token_urlsafe(32)},
            s3={"access_key_id": "AKIA" + secrets.token_hex(8).upper(), "secret_access_key": value},
        )
        assert ok.security_problems() == []


def test_production_refuses_keys_whose_tenant_is_not_named() -> None:
    """A plain-string key (the format before tenants) or an entry without ``tenant`` belongs to
    tenant ``default`` by default, which production does not guess: the tenant must be named.
    ``default`` named explicitly is a tenant like any other."""
    strong = {
        "queue": {"callback_secret": STRONG},
        "review": {"session_secret": STRONG, "pseudonym_secret": STRONG + "p"},
    }
    unnamed = "api_keys has a key without a tenant"
    for keys in ([STRONG + "k"], [{"key": STRONG + "k"}]):
        settings = Settings(api_keys=keys, **strong)
        assert settings.api_keys[0].tenant == "default"
        assert [p for p in settings.security_problems() if p.startswith(unnamed)], keys
        with pytest.raises(InsecureSettingsError, match=unnamed):
            settings.enforce_security()
        dev = settings.model_copy(update={"environment": "development"})
        assert any(p.startswith(unnamed) for p in dev.enforce_security())  # a warning there
    named = Settings(api_keys=[{"tenant": "default", "key": STRONG + "k"}], **strong)
    assert named.security_problems() == []
    # A child process started from named keys gets them named, and nothing else.
    env = named.to_env(base={})
    assert json.loads(env["MODERATION_API_KEYS"]) == [{"tenant": "default", "key": STRONG + "k"}]
