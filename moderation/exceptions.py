"""The project's one exception tree.

::

    ModerationError
    ├── TransientError              retry with backoff; the same call may succeed later
    │   ├── ImageFetchTransient     network error, timeout, 5xx, S3 throttling
    │   ├── QueueUnavailable        Redis down
    │   ├── DatabaseUnavailable     PostgreSQL down, restarting, or its pool exhausted
    │   ├── QueueFull               the global cap on queued bytes is reached (503)
    │   ├── ApiUnavailable          moderation API unreachable / 5xx (client)
    │   ├── JobWaitTimeout          a job did not end in time (client wait)
    │   └── AuditSinkUnavailable    S3 down (records go to the local spool)
    └── PermanentError              retrying cannot help; fail the job at once with this reason
        ├── ConfigurationError          settings that cannot work
        │   ├── InsecureSettingsError   production start with weak secrets or keys
        │   └── MigrationError          a schema migration failed or cannot be read
        ├── JobRequestError             queue pipeline requests
        │   ├── JobRejected             the API refused a job (4xx)
        │   │   ├── JobConflict         the id exists with a different request (409)
        │   │   └── RateLimited         the tenant's rate or quota is used up (429)
        │   │       └── TenantQueueFull the tenant's share of the queued bytes is used up
        │   │   └── AppealRefused       not appealable, window closed, appeals used up (409)
        │   └── JobNotFoundError        unknown or expired job id
        │       └── AppealNotFound      no such appeal of this tenant
        ├── PolicyError
        │   ├── PolicyValidationError   file:line: field: message (one or many)
        │   ├── DuplicatePolicyError
        │   ├── PolicyVersionConflict   a shadow with its live version's number, other content
        │   └── UnknownPolicyError
        ├── ModelError
        │   └── ModelUnavailableError   weights missing / not downloadable
        ├── ImageError
        │   ├── ImageDecodeError        corrupt, truncated, not an image
        │   ├── ImageTooLargeError      byte size or pixel count (decompression bomb)
        │   ├── UnsupportedImageFormat  format outside the allowlist
        │   │   └── UnsupportedFormatError  a well-formed file of another kind (PDF, ZIP, audio)
        │   ├── ImageFetchError         404, refused URL (SSRF guard), bad scheme
        │   └── (video, docs/video.md; each also one of the three above)
        │       ├── VideoDecodeError        video_corrupt: truncated, corrupt packets, no frames
        │       │   ├── VideoNoStream       video_no_stream: no video stream (audio only)
        │       │   └── VideoFrameRateError video_frame_rate: zero, absurd or unknown frame rate
        │       ├── VideoTooLargeError      video_too_large: bytes, pixels per frame, side
        │       │   ├── VideoTooLongError   video_too_long: duration over video.max_duration_s
        │       │   └── VideoDecodeLimit    video_decode_limit: frames decoded or CPU seconds
        │       └── UnsupportedVideoCodec   video_codec: a container or codec outside the list
        │       ├── UrlRefusedError         bad scheme / internal address (SSRF guard)
        │       ├── SourceNotAllowed        outside the tenant's S3 sources (or no tenant)
        │       └── ImageFetchTooLarge      remote object over images.max_bytes
        ├── ReviewError                 lease expired, not the holder, bad decision
        │   ├── ReviewNotFound / ReviewLeaseExpired / ReviewNotLeaseHolder
        │   ├── ReviewAlreadyDecided / ReviewInvalidDecision
        │   ├── ReviewEvidenceUnavailable  the scored bytes are gone or do not verify
        │   └── ReviewAuthError          not signed in, bad credentials, CSRF, wrong role
        │       └── LoginThrottled       too many failed sign-ins: wait (429)
        │           └── LoginBusy        too many password checks at once (429)
        ├── AuditError                  chain broken, bad segment
        │   └── AuditSegmentCorrupt     gzip / JSON / header of a segment unreadable
        ├── BlobError                   the object store for bytes (review evidence, uploads)
        │   ├── BlobKeyInvalid          a key that is empty, absolute, has ``..`` or odd characters
        │   └── BlobNotFound            no object under that key
        ├── BankError                   hash banks (known-bad content)
        │   ├── BankFileError           file:line: column: message (one or many)
        │   ├── InvalidHashError        a PDQ hash of the wrong length, or not hex
        │   ├── BankNotFound / BankExists / BankEntryNotFound
        │   └── BankBusy                another import or edit of the bank is running
        └── QualityError                the policy-quality tools (eval, calibrate, backtest)
            ├── DatasetError            a labels file cannot be read (file:line)
            ├── CalibrationUnsupported  the data cannot support a target
            ├── EmbeddingModelMismatch  stored embeddings come from another model
            ├── HistoryShardUnreadable  a history shard is not a readable shard (corrupt, foreign)
            └── BacktestMismatch        a worker serves other live policies than the backtest's
    (TransientError) BacktestWorkersUnavailable  no worker returned a shard group's counts in time

Every error carries a short stable ``code`` (used in job results and as a bounded metric label).
"""

