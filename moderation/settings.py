"""One typed Settings object, built at the entry point from the environment and passed down.

Every field can be set as ``MODERATION_<FIELD>`` (nested: ``MODERATION_AUDIT__BUCKET``). Tests
build ``Settings(...)`` directly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "AuditSettings",
    "EmbeddingSettings",
    "ImageLimits",
    "ModelSettings",
    "QueueSettings",
    "ReviewSettings",
    "S3Settings",
    "Settings",
]


class ModelSettings(BaseModel):
    """Which CLIP model to run. A local ``checkpoint`` wins over a ``pretrained`` tag."""

    architecture: str = "ViT-B-32"
    pretrained: str | None = "laion2b_s34b_b79k"
    checkpoint: Path | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    #: When the configured weights cannot be loaded, run on the bundled synthetic test model
    #: (loudly). Production deployments set this to false so a missing model is fatal.
    fallback_to_test_model: bool = True
    text_batch_size: int = 256
    threads: int | None = None


class ImageLimits(BaseModel):
    """Fetching and decoding limits for untrusted images (the image sources and the decoder)."""

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_side: int = 20_000
    formats: list[str] = Field(
        default_factory=lambda: ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO"]
    )
    #: Animated images: how many frames to sample (evenly spaced); the verdict is the most severe.
    max_frames: int = 1
    #: Decode JPEGs in draft mode to about this size before the model's own preprocessing.
    draft_size: int = 448
    #: HTTP(S) fetches: TCP/TLS connect timeout (read timeout: ``queue.http_timeout_s``).
    connect_timeout_s: float = 3.0
    #: HTTP(S) fetches: redirects followed, each hop re-checked by the SSRF guard.
    max_redirects: int = 5
    #: HTTP(S) fetches: wall-clock cap on one whole download (a server trickling bytes).
    fetch_deadline_s: float = 60.0


class S3Settings(BaseModel):
    endpoint_url: str | None = None
    region: str = "us-east-1"
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 10.0
    max_attempts: int = 3


class QueueSettings(BaseModel):
    """The queue pipeline: Celery on Redis, workers, retries, callbacks."""

    batch_size: int = 32
    batch_wait_ms: int = 50
    result_ttl_s: int = 7 * 24 * 3600
    visibility_timeout_s: int = 300
    http_timeout_s: float = 10.0
    allow_private_hosts: list[str] = Field(default_factory=list)
    callback_secret: SecretStr = SecretStr("change-me")
    max_inline_bytes: int = 10 * 1024 * 1024
    #: Worker threads per process (fetch + decode + prepare); default 2 x batch_size.
    concurrency: int | None = None
    #: Broker messages reserved per worker thread (kombu QoS); the batcher needs a full batch.
    prefetch_multiplier: int = 2
    #: How often unacked messages of dead workers are checked / restored (seconds).
    unacked_restore_interval_s: float = 2.0
    unacked_restore_throttle_s: float = 1.0
    #: Transient errors: retries with exponential backoff, then an error result.
    max_retries: int = 4
    retry_backoff_s: float = 1.0
    retry_backoff_max_s: float = 60.0
    #: Deliveries not explained by retries (worker crashes) before a job is dead-lettered.
    max_deliveries: int = 4
    #: Callback delivery attempts (exponential backoff) before giving up.
    callback_max_attempts: int = 6
    callback_backoff_s: float = 2.0
    #: Lost-message sweep: a job still pending this long after it was published, whose message
    #: is neither queued nor unacked, is published again (None: 2 x visibility_timeout_s).
    lost_after_s: float | None = None
    #: A worker serves its host's Prometheus metrics on this port (None: only through the API).
    worker_metrics_port: int | None = None
    #: How often a worker runs the lost-message sweep (seconds; 0 disables).
    sweep_interval_s: float = 15.0
    #: Seconds between checks of the policy files' content hash (hot reload); 0 disables.
    policy_reload_s: float = 5.0
    #: Inline image bytes live in Redis this long (the job must run before then).
    inline_ttl_s: int = 24 * 3600
    key_prefix: str = "mod:"
    queue_name: str = "moderation"
    callback_queue_name: str = "moderation-callbacks"
    #: Batch endpoint: most jobs in one request.
    max_batch_jobs: int = 1000


class ReviewSettings(BaseModel):
    """The human-review queue and the reviewers' pages."""

    lease_s: int = 300
    session_secret: SecretStr = SecretStr("dev-only-change-me")
    pseudonym_secret: SecretStr = SecretStr("dev-only-change-me-too")
    #: Redis key prefix of the review queue and the reviewer accounts.
    key_prefix: str = "mod:review:"
    #: Review priority doubles every this many seconds of waiting (nothing starves).
    age_doubling_s: float = 900.0
    #: Session cookie lifetime; reviewers sign in again after this.
    session_ttl_s: int = 12 * 3600
    #: Set true behind TLS so the session cookie is only sent over HTTPS.
    cookie_secure: bool = False


