"""The reviewer's context panel: what was decided before on the same image, by the same tenant.

:func:`same_image` looks up the tenant's earlier jobs whose scored bytes had the item's
``content_sha256``, or whose PDQ hash equals the item's (the same picture re-encoded), newest
first, with the model's verdict and any reviewer's final decision on each, and their dates. The
tenant is the item's own (from its scoped job id), never anyone's choice: another tenant's
decisions on the same image are never read. The uploader's history (strikes) is the other half
of the panel (:meth:`moderation.pipeline.strikes.Enforcement.context`).
"""

from __future__ import annotations

import logging
from typing import Any

from moderation.core.jobs import tenant_of
from moderation.core.review import ReviewItem
from moderation.exceptions import TransientError
from moderation.ports import ImageHistory

__all__ = ["SAME_IMAGE_LIMIT", "same_image"]

log = logging.getLogger(__name__)

#: The most earlier decisions the panel lists (newest first).
SAME_IMAGE_LIMIT = 10


def same_image(history: ImageHistory, item: ReviewItem) -> dict[str, Any] | None:
    """The earlier decisions on ``item``'s image with the same tenant, or None when the item
    has no hash to look up by. A lookup that fails now (the database is unreachable) says so
    (``unavailable``) rather than failing the whole page: the item can be decided without it."""
    if item.content_sha256 is None and item.content_pdq is None:
        return None
    try:
        found = history.earlier(
            tenant_of(item.job_id),
            content_sha256=item.content_sha256,
            content_pdq=item.content_pdq,
            exclude_job=item.job_id,
            limit=SAME_IMAGE_LIMIT,
        )
    except TransientError as exc:
        log.warning("same-image history unavailable for %s: %s", item.review_id, exc)
        return {"unavailable": True, "earlier": []}
    return {"unavailable": False, "earlier": [e.to_dict() for e in found]}
