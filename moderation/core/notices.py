"""Notices from outside: a user's or a trusted flagger's report against an item. Pure: no I/O.

A notice (EU DSA Art. 16 notice-and-action; Art. 22 trusted flaggers) names one of the tenant's
jobs, a reason (a policy category, or free words), the reporter's type and the reporter's own
(pseudonymous) id, and optionally the reporter's text and a URL for the outcome callback.

Duplicates collapse: the notice id is derived from the tenant's job, the reporter's type and id
and the reason (:func:`notice_id_for`), so the same reporter reporting the same item for the same
reason again counts one more report on the same notice (``reports``), never a second review.
Different reporters, or different reasons, are separate notices on the same review item.

A notice is ``open`` until the item's human decision answers it (``answered``, with the outcome);
a notice on an item a reviewer already decided is answered at once with that decision.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from enum import Enum

from pydantic import BaseModel, ConfigDict, Field

from moderation.core.jobs import public_id
from moderation.core.sources import DecisionSource

__all__ = [
    "MAX_NOTICE_TEXT",
    "NOT_REVIEWABLE",
    "Notice",
    "NoticeState",
    "ReporterType",
    "notice_id_for",
]

#: The longest text a reporter may send with a notice (characters).
MAX_NOTICE_TEXT = 5000

#: The outcome of a notice no reviewer can decide: the job it reported ended without a verdict
#: and scoring it again for the notice ended in an error again (``outcome_reason``: its code).
NOT_REVIEWABLE = "not_reviewable"


class ReporterType(str, Enum):
    """Who sent a notice."""

    USER = "user"
    TRUSTED_FLAGGER = "trusted_flagger"

    @property
    def source(self) -> DecisionSource:
        """The decision source a notice of this reporter type starts."""
        if self is ReporterType.TRUSTED_FLAGGER:
            return DecisionSource.TRUSTED_FLAGGER
        return DecisionSource.USER_REPORT


class NoticeState(str, Enum):
    OPEN = "open"
    ANSWERED = "answered"


def notice_id_for(job_id: str, reporter_type: ReporterType, reporter: str, reason: str) -> str:
    """The notice id: derived from the (scoped) job id, the reporter and the reason, so the
    same report sent twice collapses into one notice."""
    key = "\x1f".join((job_id, reporter_type.value, reporter, reason.strip().lower()))
    return "ntc_" + hashlib.sha256(key.encode()).hexdigest()[:24]


def _now() -> datetime:
    return datetime.now(UTC)


class Notice(BaseModel):
    """One report against one item, as it is stored."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    notice_id: str
    tenant: str
    #: The scoped job id (``<tenant>/<id>``; see :mod:`moderation.core.jobs`).
    job_id: str
    reporter_type: ReporterType
    #: The reporter's id as the tenant knows them (opaque; never shown to other tenants).
    reporter: str = Field(min_length=1, max_length=200)
    #: A policy category id (``nsfw``, ``policy/category``) or a short free reason.
    reason: str = Field(min_length=1, max_length=200)
    text: str = Field(default="", max_length=MAX_NOTICE_TEXT)
    callback_url: str | None = None
    created_at: datetime = Field(default_factory=_now)
    #: How many times this same report arrived (duplicates collapse into one notice).
    reports: int = Field(default=1, ge=1)
    state: NoticeState = NoticeState.OPEN
    #: The item's review, once the notice put it into (or found it in) review.
    review_id: str | None = None
    #: The human decision that answered it (``allow``, ``remove``, ``escalate``).
    outcome: str | None = None
    outcome_reason: str | None = None
    answered_at: datetime | None = None

    @property
    def source(self) -> DecisionSource:
        return self.reporter_type.source

    def for_caller(self) -> dict[str, object]:
        """The notice as its tenant sees it: the job's own id."""
        data = self.model_dump(mode="json")
        data["job_id"] = public_id(self.job_id)
        return data