class AuditSettings(BaseModel):
    """The append-only audit log. No bucket: segments go to ``local_dir``."""

    bucket: str | None = None
    prefix: str = "audit/"
    local_dir: Path = Path(".moderation/audit")
    spool_dir: Path = Path(".moderation/audit-spool")
    retention_days: int = 2555
    retention_mode: Literal["GOVERNANCE", "COMPLIANCE"] = "COMPLIANCE"
    segment_max_records: int = 1000
    segment_max_age_s: float = 5.0
    #: Spool files rotate at this size; uploaded ones are deleted.
    spool_file_max_bytes: int = 64 * 1024 * 1024
    #: Longest wait between upload retries while the store is unreachable (backoff doubles).
    retry_max_s: float = 30.0


class EmbeddingSettings(BaseModel):
    """Stored image embeddings, for ``moderation policy backtest`` (off by default: they are data
    derived from users' images; ``moderation demo`` turns them on)."""

    #: Workers keep each decided item's image embedding (float16) with the model identity.
    store: bool = False
    #: The Redis that holds them (None: ``redis_url``). Give long histories a Redis of their own.
    redis_url: str | None = None
    key: str = "mod:embeddings"
    #: Retention limit: entries older than this are dropped on write.
    retention_s: int = 30 * 24 * 3600
    #: Memory bound: at most about this many entries (None: no cap).
    max_items: int | None = 1_000_000


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MODERATION_", env_nested_delimiter="__", extra="ignore"
    )

    policy_paths: list[Path] = Field(default_factory=lambda: [Path("policies")])
    cache_dir: Path = Path(".moderation/cache")
    model: ModelSettings = ModelSettings()
    images: ImageLimits = ImageLimits()
    redis_url: str | None = None  # None: the main job starts an embedded server
    s3: S3Settings = S3Settings()
    queue: QueueSettings = QueueSettings()
    review: ReviewSettings = ReviewSettings()
    audit: AuditSettings = AuditSettings()
    embeddings: EmbeddingSettings = EmbeddingSettings()
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    #: Keys upstream services send as ``Authorization: Bearer <key>`` on ``/v1/*``. Empty: the
    #: job API is open (the embedded demo); set them in every real deployment.
    api_keys: list[SecretStr] = Field(default_factory=list)
    log_level: str = "INFO"

    def insecure_defaults(self) -> list[str]:
        """Settings still at their development defaults (secrets in this file, an open API)."""
        fields = {
            "queue.callback_secret": (self.queue.callback_secret, QueueSettings()),
            "review.session_secret": (self.review.session_secret, ReviewSettings()),
            "review.pseudonym_secret": (self.review.pseudonym_secret, ReviewSettings()),
        }
        found = [
            name
            for name, (value, default) in fields.items()
            if value == getattr(default, name.split(".")[1])
        ]
        if not self.api_keys:
            found.append("api_keys (the job API is open)")
        return found

    def to_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """An environment that makes ``Settings()`` in a child process equal these settings
        (secrets included): ``base`` (default ``os.environ``) without its ``MODERATION_*``
        variables, plus one variable per field."""
        env = {
            k: v
            for k, v in (os.environ if base is None else base).items()
            if not k.startswith("MODERATION_")
        }
        for name in type(self).model_fields:
            value = _plain(getattr(self, name))
            if value is not None:
                env[f"MODERATION_{name.upper()}"] = (
                    value if isinstance(value, str) else json.dumps(value)
                )
        return env


def _plain(value: Any) -> Any:
    """JSON-ready data of a settings value, secrets revealed (for a child's environment)."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, BaseModel):
        return {k: _plain(getattr(value, k)) for k in type(value).model_fields}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