from __future__ import annotations


class ModerationError(Exception):
    """Base class of every error raised by this project."""

    code: str = "moderation_error"
    transient: bool = False

    def __init__(self, message: str = "", *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message


class TransientError(ModerationError):
    """The operation may succeed if retried later."""

    code = "transient"
    transient = True


class PermanentError(ModerationError):
    """Retrying cannot help."""

    code = "permanent"


# --- policies -------------------------------------------------------------------------------


class PolicyError(PermanentError):
    code = "policy_error"


class PolicyIssue:
    """One validation problem located in a file (a policy, a bank file)."""

    __slots__ = ("field", "line", "message", "source")

    def __init__(self, *, source: str, line: int | None, field: str, message: str) -> None:
        self.source = source
        self.line = line
        self.field = field
        self.message = message

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line is not None else self.source
        if self.field:
            return f"{where}: {self.field}: {self.message}"
        return f"{where}: {self.message}"

    def __repr__(self) -> str:
        return f"PolicyIssue({self!s})"


class PolicyValidationError(PolicyError):
    """A policy file is malformed. ``issues`` lists every problem with file and line."""

    code = "policy_invalid"

    def __init__(self, issues: list[PolicyIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


class DuplicatePolicyError(PolicyError):
    code = "policy_duplicate"

    def __init__(self, policy_id: str, sources: list[str], *, shadow: bool = False) -> None:
        self.policy_id = policy_id
        what = "has more than one shadow version" if shadow else "is defined more than once"
        super().__init__(f"policy id {policy_id!r} {what}: {', '.join(sources)}")


class PolicyVersionConflict(PolicyError):
    """Two files give the same policy id and version different content (live vs shadow)."""

    code = "policy_version_conflict"


class UnknownPolicyError(PolicyError):
    code = "policy_unknown"

    def __init__(self, policy_id: str, known: list[str]) -> None:
        self.policy_id = policy_id
        listed = ", ".join(sorted(known)) or "none"
        super().__init__(f"unknown policy {policy_id!r}; known: {listed}")


# --- model ----------------------------------------------------------------------------------


class ModelError(PermanentError):
    code = "model_error"


class ModelUnavailableError(ModelError):
    code = "model_unavailable"


# --- images ---------------------------------------------------------------------------------


class ImageError(PermanentError):
    code = "image_error"


class ImageDecodeError(ImageError):
    code = "image_corrupt"


class ImageTooLargeError(ImageError):
    code = "image_too_large"


class UnsupportedImageFormat(ImageError):
    code = "image_format"


class UnsupportedFormatError(UnsupportedImageFormat):
    """Well-formed content of a kind this service does not moderate (a video, a PDF, an
    archive): distinct from corrupt image data (``image_corrupt``)."""

    code = "unsupported_format"


class ImageFetchError(ImageError):
    code = "fetch_failed"


class VideoDecodeError(ImageDecodeError):
    """A video that cannot be decoded: truncated, corrupt packets, no decodable frame."""

    code = "video_corrupt"


class VideoNoStream(VideoDecodeError):
    """A file with no video stream (audio only, subtitles only)."""

    code = "video_no_stream"


class VideoFrameRateError(VideoDecodeError):
    """A frame rate that is zero, unknown or absurd (over ``video.max_fps``)."""

    code = "video_frame_rate"


class VideoTooLargeError(ImageTooLargeError):
    """Too many bytes, or frames with too many pixels or too long a side."""

    code = "video_too_large"


class VideoTooLongError(VideoTooLargeError):
    """Longer than ``video.max_duration_s`` (as claimed by the container, or as decoded)."""

    code = "video_too_long"


class VideoDecodeLimit(VideoTooLargeError):
    """Decoding needed more frames or CPU seconds than ``video`` allows (decodes forever)."""

    code = "video_decode_limit"


class UnsupportedVideoCodec(UnsupportedImageFormat):
    """A container or video codec outside ``video.containers`` / ``video.codecs``."""

    code = "video_codec"


class UrlRefusedError(ImageFetchError):
    """Bad scheme, odd IP spelling, or an internal address (SSRF guard)."""

    code = "url_refused"


class SourceNotAllowed(ImageFetchError):
    """The reference is outside what the tenant may read (``tenants.<name>.s3_sources``), or
    names a source no tenant may use. Decided before any request: the same answer whether the
    object exists or not."""

    code = "source_not_allowed"


class ImageFetchTooLarge(ImageFetchError):
    """The remote object is larger than ``images.max_bytes`` (header or counted bytes)."""

    code = "fetch_too_large"


class ImageFetchTransient(TransientError):
    code = "fetch_transient"


# --- queue / review / audit -----------------------------------------------------------------


class QueueUnavailable(TransientError):
    code = "queue_unavailable"


class DatabaseUnavailable(TransientError):
    """PostgreSQL (the system of record) cannot be reached, is restarting, timed out a
    statement, or the connection pool had no free connection in time."""

    code = "database_unavailable"


class QueueFull(TransientError):
    """The global cap on bytes waiting for workers (``queue.max_queued_bytes``) is reached:
    new jobs are refused until workers catch up."""

    code = "queue_full"

    def __init__(self, message: str = "", *, retry_after_s: float = 30.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ApiUnavailable(TransientError):
    """The moderation API could not be reached or answered 5xx (client side)."""

    code = "api_unavailable"


class JobWaitTimeout(TransientError):
    """A job did not end within the time a caller was willing to wait."""

    code = "job_wait_timeout"


class JobRequestError(PermanentError):
    """Queue pipeline: a job request is invalid or refers to nothing."""

    code = "job_request_error"


class JobRejected(JobRequestError):
    """The API refused a job request (4xx: unknown policy, bad reference, oversize inline)."""

    code = "job_rejected"

    def __init__(
        self,
        message: str = "",
        *,
        status: int = 400,
        code: str | None = None,
        index: int | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.status = status
        #: The position of the refused job in a batch request.
        self.index = index


class JobConflict(JobRejected):
    """A job with this id exists and was submitted with a different request (409). The same
    request again is an idempotent duplicate, not a conflict."""

    code = "id_conflict"

    def __init__(self, message: str = "", *, existing_id: str, index: int | None = None) -> None:
        super().__init__(message, status=409, code="id_conflict", index=index)
        #: The id of the job that holds this id (as the caller sees it).
        self.existing_id = existing_id


class RateLimited(JobRejected):
    """A tenant's rate limit (``rate_limited``) or daily quota (``quota_exceeded``) is used up
    (429); ``retry_after_s`` says when a retry can succeed."""

    code = "rate_limited"

    def __init__(self, message: str = "", *, code: str, retry_after_s: float) -> None:
        super().__init__(message, status=429, code=code)
        self.retry_after_s = retry_after_s


class TenantQueueFull(RateLimited):
    """A tenant's share of the queued bytes (its ``max_queued_bytes``, by default its weighted
    share of ``queue.max_queued_bytes``) is used up by its own jobs that have not ended (429):
    the other tenants keep theirs."""

    code = "tenant_queue_full"

    def __init__(self, message: str = "", *, retry_after_s: float) -> None:
        super().__init__(message, code=self.code, retry_after_s=retry_after_s)


class JobNotFoundError(JobRequestError):
    code = "job_not_found"


class AppealRefused(JobRejected):
    """An appeal cannot be filed (409): the decision restricts nothing (``appeal_not_allowed``),
    its appeal window has closed (``appeal_window_closed``), or it has had every appeal the
    settings allow (``appeal_limit_reached``); 503 ``appeals_unavailable`` where appeals need a
    database this deployment lacks."""

    code = "appeal_refused"

    def __init__(self, message: str = "", *, code: str, status: int = 409) -> None:
        super().__init__(message, status=status, code=code)


class AppealNotFound(JobNotFoundError):
    code = "appeal_not_found"


class ConfigurationError(PermanentError):
    """The settings cannot work (found at start-up)."""

    code = "configuration_error"


class InsecureSettingsError(ConfigurationError):
    """A production start with empty, short or development-default secrets or API keys."""

    code = "insecure_settings"


class MigrationError(ConfigurationError):
    """A schema migration cannot be read (bad file name, duplicate version) or failed to
    apply (its transaction was rolled back: the schema is as before it)."""

    code = "migration_failed"


class ReviewError(PermanentError):
    code = "review_error"


class ReviewNotFound(ReviewError):
    code = "review_not_found"


class ReviewLeaseExpired(ReviewError):
    """The reviewer's lease ran out (the item may already be with someone else)."""

    code = "review_lease_expired"


class ReviewTakenBack(ReviewLeaseExpired):
    """An admin took the item back from the reviewer (requeue) before the lease ran out."""

    code = "review_taken_back"


class ReviewNotLeaseHolder(ReviewError):
    code = "review_not_lease_holder"


class ReviewAlreadyDecided(ReviewError):
    """A different decision was already recorded for this lease or item."""

    code = "review_already_decided"


class ReviewInvalidDecision(ReviewError):
    code = "review_invalid_decision"


class ReviewNeedsDatabase(ReviewError):
    """An item the Redis review queue cannot keep its promises for: an appeal (it keeps no
    bars against earlier deciders) or a notice's (it cannot raise an item already waiting).
    Appeals and notices need the PostgreSQL review queue (``database.url``)."""

    code = "review_needs_database"


class ReviewUndoTooLate(ReviewAlreadyDecided):
    """A decision can no longer be taken back: its undo window passed, it was handed on, or a
    second reviewer already has the item."""

    code = "review_undo_too_late"


class ReviewEvidenceUnavailable(ReviewError):
    """The exact bytes an item was scored on are gone, or do not match its ``content_sha256``:
    nothing is shown, and the item can only be removed or escalated."""

    code = "review_evidence_unavailable"


class ReviewAuthError(ReviewError):
    """Sign-in failed, the session is invalid, or the reviewer lacks the role."""

    code = "review_auth"


class LoginThrottled(ReviewAuthError):
    """Too many failed sign-ins for this account or client address: the next attempt is
    refused, without checking the password, for ``retry_after_s`` seconds."""

    code = "review_login_throttled"

    def __init__(self, message: str = "", *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class LoginBusy(LoginThrottled):
    """Every password-check slot is taken (argon2 is memory-hard, so their number is capped):
    refused without checking the password; try again in ``retry_after_s`` seconds."""

    code = "review_login_busy"


class AuditError(PermanentError):
    code = "audit_error"


class AuditSegmentCorrupt(AuditError):
    """An audit segment cannot be decoded (gzip, JSON or header error)."""

    code = "audit_segment_corrupt"


class AuditSinkUnavailable(TransientError):
    code = "audit_unavailable"


class TransparencyDbRejected(AuditError):
    """The EU Transparency Database refused statements (422: ``errors`` per statement; 401: the
    token). None of the batch was created."""

    code = "transparency_db_rejected"

    def __init__(self, message: str, *, errors: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or {}


class TransparencyDbUnavailable(TransientError):
    """The EU Transparency Database could not be reached or failed (5xx); retry later."""

    code = "transparency_db_unavailable"


# --- the object store for bytes (BlobStore) -----------------------------------------------------


class BlobError(PermanentError):
    """The object store refused an operation for good (access denied, no bucket)."""

    code = "blob_error"


class BlobKeyInvalid(BlobError):
    """A key that is empty, too long, absolute, names ``..`` or holds characters outside
    ``[A-Za-z0-9._=-]`` between its slashes."""

    code = "blob_key_invalid"


class BlobNotFound(BlobError):
    """No object under this key (never written, deleted, or expired)."""

    code = "blob_not_found"


class ExchangeUnavailable(TransientError):
    """A hash exchange could not be reached (connection error, timeout, 5xx, 429)."""

    code = "exchange_unavailable"


class BlobStoreUnavailable(TransientError):
    """The object store cannot be reached now (network, timeouts, throttling, 5xx, a full
    disk): the same call may succeed later."""

    code = "blob_unavailable"


# --- hash banks -----------------------------------------------------------------------------


class BankError(PermanentError):
    code = "bank_error"


class BankNotFound(BankError):
    code = "bank_not_found"


class BankExists(BankError):
    code = "bank_exists"


class BankEntryNotFound(BankError):
    code = "bank_entry_not_found"


class BankBusy(BankError):
    """Another import or edit holds the bank's write lock; try again when it is done."""

    code = "bank_busy"


class ExchangeError(BankError):
    """A hash exchange (NCMEC, ThreatExchange, StopNCII) answered something the sync cannot use."""

    code = "exchange_error"


class ExchangeAuthError(ExchangeError):
    """The exchange refused the configured credentials (401/403): nothing was applied."""

    code = "exchange_auth"


class ExchangeBusy(ExchangeError):
    """Another process is syncing this bank now (the PostgreSQL advisory lock is held)."""

    code = "exchange_busy"


class InvalidHashError(BankError):
    """A PDQ hash that is not 64 hexadecimal digits."""

    code = "bank_invalid_hash"


class BankFileError(BankError):
    """A bank file is malformed. ``issues`` lists every problem with file and line; nothing of
    the file was imported."""

    code = "bank_file_invalid"

    def __init__(self, issues: list[PolicyIssue], *, shown: int = 50) -> None:
        self.issues = issues
        lines = [str(i) for i in issues[:shown]]
        if len(issues) > shown:
            lines.append(f"... and {len(issues) - shown} more problems")
        super().__init__("\n".join(lines))


# --- policy quality -----------------------------------------------------------------------------


class QualityError(PermanentError):
    """The policy-quality tools: evaluation, calibration, backtests, promotion."""

    code = "quality_error"


class DatasetError(QualityError):
    """A labelled dataset cannot be read (the message names file and line)."""

    code = "dataset_invalid"


class CalibrationUnsupported(QualityError):
    """The labelled data cannot support a calibration target."""

    code = "calibration_unsupported"


class EmbeddingModelMismatch(QualityError):
    """Stored embeddings come from another model than the policies are compiled for."""

    code = "embedding_model_mismatch"


# --- embedding history and backtests (history, issue 18) ------------------------------------


class HistoryShardUnreadable(QualityError):
    """A history shard's bytes are not a shard this version can read (truncated, corrupt, or
    not a shard at all)."""

    code = "history_shard_unreadable"


class BacktestMismatch(QualityError):
    """A worker asked to score a shard group serves other live policy versions (or another
    model) than the backtest was planned with, or the candidate it received does not match its
    hash."""

    code = "backtest_mismatch"


class BacktestWorkersUnavailable(TransientError):
    """The workers did not return a shard group's counts in time (none consumes the backtest
    queue, or they are busy or gone)."""

    code = "backtest_workers_unavailable"
