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
    from moderation.compose import build_api, build_worker

    for build in (build_api, build_worker):
        with pytest.raises(InsecureSettingsError):
            build(Settings(redis_url="redis://127.0.0.1:1/0"))


def test_invalid_values_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODERATION_MODEL__DEVICE", "tpu")
    with pytest.raises(ValueError, match="device"):
        Settings()
