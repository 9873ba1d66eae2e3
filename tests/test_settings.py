"""One typed Settings object from the environment; secrets never shown."""

from __future__ import annotations

import pytest

from moderation.settings import Settings


def test_environment_with_nested_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODERATION_REDIS_URL", "redis://cache:6379/2")
    monkeypatch.setenv("MODERATION_QUEUE__BATCH_SIZE", "96")
    monkeypatch.setenv("MODERATION_MODEL__DEVICE", "cuda")
    monkeypatch.setenv("MODERATION_API_KEYS", '["k-1"]')
    monkeypatch.setenv("MODERATION_S3__SECRET_ACCESS_KEY", "very-secret-value")
    settings = Settings()
    assert settings.redis_url == "redis://cache:6379/2"
    assert settings.queue.batch_size == 96 and settings.model.device == "cuda"
    assert settings.api_keys[0].get_secret_value() == "k-1"
    assert "very-secret-value" not in repr(settings) and "k-1" not in repr(settings)


def test_insecure_defaults_are_named() -> None:
    assert Settings().insecure_defaults() == [
        "queue.callback_secret",
        "review.session_secret",
        "review.pseudonym_secret",
        "api_keys (the job API is open)",
    ]
    hardened = Settings(
        api_keys=["k"],
        queue={"callback_secret": "a"},
        review={"session_secret": "b", "pseudonym_secret": "c"},
    )
    assert hardened.insecure_defaults() == []


def test_invalid_values_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODERATION_MODEL__DEVICE", "tpu")
    with pytest.raises(ValueError, match="device"):
        Settings()
