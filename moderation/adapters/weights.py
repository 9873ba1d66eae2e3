"""Model weights for a worker pod: copy a checkpoint from S3 to local disk, checked against its
SHA-256 (``moderation model fetch``, the worker pod's init container).

The copy goes to a temporary file beside the target, is hashed, and only then renamed into
place, so a worker never sees a partial or unverified file. A target that already has the
expected hash is kept (a restarted pod with a persistent weights volume downloads nothing).

Errors: :class:`~moderation.exceptions.ModelUnavailableError` (no source or target configured,
the object is missing or unreadable, the hash differs).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from moderation.adapters.support.hashing import file_sha256
from moderation.adapters.support.s3 import s3_client
from moderation.exceptions import ModelUnavailableError
from moderation.settings import ModelSettings, S3Settings

__all__ = ["FetchedWeights", "fetch_checkpoint"]


@dataclass(frozen=True)
class FetchedWeights:
    path: Path
    sha256: str
    downloaded: bool


def _split(source: str) -> tuple[str, str]:
    if not source.startswith("s3://") or "/" not in source[5:]:
        raise ModelUnavailableError(
            f"checkpoint source {source!r} is not an s3://bucket/key reference"
        )
    bucket, key = source[5:].split("/", 1)
    if not bucket or not key:
        raise ModelUnavailableError(f"checkpoint source {source!r} names no bucket or key")
    return bucket, key


def fetch_checkpoint(model: ModelSettings, s3: S3Settings, *, client: Any = None) -> FetchedWeights:
    """Copy ``model.checkpoint_source`` to ``model.checkpoint`` unless it is there already.

    Raises:
        ModelUnavailableError: not configured, not readable, or not the expected bytes.
    """
    if model.checkpoint is None or model.checkpoint_source is None:
        raise ModelUnavailableError(
            "set MODERATION_MODEL__CHECKPOINT (where the worker reads the weights) and "
            "MODERATION_MODEL__CHECKPOINT_SOURCE (s3://bucket/key to copy them from)"
        )
    if model.checkpoint_sha256 is None:
        raise ModelUnavailableError(
            "set MODERATION_MODEL__CHECKPOINT_SHA256: a checkpoint copied over the network is "
            "only used when its hash is known"
        )
    target, expected = model.checkpoint, model.checkpoint_sha256.lower()
    if target.is_file() and file_sha256(target) == expected:
        return FetchedWeights(target, expected, downloaded=False)
    bucket, key = _split(model.checkpoint_source)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    try:
        try:
            (client or s3_client(s3, read_timeout_s=max(s3.read_timeout_s, 60.0))).download_file(
                bucket, key, str(partial)
            )
        except (ClientError, BotoCoreError, OSError) as exc:
            raise ModelUnavailableError(
                f"cannot copy the checkpoint from {model.checkpoint_source}: {exc}"
            ) from exc
        actual = file_sha256(partial)
        if actual != expected:
            raise ModelUnavailableError(
                f"the checkpoint at {model.checkpoint_source} has sha256 {actual}, expected "
                f"{expected} (MODERATION_MODEL__CHECKPOINT_SHA256): not installed"
            )
        partial.replace(target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    return FetchedWeights(target, expected, downloaded=True)
