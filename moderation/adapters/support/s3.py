"""boto3 S3 clients from :class:`~moderation.settings.S3Settings` (endpoint, region,
credentials, timeouts, retries), shared by the adapters that talk to S3."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config

from moderation.settings import S3Settings

__all__ = ["s3_client"]


def s3_client(s3: S3Settings, *, read_timeout_s: float | None = None, **config: Any) -> Any:
    """A client on its own boto3 session (thread-safe to create). ``config``: further
    ``botocore.config.Config`` options."""
    return boto3.session.Session().client(
        "s3",
        endpoint_url=s3.endpoint_url,
        region_name=s3.region,
        aws_access_key_id=s3.access_key_id.get_secret_value() if s3.access_key_id else None,
        aws_secret_access_key=(
            s3.secret_access_key.get_secret_value() if s3.secret_access_key else None
        ),
        config=Config(
            connect_timeout=s3.connect_timeout_s,
            read_timeout=read_timeout_s if read_timeout_s is not None else s3.read_timeout_s,
            retries={"max_attempts": s3.max_attempts, "mode": "standard"},
            **config,
        ),
    )
