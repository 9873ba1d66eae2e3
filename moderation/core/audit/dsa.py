"""EU Digital Services Act statements of reasons from audit records. Pure."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from moderation.core.audit.records import AuditRecord
from moderation.core.sources import DecisionSource

__all__ = ["DSA_FIELDS", "dsa_statement"]

# --- EU DSA statements of reasons -------------------------------------------------------------

DSA_FIELDS = (
    "puid",
    "decision_visibility",
    "decision_ground",
    "incompatible_content_ground",
    "illegal_content_legal_ground",
    "category",
    "content_type",
    "automated_detection",
    "automated_decision",
    "application_date",
    "content_date",
    "decision_facts",
    "source_type",
)

#: Fallback when a category sets no ``dsa_category``: substrings of the category id.
_DSA_BY_WORD = (
    ("child", "STATEMENT_CATEGORY_PROTECTION_OF_MINORS"),
    ("minor", "STATEMENT_CATEGORY_PROTECTION_OF_MINORS"),
    ("violen", "STATEMENT_CATEGORY_VIOLENCE"),
    ("gore", "STATEMENT_CATEGORY_VIOLENCE"),
    ("weapon", "STATEMENT_CATEGORY_VIOLENCE"),
    ("terror", "STATEMENT_CATEGORY_VIOLENCE"),
    ("hate", "STATEMENT_CATEGORY_ILLEGAL_OR_HARMFUL_SPEECH"),
    ("nud", "STATEMENT_CATEGORY_PORNOGRAPHY_OR_SEXUALIZED_CONTENT"),
    ("sex", "STATEMENT_CATEGORY_PORNOGRAPHY_OR_SEXUALIZED_CONTENT"),
    ("porn", "STATEMENT_CATEGORY_PORNOGRAPHY_OR_SEXUALIZED_CONTENT"),
    ("self_harm", "STATEMENT_CATEGORY_SELF_HARM"),
    ("drug", "STATEMENT_CATEGORY_UNSAFE_AND_PROHIBITED_PRODUCTS"),
    ("contraband", "STATEMENT_CATEGORY_UNSAFE_AND_PROHIBITED_PRODUCTS"),
    ("scam", "STATEMENT_CATEGORY_SCAMS_AND_FRAUD"),
    ("fraud", "STATEMENT_CATEGORY_SCAMS_AND_FRAUD"),
    ("logo", "STATEMENT_CATEGORY_INTELLECTUAL_PROPERTY_INFRINGEMENTS"),
    ("trademark", "STATEMENT_CATEGORY_INTELLECTUAL_PROPERTY_INFRINGEMENTS"),
    ("copyright", "STATEMENT_CATEGORY_INTELLECTUAL_PROPERTY_INFRINGEMENTS"),
)
_DSA_OTHER = "STATEMENT_CATEGORY_SCOPE_OF_PLATFORM_SERVICE"
_RESTRICTING = {"block", "remove"}


def _dsa_category(record: AuditRecord) -> str:
    if record.dsa_category:
        return record.dsa_category
    word = (record.category_id or "").lower()
    return next((cat for needle, cat in _DSA_BY_WORD if needle in word), _DSA_OTHER)


def dsa_statement(
    record: AuditRecord, *, automated_detection: bool | None = None
) -> dict[str, Any] | None:
    """The EU DSA statement of reasons for one record, or None if it restricts nothing.

    Only decisions that restrict content (``block`` by the model, ``remove`` by a reviewer) give
    a statement. Ground: ILLEGAL_CONTENT when the record's details carry ``illegal`` or a
    ``legal_ground``, else INCOMPATIBLE_CONTENT (the platform's terms, i.e. the policy). Automated
    decisions are FULLY automated; a reviewer's decision on a model-flagged item is PARTIALLY
    automated (detection was automated), otherwise NOT_AUTOMATED. ``source_type`` follows the
    record's source: the platform's own detection is SOURCE_VOLUNTARY, a user's notice
    SOURCE_ARTICLE_16, a trusted flagger's SOURCE_TRUSTED_FLAGGER; an item that a notice put
    into review was not detected automatically.
    """
    if record.decision not in _RESTRICTING:
        return None
    source = record.source or DecisionSource.AUTOMATED
    if automated_detection is None and source.from_notice:
        automated_detection = False
    illegal = bool(record.details.get("illegal") or record.details.get("legal_ground"))
    detected = (
        automated_detection
        if automated_detection is not None
        else (record.kind == "automated" or bool(record.details.get("flagged_by_model", True)))
    )
    if record.kind == "automated":
        automated = "AUTOMATED_DECISION_FULLY"
    else:
        automated = (
            "AUTOMATED_DECISION_PARTIALLY" if detected else "AUTOMATED_DECISION_NOT_AUTOMATED"
        )
    score = record.scores.get(f"{record.policy_id}/{record.category_id}")
    facts = [
        f"{'Automated classifier' if record.kind == 'automated' else 'Human reviewer'} decision "
        f"'{record.decision}' under policy {record.policy_id} v{record.policy_version}, "
        f"category {record.category_id}"
    ]
    if score is not None:
        facts.append(f"score {score:.3f}")
    if record.reason_code:
        facts.append(f"reason {record.reason_code}")
    if source is not DecisionSource.AUTOMATED:
        facts.append(f"started by {source.value.replace('_', ' ')}")
    video = record.details.get("video")
    if isinstance(video, dict):  # where in a video or an animation it was found
        key = f"{record.policy_id}/{record.category_id}"
        spans = [
            f"{s['start_s']:.1f}-{s['end_s']:.1f} s"
            for s in video.get("segments", [])
            if s.get("category") == key and s.get("decision") == "block"
        ]
        if spans:
            facts.append(f"seen at {', '.join(spans)} of {video.get('duration_s', 0):.1f} s")
    ground = "ILLEGAL_CONTENT" if illegal else "INCOMPATIBLE_CONTENT"
    return {
        "puid": record.job_id,
        "decision_visibility": ["DECISION_VISIBILITY_CONTENT_REMOVED"],
        "decision_ground": f"DECISION_GROUND_{ground}",
        "incompatible_content_ground": None
        if illegal
        else (f"{record.policy_id}/{record.category_id}: {record.reason_code or record.decision}"),
        "illegal_content_legal_ground": record.details.get("legal_ground") if illegal else None,
        "category": _dsa_category(record),
        "content_type": [
            "CONTENT_TYPE_VIDEO"
            if isinstance(video, dict) and video.get("kind") == "video"
            else "CONTENT_TYPE_IMAGE"
        ],
        "automated_detection": "Yes" if detected else "No",
        "automated_decision": automated,
        "application_date": record.at.astimezone(UTC).strftime("%Y-%m-%d"),
        "content_date": (record.content_date or record.at).astimezone(UTC).strftime("%Y-%m-%d"),
        "decision_facts": "; ".join(facts),
        "source_type": source.dsa_source_type(),
    }
